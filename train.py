"""Train a preset from the command line; the same code path as the notebook.

    python train.py --preset default --out runs/default
    python train.py --preset seed --epochs 2 --train-limit 5000 --out runs/seed-smoke

Writes DIR/metrics.json, DIR/model.pt and DIR/curves.png.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

import torch

import my_utils as mu
from model import PRESETS, MLPNet, count_params, get_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--epochs", type=int, help="default: the preset's")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--lr", type=float, help="default: the preset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (auto: CUDA, then MPS, then CPU)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--train-limit", type=int, help="train on the first N training images only (smoke runs)")
    p.add_argument("--data-dir", help="default: $FASHION_MNIST_DIR or ./data")
    p.add_argument("--out", required=True, help="run directory for metrics.json, model.pt, curves.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def seed_everything(seed: int):
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass


def check_writable(out: Path):
    """Fail before training, not after it, if the run directory cannot take our files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as e:
        raise SystemExit(f"error: run directory {out} is not writable ({e.strerror}); choose another --out")


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        cfg = get_config(args.preset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
        if args.train_limit is not None and args.train_limit <= 0:
            raise ValueError(f"--train-limit={args.train_limit} must be positive")
        device = mu.resolve_device(args.device)
        precision = mu.resolve_precision(device, args.precision)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    out = Path(args.out)
    check_writable(out)
    seed_everything(args.seed)
    try:
        train_iter, val_iter, test_iter = mu.fashion_mnist_loaders(
            cfg.batch_size, cfg.val_size, augment=cfg.augment, seed=args.seed, device=device,
            train_limit=args.train_limit, root=args.data_dir)
    except mu.DataError as e:
        raise SystemExit(f"error: {e}")
    net = MLPNet(cfg)
    print(f"preset {args.preset}: {count_params(net):,} parameters, {train_iter.num_examples} training images")
    animator = mu.training_animator(cfg.epochs)
    history = mu.fit(net, train_iter, val_iter, cfg, device, precision, animator=animator, progress=not args.quiet)
    test_acc = mu.evaluate_accuracy(net, test_iter, device, precision)
    metrics = mu.save_run(out, net, cfg, history, test_acc, preset=args.preset, seed=args.seed, device=device,
                          precision=precision, train_limit=args.train_limit, animator=animator)
    print(f"best val acc {metrics['val_acc']:.4f} (epoch {metrics['best_epoch']}), test acc {test_acc:.4f}, "
          f"{metrics['train_seconds']:.0f}s training. Wrote {out}/metrics.json, model.pt, curves.png")
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
