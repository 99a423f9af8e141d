"""Real Fashion-MNIST: counts, dtypes, the split, the loaders, and rejection of bad files."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import my_utils as mu
from conftest import ROOT
from mlp import data


def test_counts_dtypes_and_classes(arrays):
    assert arrays["train_x"].shape == (60000, 28, 28) and arrays["test_x"].shape == (10000, 28, 28)
    assert arrays["train_x"].dtype == torch.uint8 and arrays["train_y"].dtype == torch.int64
    assert torch.bincount(arrays["train_y"]).tolist() == [6000] * 10
    assert torch.bincount(arrays["test_y"]).tolist() == [1000] * 10
    assert arrays["train_x"].max() == 255 and arrays["train_x"].min() == 0


def test_d2l_loader_keeps_d2l_behaviour():
    train_iter, test_iter = mu.load_data_fashion_mnist(256)
    assert len(train_iter.dataset) == 60000 and len(test_iter.dataset) == 10000
    X, y = next(iter(train_iter))
    assert X.shape == (256, 1, 28, 28) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= X.min() and X.max() <= 1
    X, _ = next(iter(mu.load_data_fashion_mnist(32, resize=64, num_workers=0)[1]))
    assert X.shape == (32, 1, 64, 64)


def test_validation_split_is_fixed_disjoint_and_leaves_test_alone(arrays):
    tr, va, te = mu.fashion_mnist_loaders(512, val_size=5000, seed=1)
    tr2, va2, _ = mu.fashion_mnist_loaders(512, val_size=5000, seed=2)
    assert (tr.num_examples, va.num_examples, te.num_examples) == (55000, 5000, 10000)
    assert torch.equal(va.images, va2.images), "the validation split must not depend on the training seed"
    # every training image lands in exactly one of train/val: compare by content hash
    weights = torch.randint(0, 2**31, (784,), generator=torch.Generator().manual_seed(0))

    def key(x):
        return x.flatten(1).to(torch.int64) @ weights
    all_keys = torch.sort(key(arrays["train_x"])).values
    assert torch.equal(torch.sort(torch.cat([key(tr.images), key(va.images)])).values, all_keys)
    assert torch.equal(te.images, arrays["test_x"]) and torch.equal(te.labels, arrays["test_y"])


def test_fast_loader_yields_every_index_once_with_its_label():
    n = 1000
    images = (torch.arange(n) % 256).to(torch.uint8)[:, None, None].expand(n, 28, 28).contiguous()
    loader = mu.FastLoader(images, torch.arange(n), batch_size=64, shuffle=True, seed=3)
    for _ in range(2):  # two epochs, two different orders, each a permutation
        seen = []
        for X, y in loader:
            assert X.shape[1:] == (1, 28, 28) and X.dtype == torch.float32
            assert torch.equal((X[:, 0, 0, 0] * 255).round().long(), y % 256), "image/label pairing broken"
            seen.append(y)
        seen = torch.cat(seen)
        assert torch.equal(torch.sort(seen).values, torch.arange(n)) and not torch.equal(seen, torch.arange(n))
    assert len(loader) == 16


def test_augmentation_is_a_shift_or_flip_of_the_image(arrays):
    X = arrays["train_x"][:64].unsqueeze(1).float() / 255
    A = mu.augment_batch(X, torch.Generator().manual_seed(0), shift=2)
    assert A.shape == X.shape and 0 <= A.min() and A.max() <= 1
    padded = torch.nn.functional.pad(X, (2, 2, 2, 2))
    for i in range(len(X)):
        candidates = [c[:, dy:dy + 28, dx:dx + 28] for c in (padded[i], padded[i].flip(-1))
                      for dy in range(5) for dx in range(5)]
        assert any(torch.equal(A[i], c) for c in candidates), f"image {i} is not a shifted/flipped copy"
    assert not torch.equal(A, X)


def test_flips_only_mirror_about_half_the_images_and_nothing_else(arrays):
    X = arrays["train_x"][:2000].unsqueeze(1).float() / 255
    A = mu.augment_batch(X, torch.Generator().manual_seed(0), shift=0)
    kept = (A == X).flatten(1).all(1)
    mirrored = (A == X.flip(-1)).flatten(1).all(1)
    assert (kept | mirrored).all(), "every image is itself or its mirror image"
    assert abs((mirrored & ~kept).float().mean().item() - 0.5) < 0.05


def test_random_erasing_zeroes_one_rectangle_in_about_p_of_the_images(arrays):
    X = torch.ones(2000, 1, 28, 28)
    E = mu.erase_batch(X, torch.Generator().manual_seed(0), p=0.5)
    assert E.shape == X.shape
    zeroed = E[:, 0] == 0
    erased = zeroed.flatten(1).any(1)
    assert abs(erased.float().mean().item() - 0.5) < 0.05
    for z in zeroed[erased][:200]:
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        box = z[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and z.sum() == box.numel(), "exactly one solid rectangle"
        assert 0.02 * 784 * 0.5 <= z.sum() <= 0.25 * 784 * 1.5
    assert torch.equal(E[~erased], X[~erased])


def test_loader_with_augmentation_keeps_labels_shape_and_range(arrays):
    x = arrays["train_x"][:512]
    plain = list(mu.FastLoader(x, torch.arange(512), 64, shuffle=True, seed=3))
    aug = list(mu.FastLoader(x, torch.arange(512), 64, shuffle=True, augment=True, erase=0.5, seed=3))
    for (X, idx), (Xa, idx_a) in zip(plain, aug):
        assert torch.equal(idx, idx_a), "augmentation does not change which image (and label) comes when"
        assert Xa.shape == (64, 1, 28, 28) and 0 <= Xa.min() and Xa.max() <= 1
        # shifts with zero fill and erasing only remove ink; flips keep it
        assert (Xa.sum((1, 2, 3)) <= X.sum((1, 2, 3)) + 1e-3).all()
    assert not all(torch.equal(X, Xa) for (X, _), (Xa, _) in zip(plain, aug))


def test_a_plain_epoch_yields_the_images_as_they_are(arrays):
    """Recipe.plain_epochs: for its last epochs the trainer marks the loader plain: no shifts, flips or erasing."""
    x = arrays["train_x"][:512]
    loader = mu.FastLoader(x, torch.arange(512), 64, shuffle=True, augment=True, erase=0.5, seed=3)
    loader.plain = True
    for X, idx in loader:
        assert torch.equal(X[:, 0], x[idx].float() / 255)


def _copy_raw(raw_dir, tmp_path):
    dst = tmp_path / "FashionMNIST" / "raw"
    shutil.copytree(raw_dir, dst)
    return dst


@pytest.mark.parametrize("name,damage", [
    ("train-images-idx3-ubyte", "truncate"), ("train-images-idx3-ubyte", "pixel"),
    ("t10k-images-idx3-ubyte", "magic"), ("train-labels-idx1-ubyte", "label-out-of-range")])
def test_corrupt_file_is_rejected_with_the_fix(raw_dir, tmp_path, name, damage):
    dst = _copy_raw(raw_dir, tmp_path)
    f = dst / name
    blob = bytearray(f.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "pixel":
        blob[5000] ^= 0xFF
    elif damage == "magic":
        blob[2] = 0x0D                      # IDX type byte: 0x08 (ubyte) -> 0x0D (float)
    else:
        blob[8 + 123] = 42                  # a label of 42
    f.write_bytes(bytes(blob))
    before = sorted(p.name for p in dst.iterdir())
    with pytest.raises(mu.DataError, match=f"{name} is corrupt or truncated.*Delete it"):
        mu.load_arrays(tmp_path)
    assert sorted(p.name for p in dst.iterdir()) == before, "nothing added or removed"


def test_debian_fetch_writes_only_verified_files(tmp_path):
    """The path CI uses: torchvision's download fails offline, Debian's package succeeds, no temp left."""
    raw = mu.fetch_fashion_mnist(tmp_path, log=lambda s: None)
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.SHA256)
    assert not any(p.name.startswith(".fetch-") for p in raw.parent.iterdir())


def test_no_source_gives_one_error_naming_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get here
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # and no internet, even where there is
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # (the discard port: nothing listens)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "d"))
    with pytest.raises(mu.DataError) as e:
        mu.fetch_fashion_mnist(log=lambda s: None)
    msg = str(e.value)
    assert "torchvision download" in msg and "Debian package" in msg and "uncompressed IDX files" in msg
    assert not any(p.name.startswith(".fetch-") for p in (tmp_path / "d" / "FashionMNIST").iterdir())


def test_unwritable_data_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(mu.DataError, match="cannot write to the data directory"):
        mu.fetch_fashion_mnist(blocker / "data")


def test_data_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path.resolve()
    monkeypatch.delenv("FASHION_MNIST_DIR")
    assert data.data_dir() == data.ROOT / "data" and os.path.isabs(data.data_dir())


@pytest.mark.parametrize("name,damage,message", [
    ("t10k-images-idx3-ubyte", "magic", "cannot parse the IDX files"),
    ("train-images-idx3-ubyte", "truncate", "cannot parse the IDX files"),
    ("train-labels-idx1-ubyte", "label-out-of-range", "train labels .* fall outside 0-9"),
    ("t10k-labels-idx1-ubyte", "count", "test images .* for 9999 labels")])
def test_checks_behind_the_checksum_reject_damaged_files(raw_dir, tmp_path, name, damage, message):
    """The SHA-256 stops any change first; these are the checks that still stand if it were bypassed
    (parse_raw is load_arrays without the digest)."""
    dst = _copy_raw(raw_dir, tmp_path)
    f = dst / name
    blob = bytearray(f.read_bytes())
    if damage == "magic":
        blob[2] = 0x0D                      # IDX type byte: 0x08 (ubyte) -> 0x0D (float)
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "label-out-of-range":
        blob[8 + 123] = 42
    else:                                   # one label fewer, with a consistent header
        blob = blob[:-1]
        blob[4:8] = (9999).to_bytes(4, "big")
    f.write_bytes(bytes(blob))
    with pytest.raises(mu.DataError, match=message):
        data.parse_raw(dst)
    assert data.parse_raw(raw_dir)["train_x"].shape == (60000, 28, 28), "the intact files parse"


def test_fetch_killed_midway_leaves_nothing_used_and_the_next_fetch_is_clean(tmp_path):
    """SIGKILL while the Debian package is fetched or unpacked: no IDX file appears where it is read, and the
    next run removes the dead fetch's temp folder and fetches again, verified."""
    env = dict(os.environ, FASHION_MNIST_DIR=str(tmp_path))
    folder = tmp_path / "FashionMNIST"
    for delay in (0.3, 1.5):  # during apt-get download, then later (download or unpacking)
        p = subprocess.Popen([sys.executable, "-m", "mlp.data"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while not list(folder.glob(".fetch-*")) and time.time() < deadline and p.poll() is None:
            time.sleep(0.01)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        present = list((folder / "raw").iterdir()) if (folder / "raw").exists() else []
        assert all(data._sha256(f) == data.SHA256[f.name] for f in present), "only complete, verified files"
    data.fetch_fashion_mnist(tmp_path, log=lambda s: None)  # the next run (here: in this process)
    assert sorted(p.name for p in (folder / "raw").iterdir()) == sorted(data.SHA256)
    assert not list(folder.glob(".fetch-*")), "the killed fetches' temp folders are gone"
    assert data.load_arrays(tmp_path)["test_y"].shape == (10000,)


@pytest.mark.parametrize("shift", [2, 0])
def test_distributed_shards_of_a_global_batch_are_the_single_process_batch(arrays, shift):
    """Under torchrun each rank takes every world-th image of the shared permutation, and its augmentation
    (shift, flip, erasing) is drawn for the whole global batch and sliced the same way: the ranks' batches
    together are exactly the single-process batch, image for image, not the same draws repeated on each rank."""
    images, labels = arrays["train_x"][:1000], arrays["train_y"][:1000]
    kw = dict(shuffle=True, augment=True, erase=0.5, shift=shift, seed=5)
    single = list(mu.FastLoader(images, labels, 64, **kw))
    ranks = [list(mu.FastLoader(images, labels, 32, shard=(r, 2), **kw)) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1])
    for (X, y), (X0, y0), (X1, y1) in zip(single, *ranks):
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
        assert torch.equal(X[0::2], X0) and torch.equal(X[1::2], X1)
