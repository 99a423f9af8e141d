"""d2l-style helpers for Fashion-MNIST, without the `d2l` package: `import my_utils as mu`.

The d2l API (`load_data_fashion_mnist`, `Animator`, `Accumulator`, `Timer`, `accuracy`, `evaluate_accuracy`,
`show_images`, `get_fashion_mnist_labels`, `try_gpu`), plus the project's loaders and devices re-exported
from data.py and hardware.py, so a notebook needs this one import.
"""
from __future__ import annotations

import io
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from data import (LABELS, DataError, FastLoader, augment_batch, erase_batch, fashion_mnist_loaders,  # noqa: F401
                  fetch_fashion_mnist, load_arrays, loaders)
from hardware import autocast, cpu_workers, describe as hardware, resolve_device, resolve_precision  # noqa: F401
from results.records import atomic_write, git_commit  # noqa: F401


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


def model_device(net) -> torch.device:
    """Where the model's parameters live (CPU for a parameter-free or non-Module callable)."""
    params = net.parameters() if isinstance(net, nn.Module) else iter(())
    return next((p.device for p in params), torch.device("cpu"))


@torch.no_grad()
def evaluate_accuracy(net, data_iter, device=None, precision="fp32"):
    """Fraction correct over `data_iter`; counts stay on the device until the end (one host sync)."""
    if isinstance(net, nn.Module):
        net.eval()
    device = torch.device(device or model_device(net))
    correct, total = torch.zeros((), device=device), 0
    for X, y in data_iter:
        X, y = X.to(device), y.to(device)
        with autocast(device, precision):
            correct += (net(X).argmax(dim=1) == y).sum()
        total += len(y)
    return float(correct) / total


@torch.no_grad()
def predict(net, data_iter, device=None, precision="fp32"):
    """(predictions, labels) over a loader, on the CPU."""
    net.eval()
    device = torch.device(device or model_device(net))
    preds, labels = [], []
    for X, y in data_iter:
        with autocast(device, precision):
            preds.append(net(X.to(device)).argmax(dim=1).cpu())
        labels.append(y.cpu())
    return torch.cat(preds), torch.cat(labels)


def confusion_matrix(preds, labels, n=10):
    return torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


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


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class Animator:
    """Plots data as it arrives, redrawing one figure in place in Jupyter (a display handle), with the log
    lines (`log`) in one text output under it.

    The d2l constructor, plus `axes_of`: for each series (legend entry), the subplot it is drawn on, and
    `ylabel` may be one label per subplot. Every point has a marker, so a series of one point is visible.
    Outside Jupyter nothing is shown and `log` prints; `save(path)` writes a PNG."""

    def __init__(self, xlabel=None, ylabel=None, legend=None, xlim=None, ylim=None, xscale="linear",
                 yscale="linear", fmts=("-", "m--", "g-.", "r:"), nrows=1, ncols=1, figsize=(3.5, 2.5),
                 axes_of=None):
        from matplotlib.figure import Figure  # not pyplot: no stray auto-displayed figures
        self.fig = Figure(figsize=figsize)  # laid out once, below: not again on every live redraw
        axes = self.fig.subplots(nrows, ncols, squeeze=False).flatten()
        self.axes, self.legend, self.fmts = list(axes), list(legend or []), fmts
        self.axes_of = list(axes_of) if axes_of is not None else None
        if xlim is not None and xlim[0] == xlim[1]:  # a 1-epoch run: a singular range would only warn
            xlim = [xlim[0] - 0.5, xlim[1] + 0.5]
        ylabels = ylabel if isinstance(ylabel, (list, tuple)) else [ylabel] * len(axes)
        self.style = [dict(xlabel=xlabel, ylabel=yl, xlim=xlim, ylim=ylim, xscale=xscale, yscale=yscale)
                      for yl in ylabels]
        for ax, style in zip(self.axes, self.style):
            ax.set(**{k: v for k, v in style.items() if v is not None})
        self.fig.tight_layout()
        self.X, self.Y, self.lines, self.handle, self.text = None, None, [], None, None

    def add(self, x, y):
        if not hasattr(y, "__len__"):
            y = [y]
        n = len(y)
        if not hasattr(x, "__len__"):
            x = [x] * n
        if self.X is None:
            self.X, self.Y = [[] for _ in range(n)], [[] for _ in range(n)]
        for i, (a, b) in enumerate(zip(x, y)):
            if a is not None and b is not None:
                self.X[i].append(a)
                self.Y[i].append(b)
        self.draw()

    def log(self, line: str):
        """One line of the run's log: under the figure in Jupyter (one output, updated), printed elsewhere."""
        self.lines.append(line)
        if not _in_jupyter():
            print(line, flush=True)
            return
        self._show()
        self.text.update({"text/plain": "\n".join(self.lines)}, raw=True)

    def draw(self):
        for ax, style in zip(self.axes, self.style):
            ax.cla()
            ax.set(**{k: v for k, v in style.items() if v is not None})
            ax.grid(True, alpha=0.3)
        for i, (xs, ys) in enumerate(zip(self.X or [], self.Y or [])):
            ax = self.axes[self.axes_of[i] if self.axes_of else 0]
            label = self.legend[i] if i < len(self.legend) else None
            ax.plot(xs, ys, self.fmts[i % len(self.fmts)], marker="o", markersize=3, label=label)
        for ax in self.axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        if _in_jupyter():
            self._show()

    def _show(self):
        from IPython.display import Image, display
        img = Image(data=self.png())
        if self.handle is None:  # the figure first, the log under it: two outputs, each updated in place
            self.handle = display(img, display_id=True)
            self.text = display({"text/plain": ""}, raw=True, display_id=True)
        else:
            self.handle.update(img)

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    def save(self, path):
        atomic_write(path, self.png())


def training_animator(epochs):
    """Loss on the left, train/validation accuracy on the right; x in epochs, with fractional points for the
    running training loss and accuracy within an epoch."""
    return Animator(xlabel="epoch", ylabel=["loss", "accuracy"], legend=["train loss", "train acc", "val acc"],
                    xlim=[0, epochs], ncols=2, figsize=(8, 3), axes_of=[0, 1, 1])


def draw_history(animator: Animator, history):
    """Redraw a run's history (resume, save_run): the within-epoch points and every validated epoch's accuracy."""
    if animator.X is None:
        animator.X, animator.Y = [[], [], []], [[], [], []]
    for r in history:
        for x, loss, acc in r.get("points") or [(r["epoch"], r["train_loss"], r["train_acc"])]:
            for i, v in ((0, loss), (1, acc)):
                animator.X[i].append(x)
                animator.Y[i].append(v)
        if r["val_acc"] is not None:  # None: an epoch not validated (Recipe.val_every)
            animator.X[2].append(r["epoch"])
            animator.Y[2].append(r["val_acc"])
    animator.draw()
