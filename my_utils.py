"""d2l-style helpers for Fashion-MNIST, without the `d2l` package: `import my_utils as mu`.

The d2l API (`load_data_fashion_mnist`, `Animator`, `Accumulator`, `Timer`, `accuracy`, `evaluate_accuracy`,
`show_images`, `get_fashion_mnist_labels`, `try_gpu`), plus the project's loaders and devices re-exported
from the library (mlp/), so a notebook needs this one import.
"""
from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from mlp.data import (  # noqa: F401
    LABELS,
    ROOT,
    DataError,
    FastLoader,
    augment_batch,
    erase_batch,
    fashion_mnist_loaders,
    fetch_fashion_mnist,
    load_arrays,
    loaders,
)
from mlp.evaluate import Views, confusion_matrix, evaluate_accuracy, model_device, predict  # noqa: F401
from mlp.hardware import autocast, cpu_workers, resolve_device, resolve_precision  # noqa: F401
from mlp.hardware import describe as hardware  # noqa: F401
from mlp.plots import Animator, draw_history, training_animator  # noqa: F401
from mlp.records import atomic_write, git_commit  # noqa: F401


def load_data_fashion_mnist(batch_size, resize=None, root=None, num_workers=None):
    """The d2l loader: (train_iter, test_iter) over torchvision datasets, X in [0,1] as [B,1,28,28].
    `num_workers` defaults to this machine's CPUs, at most 4 (more only make torch warn)."""
    from torchvision import datasets, transforms
    raw = fetch_fashion_mnist(root)
    trans = transforms.Compose(([transforms.Resize(resize)] if resize else []) + [transforms.ToTensor()])
    root = str(raw.parent.parent)
    workers = min(4, cpu_workers()) if num_workers is None else num_workers
    train = datasets.FashionMNIST(root=root, train=True, transform=trans, download=False)
    test = datasets.FashionMNIST(root=root, train=False, transform=trans, download=False)
    return (DataLoader(train, batch_size, shuffle=True, num_workers=workers),
            DataLoader(test, batch_size, shuffle=False, num_workers=workers))


def get_fashion_mnist_labels(labels):
    return [LABELS[int(i)] for i in labels]


def try_gpu(i=0):
    return torch.device(f"cuda:{i}") if torch.cuda.device_count() >= i + 1 else torch.device("cpu")


class Accumulator:
    """Sums over n variables."""

    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def reset(self):
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx):
        return self.data[idx]


class Timer:
    """Records multiple running times."""

    def __init__(self):
        self.times = []
        self.start()

    def start(self):
        self.tik = time.time()

    def stop(self):
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def avg(self):
        return sum(self.times) / len(self.times)

    def sum(self):
        return sum(self.times)

    def cumsum(self):
        out, total = [], 0.0
        for t in self.times:
            total += t
            out.append(total)
        return out


def accuracy(y_hat, y):
    """Number of correct predictions (as in d2l: a count, not a fraction)."""
    if y_hat.dim() > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(dim=1)
    return float((y_hat.type(y.dtype) == y).sum())


def show_images(imgs, num_rows, num_cols, titles=None, scale=1.5):
    """Plot a grid of images; returns the axes (d2l behaviour)."""
    import matplotlib.pyplot as plt
    _, axes = plt.subplots(num_rows, num_cols, figsize=(num_cols * scale, num_rows * scale))
    axes = axes.flatten() if hasattr(axes, "flatten") else [axes]
    for i, (ax, img) in enumerate(zip(axes, imgs)):
        img = img.detach().cpu().numpy() if torch.is_tensor(img) else img
        ax.imshow(img.squeeze(), cmap="gray")
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles:
            ax.set_title(titles[i])
    return axes
