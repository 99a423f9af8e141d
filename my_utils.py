"""d2l-style helpers for Fashion-MNIST, without the `d2l` package.

The d2l API (`load_data_fashion_mnist`, `Animator`, `Accumulator`, `Timer`, `accuracy`, `evaluate_accuracy`,
`show_images`, `get_fashion_mnist_labels`, `try_gpu`) plus what the project's training needs: verified data
acquisition, fast on-device loaders with a validation split, devices and precision, run records.
The one training loop, `fit`, lives in train.py.
Run `python my_utils.py` to fetch and verify the data.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils import data
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent
LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
# SHA-256 of the decompressed IDX files (the .gz wrappers differ between mirrors; the content must not).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SPLIT_SEED = 0  # the validation split is fixed, whatever the training seed


# ----------------------------------------------------------------------------- data acquisition

class DataError(RuntimeError):
    """The data is missing, corrupt or cannot be fetched; the message says how to fix it."""


def data_dir(root=None) -> Path:
    """`root`, else $FASHION_MNIST_DIR, else the repo's ./data. Files live in <dir>/FashionMNIST/raw."""
    return Path(root or os.environ.get("FASHION_MNIST_DIR") or ROOT / "data").expanduser().resolve()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(raw: Path):
    for name, digest in SHA256.items():
        if _sha256(raw / name) != digest:
            raise DataError(f"{raw / name} is corrupt or truncated (SHA-256 differs from the pinned digest). "
                            f"Delete it and run `make data` (or `python my_utils.py`) to fetch it again.")


def _from_torchvision(tmp: Path) -> Path:
    from torchvision.datasets import FashionMNIST
    FashionMNIST(str(tmp), train=True, download=True)  # downloads and unpacks all four files
    return tmp / "FashionMNIST" / "raw"


def _from_debian(tmp: Path) -> Path:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise DataError("apt-get/dpkg-deb not found (not a Debian/Ubuntu system)")
    run = dict(cwd=tmp, check=True, capture_output=True, text=True, timeout=600)
    subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], **run)
    deb = next(tmp.glob("dataset-fashion-mnist_*.deb"))
    subprocess.run(["dpkg-deb", "-x", deb.name, "x"], **run)
    out = tmp / "raw"
    out.mkdir()
    for name in SHA256:
        with gzip.open(tmp / "x/usr/share/datasets/fashion-mnist" / f"{name}.gz") as src, open(out / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def fetch_fashion_mnist(root=None, log=print) -> Path:
    """Make sure the four verified IDX files are in `data_dir(root)/FashionMNIST/raw`; return that folder.

    Order: files already there; torchvision's download; Debian's `dataset-fashion-mnist` package. Fetched
    files are checked against SHA256 in a temp folder and only then renamed into place."""
    raw = data_dir(root) / "FashionMNIST" / "raw"
    if all((raw / n).exists() for n in SHA256):
        _verify(raw)
        return raw
    try:
        raw.mkdir(parents=True, exist_ok=True)
        tmp_parent = Path(tempfile.mkdtemp(prefix=".fetch-", dir=raw.parent))
    except OSError as e:
        raise DataError(f"cannot write to the data directory {raw.parent} ({e.strerror}). Make it writable, or "
                        f"point FASHION_MNIST_DIR (or root=) at a writable folder.") from e
    errors = []
    try:
        for source, fetch in (("torchvision download", _from_torchvision), ("Debian package", _from_debian)):
            tmp = tmp_parent / source.split()[0]
            tmp.mkdir()
            try:
                got = fetch(tmp)
                _verify(got)
            except Exception as e:  # noqa: BLE001 -- every failure means: try the next source
                detail = getattr(e, "stderr", None) or str(e)
                errors.append(f"{source}: {type(e).__name__}: {str(detail).strip().splitlines()[-1:]}")
                continue
            for name in SHA256:
                os.replace(got / name, raw / name)
            log(f"Fashion-MNIST fetched via {source} into {raw}")
            return raw
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)
    raise DataError(
        "could not get Fashion-MNIST. Tried:\n  " + "\n  ".join(errors) + "\nFix one of: (1) put the four "
        f"uncompressed IDX files ({', '.join(SHA256)}) in {raw}; (2) give this machine internet access for "
        "torchvision's download; (3) on Debian/Ubuntu, make `apt-get download dataset-fashion-mnist` work.")


def load_arrays(root=None) -> dict[str, torch.Tensor]:
    """Verified uint8 images [N,28,28] and int64 labels for train and test, parsed by torchvision."""
    from torchvision.datasets.mnist import read_image_file, read_label_file
    raw = fetch_fashion_mnist(root)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        try:
            out[f"{split}_x"] = read_image_file(str(raw / f"{prefix}-images-idx3-ubyte"))
            out[f"{split}_y"] = read_label_file(str(raw / f"{prefix}-labels-idx1-ubyte"))
        except Exception as e:
            raise DataError(f"cannot parse the IDX files in {raw}: {e}. Delete them and fetch again.") from e
        if out[f"{split}_y"].min() < 0 or out[f"{split}_y"].max() > 9:
            raise DataError(f"{split} labels in {raw} fall outside 0-9. Delete the files and fetch again.")
    return out


# ----------------------------------------------------------------------------- loaders

def load_data_fashion_mnist(batch_size, resize=None, root=None, num_workers=4):
    """The d2l loader: (train_iter, test_iter) over torchvision datasets, X in [0,1] as [B,1,28,28]."""
    from torchvision import datasets, transforms
    raw = fetch_fashion_mnist(root)
    trans = [transforms.ToTensor()]
    if resize:
        trans.insert(0, transforms.Resize(resize))
    trans = transforms.Compose(trans)
    root = str(raw.parent.parent)
    train = datasets.FashionMNIST(root=root, train=True, transform=trans, download=False)
    test = datasets.FashionMNIST(root=root, train=False, transform=trans, download=False)
    return (data.DataLoader(train, batch_size, shuffle=True, num_workers=num_workers),
            data.DataLoader(test, batch_size, shuffle=False, num_workers=num_workers))


def augment_batch(X: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random translation by up to `shift` px (zero fill) and horizontal flip, per image, on X's device."""
    b, _, h, w = X.shape
    offs = torch.randint(0, 2 * shift + 1, (2, b), generator=generator).to(X.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(X.device)
    Xp = nn.functional.pad(X, (shift,) * 4)
    rows = (offs[0, :, None] + torch.arange(h, device=X.device))[:, :, None]
    cols = (offs[1, :, None] + torch.arange(w, device=X.device))[:, None, :]
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    return Xp[torch.arange(b, device=X.device)[:, None, None], 0, rows, cols].unsqueeze(1)


def erase_batch(X: torch.Tensor, generator: torch.Generator, p: float, area=(0.02, 0.25), ratio=(0.3, 3.3)):
    """Random erasing (Zhong et al. 2017), per image: with probability p, zero one rectangle covering `area` of
    the image with aspect ratio in `ratio`. Vectorised: torchvision's RandomErasing erases one rectangle per
    call, i.e. the same one for a whole batch."""
    b, _, h, w = X.shape
    u = torch.rand(5, b, generator=generator)
    s = (area[0] + u[0] * (area[1] - area[0])) * h * w
    r = torch.exp(math.log(ratio[0]) + u[1] * (math.log(ratio[1]) - math.log(ratio[0])))
    eh, ew = (s * r).sqrt().round().clamp(1, h), (s / r).sqrt().round().clamp(1, w)
    top, left = (u[2] * (h - eh + 1)).floor(), (u[3] * (w - ew + 1)).floor()
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    inside = (((rows >= top[:, None]) & (rows < (top + eh)[:, None]))[:, :, None]
              & ((cols >= left[:, None]) & (cols < (left + ew)[:, None]))[:, None, :])
    inside &= (u[4] < p)[:, None, None]
    return X.masked_fill(inside[:, None].to(X.device), 0.0)


class FastLoader:
    """Batches by index from one uint8 tensor held on the training device; /255 and augmentation per batch.

    Same contract as a DataLoader: iterate for (X float32 [B,1,28,28] in [0,1], y int64); len() = batches."""

    def __init__(self, images, labels, batch_size, shuffle=False, augment=False, erase=0.0, seed=0, device="cpu",
                 shard=(0, 1)):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.shuffle, self.augment, self.erase = batch_size, shuffle, augment, erase
        self.generator = torch.Generator().manual_seed(seed)  # same seed on every rank: one shared permutation
        self.rank, self.world = shard  # distributed: rank r takes every world-th index of that permutation

    @property
    def num_examples(self):
        return len(self.labels) // self.world  # equal shards, so every rank runs the same number of steps

    def __len__(self):
        return math.ceil(self.num_examples / self.batch_size)

    def __iter__(self):
        n, dev = self.num_examples, self.labels.device
        order = None
        if self.shuffle or self.world > 1:
            order = torch.randperm(len(self.labels), generator=self.generator) if self.shuffle \
                else torch.arange(len(self.labels))
            order = order[:n * self.world][self.rank::self.world].to(dev)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size] if order is not None else slice(i, i + self.batch_size)
            X = self.images[idx].unsqueeze(1).float().div_(255)
            if self.augment:
                X = augment_batch(X, self.generator)
            if self.erase:
                X = erase_batch(X, self.generator, self.erase)
            yield X, self.labels[idx]


def fashion_mnist_loaders(batch_size, val_size=5000, augment=False, seed=0, device="cpu", train_limit=None,
                          root=None, shard=(0, 1), erase=0.0):
    """(train, val, test) FastLoaders. The last `val_size` images of a fixed permutation of the 60k training
    set are the validation split (model selection); the test set is for the final report only.
    `shard=(rank, world)` gives this process its share of every training epoch (batch_size is per process)."""
    a = load_arrays(root)
    perm = torch.randperm(len(a["train_y"]), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train_idx, val_idx = perm[:len(perm) - val_size], perm[len(perm) - val_size:]
    if train_limit:
        train_idx = train_idx[:train_limit]
    mk = lambda x, y, **kw: FastLoader(x, y, batch_size, device=device, **kw)  # noqa: E731
    return (mk(a["train_x"][train_idx], a["train_y"][train_idx], shuffle=True, augment=augment, erase=erase,
               seed=seed, shard=shard),
            mk(a["train_x"][val_idx], a["train_y"][val_idx]),
            mk(a["test_x"], a["test_y"]))


# ----------------------------------------------------------------------------- d2l helpers

def get_fashion_mnist_labels(labels):
    return [LABELS[int(i)] for i in labels]


def try_gpu(i=0):
    return torch.device(f"cuda:{i}") if torch.cuda.device_count() >= i + 1 else torch.device("cpu")


def resolve_device(device="auto") -> torch.device:
    """'auto' -> CUDA, then MPS, then CPU. An explicitly requested device that is missing is an error."""
    device = str(device)
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if device == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if has[d]))
    kind = device.split(":")[0]
    if kind not in has:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or mps")
    if not has[kind]:
        raise ValueError(f"device {device!r} was requested but is not available here; use --device auto or cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively. Elsewhere bf16 is emulated and slower than fp32."""
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere we cannot tell cheaply, so stay in fp32
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(device: torch.device, precision="auto") -> str:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision {precision!r} is not one of auto, fp32, bf16, fp16")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


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
    """Plots data as it arrives, redrawing one figure in place in Jupyter (a display handle).

    The d2l constructor, plus `axes_of`: for each series (legend entry), the subplot it is drawn on, and
    `ylabel` may be one label per subplot. Outside Jupyter nothing is shown; `save(path)` writes a PNG."""

    def __init__(self, xlabel=None, ylabel=None, legend=None, xlim=None, ylim=None, xscale="linear",
                 yscale="linear", fmts=("-", "m--", "g-.", "r:"), nrows=1, ncols=1, figsize=(3.5, 2.5),
                 axes_of=None):
        from matplotlib.figure import Figure  # not pyplot: no stray auto-displayed figures
        self.fig = Figure(figsize=figsize, layout="constrained")
        axes = self.fig.subplots(nrows, ncols, squeeze=False).flatten()
        self.axes, self.legend, self.fmts = list(axes), list(legend or []), fmts
        self.axes_of = list(axes_of) if axes_of is not None else None
        ylabels = ylabel if isinstance(ylabel, (list, tuple)) else [ylabel] * len(axes)
        self.style = [dict(xlabel=xlabel, ylabel=yl, xlim=xlim, ylim=ylim, xscale=xscale, yscale=yscale)
                      for yl in ylabels]
        self.X, self.Y, self.handle = None, None, None

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

    def draw(self):
        for ax, style in zip(self.axes, self.style):
            ax.cla()
            ax.set(**{k: v for k, v in style.items() if v is not None})
            ax.grid(True, alpha=0.3)
        for i, (xs, ys) in enumerate(zip(self.X or [], self.Y or [])):
            ax = self.axes[self.axes_of[i] if self.axes_of else 0]
            label = self.legend[i] if i < len(self.legend) else None
            ax.plot(xs, ys, self.fmts[i % len(self.fmts)], label=label)
        for ax in self.axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        if _in_jupyter():
            from IPython.display import Image, display
            img = Image(data=self.png())
            if self.handle is None:
                self.handle = display(img, display_id=True)
            else:
                self.handle.update(img)

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    def save(self, path):
        atomic_write(path, self.png())


def training_animator(epochs):
    """Loss on the left, train/validation accuracy on the right, epochs on x."""
    return Animator(xlabel="epoch", ylabel=["loss", "accuracy"], legend=["train loss", "train acc", "val acc"],
                    xlim=[1, max(epochs, 2)], ncols=2, figsize=(8, 3), axes_of=[0, 1, 1])


def atomic_write(path, payload: bytes | str):
    """Write to a temp file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(payload.encode() if isinstance(payload, str) else payload)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- run records

@functools.cache
def git_commit() -> str | None:
    """HEAD (with "-dirty" if tracked files differ), read once per process: call it when a run starts, so a
    commit made while it trains is not credited with its results."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    return f"{name or sys.platform} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    print(fetch_fashion_mnist())
