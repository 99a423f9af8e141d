"""Fashion-MNIST: verified acquisition, on-device loaders with a fixed validation split, augmentation.

Run `python -m mlp.data` (or `make data`) to fetch and verify the files.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

from mlp import records

ROOT = Path(__file__).resolve().parents[1]  # the repository
LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
# SHA-256 of the decompressed IDX files (the .gz wrappers differ between mirrors; the content must not).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SPLIT_SEED = 0  # the validation split is fixed, whatever the training seed


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
                            f"Delete it and run `make data` (or `python -m mlp.data`) to fetch it again.")


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


def _remove_dead_fetches(folder: Path):
    """A fetch killed mid-way leaves its `.fetch-PID-*` temp folder; remove those whose process is gone."""
    for d in folder.glob(".fetch-*-*"):
        pid = d.name.split("-")[1]
        if pid.isdigit() and not records.alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def fetch_fashion_mnist(root=None, log=print) -> Path:
    """Make sure the four verified IDX files are in `data_dir(root)/FashionMNIST/raw`; return that folder.

    Order: files already there; torchvision's download; Debian's `dataset-fashion-mnist` package. Fetched
    files are checked against SHA256 in a temp folder and only then renamed into place, so a fetch killed at
    any moment leaves nothing partial where it is read."""
    raw = data_dir(root) / "FashionMNIST" / "raw"
    if all((raw / n).exists() for n in SHA256):
        _verify(raw)
        return raw
    try:
        raw.mkdir(parents=True, exist_ok=True)
        _remove_dead_fetches(raw.parent)
        tmp_parent = Path(tempfile.mkdtemp(prefix=f".fetch-{os.getpid()}-", dir=raw.parent))
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


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes as a uint8 tensor. The format (LeCun's, for MNIST and Fashion-MNIST): the
    bytes 0, 0, 0x08 (unsigned byte), ndim; ndim big-endian int32 sizes; the data. (torchvision reads it too,
    but importing torchvision costs ~5 s per process here, most of a short run's start.)"""
    blob = path.read_bytes()
    if len(blob) < 4 + 4 * ndim or blob[:4] != bytes([0, 0, 0x08, ndim]):
        raise ValueError(f"{path.name} is not an IDX file of {ndim}-D unsigned bytes (header {blob[:4].hex()})")
    shape = tuple(int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = memoryview(blob)[4 + 4 * ndim:]
    if len(body) != math.prod(shape):
        raise ValueError(f"{path.name} declares {shape}, {math.prod(shape):,} bytes, but holds {len(body):,}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def parse_raw(raw: Path) -> dict[str, torch.Tensor]:
    """Parse the IDX files and check what they hold: the checks behind the SHA-256."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        try:
            out[f"{split}_x"] = read_idx(raw / f"{prefix}-images-idx3-ubyte", 3)
            out[f"{split}_y"] = read_idx(raw / f"{prefix}-labels-idx1-ubyte", 1).long()
        except (OSError, ValueError) as e:
            raise DataError(f"cannot parse the IDX files in {raw}: {e}. Delete them and fetch again.") from e
        x, y = out[f"{split}_x"], out[f"{split}_y"]
        if x.dim() != 3 or tuple(x.shape[1:]) != (28, 28) or len(x) != len(y):
            raise DataError(f"{split} images in {raw} have shape {tuple(x.shape)} for {len(y)} labels, not "
                            f"[N,28,28] with one label each. Delete the files and fetch again.")
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"{split} labels in {raw} fall outside 0-9. Delete the files and fetch again.")
    return out


def load_arrays(root=None) -> dict[str, torch.Tensor]:
    """Verified uint8 images [N,28,28] and int64 labels for train and test."""
    return parse_raw(fetch_fashion_mnist(root))


def _draws(shard, b):
    """Random draws are made for the global batch (every rank the same) and each rank takes its own images'
    share, the one FastLoader gives it (every world-th): the ranks together augment exactly as one process."""
    rank, world = shard
    return b * world, slice(rank, None, world)


def augment_batch(X: torch.Tensor, generator: torch.Generator, shift: int = 2, shard=(0, 1)) -> torch.Tensor:
    """Random translation by up to `shift` px (zero fill) and horizontal flip, per image, on X's device."""
    b, _, h, w = X.shape
    n, mine = _draws(shard, b)
    offs = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)[:, mine].to(X.device)
    flip = (torch.rand(n, generator=generator) < 0.5)[mine].to(X.device)
    # flips only: a select instead of a gather (a sixth of a training step on a CPU); `offs` is still drawn, so
    # the generator's stream, and so every run, is the same as with the gather
    if shift == 0:
        return torch.where(flip[:, None, None, None], X.flip(-1), X)
    Xp = nn.functional.pad(X, (shift,) * 4)
    rows = (offs[0, :, None] + torch.arange(h, device=X.device))[:, :, None]
    cols = (offs[1, :, None] + torch.arange(w, device=X.device))[:, None, :]
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    return Xp[torch.arange(b, device=X.device)[:, None, None], 0, rows, cols].unsqueeze(1)


def erase_batch(X: torch.Tensor, generator: torch.Generator, p: float, area=(0.02, 0.25), ratio=(0.3, 3.3),
                shard=(0, 1)):
    """Random erasing (Zhong et al. 2017), per image: with probability p, zero one rectangle covering `area` of
    the image with aspect ratio in `ratio`. Vectorised: torchvision's RandomErasing erases one rectangle per
    call, i.e. the same one for a whole batch."""
    b, _, h, w = X.shape
    n, mine = _draws(shard, b)
    u = torch.rand(5, n, generator=generator)[:, mine]
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
                 shard=(0, 1), shift=2):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.shuffle, self.augment, self.erase = batch_size, shuffle, augment, erase
        self.shift, self.plain = shift, False  # plain: this epoch without augmentation (Recipe.plain_epochs)
        self.generator = torch.Generator().manual_seed(seed)  # same seed on every rank: one shared permutation
        # and the same augmentation draws, of which each rank takes its share
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
            if self.augment and not self.plain:
                X = augment_batch(X, self.generator, self.shift, shard=(self.rank, self.world))
            if self.erase and not self.plain:
                X = erase_batch(X, self.generator, self.erase, shard=(self.rank, self.world))
            yield X, self.labels[idx]


def fashion_mnist_loaders(batch_size, val_size=5000, augment=False, seed=0, device="cpu", train_limit=None,
                          root=None, shard=(0, 1), erase=0.0, shift=2, eval_limit=None):
    """(train, val, test) FastLoaders. The last `val_size` images of a fixed permutation of the 60k training
    set are the validation split (model selection); the test set is for the final report only.
    `shard=(rank, world)` gives this process its share of every training epoch (batch_size is per process).
    `train_limit` / `eval_limit`: only the first N training / validation and test images (smoke runs, tests)."""
    for name, limit in (("train_limit", train_limit), ("eval_limit", eval_limit)):
        if limit is not None and limit <= 0:
            raise ValueError(f"{name}={limit} must be positive (or None: every image)")
    a = load_arrays(root)
    perm = torch.randperm(len(a["train_y"]), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train_idx, val_idx = perm[:len(perm) - val_size], perm[len(perm) - val_size:]
    train_idx, val_idx, test_idx = train_idx[:train_limit], val_idx[:eval_limit], slice(eval_limit)
    def mk(x, y, **kw):
        return FastLoader(x, y, batch_size, device=device, **kw)
    return (mk(a["train_x"][train_idx], a["train_y"][train_idx], shuffle=True, augment=augment, erase=erase,
               shift=shift, seed=seed, shard=shard),
            mk(a["train_x"][val_idx], a["train_y"][val_idx]),
            mk(a["test_x"][test_idx], a["test_y"][test_idx]))


def loaders(recipe, seed=0, device="cpu", train_limit=None, root=None, shard=(0, 1), eval_limit=None):
    """The (train, val, test) loaders a recipe trains with: its batch size (split over `shard`'s processes),
    validation size and augmentation."""
    return fashion_mnist_loaders(recipe.batch_size // shard[1], recipe.val_size, augment=recipe.augment,
                                 shift=recipe.shift, erase=recipe.erase, seed=seed, device=device,
                                 train_limit=train_limit, root=root, shard=shard, eval_limit=eval_limit)


if __name__ == "__main__":
    print(fetch_fashion_mnist())
