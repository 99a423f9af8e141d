"""Train one preset from the command line (the run itself is mlp/runner.py's `run`, which the notebook shares).

    python train.py --preset quick --out runs/quick
    python train.py --preset seed --epochs 2 --train-limit 5000 --out runs/seed-smoke
    python train.py --preset quick --set patch=7 --max-seconds 120 --out runs/k7-2min
    python train.py --resume runs/quick          # continue an interrupted run

Writes DIR/metrics.json, DIR/model.pt, DIR/curves.png, and after every epoch DIR/last.pt (and DIR/best.pt).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mlp import checkpoint, data, hardware, records
from mlp.distributed import CheckpointWriteError, PeerFailed
from mlp.recipe import PRESETS, get_preset
from mlp.resume import resumable
from mlp.runner import RunConfig, check_selectable, run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help=f"one of {sorted(PRESETS)} (default: quick)")
    p.add_argument("--epochs", type=int, help="default: the preset's; with --resume, a larger number extends the run")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--lr", type=float, help="default: the preset's")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any model or recipe field, e.g. --set patch=7 --set dropout=0.1 (repeatable)")
    p.add_argument("--test-curve", action="store_true", default=None,
                   help="also record test accuracy after every epoch (to report a learning curve; model "
                        "selection still uses validation only)")
    p.add_argument("--max-seconds", type=float, help="stop after the epoch whose training time reaches this "
                   "budget (metrics.json then says capped: true); with --resume, a new budget for the whole run "
                   "(default: the run's own)")
    p.add_argument("--seed", type=int, help="default: 0")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (auto: CUDA, then MPS, then CPU)")
    p.add_argument("--precision", default="auto", choices=hardware.PRECISIONS)
    p.add_argument("--train-limit", type=int, help="train on the first N training images only (smoke runs)")
    p.add_argument("--eval-limit", type=int, help="validate and test on the first N images only (smoke runs, "
                   "tests: the run's accuracies are then no result)")
    p.add_argument("--data-dir", help="default: $FASHION_MNIST_DIR or ./data")
    p.add_argument("--out", help="run directory for metrics.json, model.pt, curves.png, checkpoints")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last complete epoch, with its "
                   "own settings (only --epochs may grow, and --max-seconds change)")
    p.add_argument("--from", dest="resume_from", choices=["last.pt", "best.pt"],
                   help="with --resume: the checkpoint to continue from (default last.pt; best.pt when last.pt is "
                        "damaged)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on GPUs)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (for CUDA; slower). CPU runs are deterministic anyway")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not args.out and not args.resume:
        p.error("give --out DIR (or --resume DIR)")
    if args.out and args.resume and Path(args.out).resolve() != Path(args.resume).resolve():
        p.error(f"--out {args.out} and --resume {args.resume} name two directories: a run resumes in its own "
                f"directory (give --resume DIR alone)")
    if args.resume_from and not args.resume:
        p.error(f"--from {args.resume_from} needs --resume DIR (the run to continue)")
    for flag in ("train_limit", "eval_limit"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be positive")
    return args


def command_line() -> str:
    """How this process was started, for the record in metrics.json."""
    prefix = "torchrun ... " if "WORLD_SIZE" in os.environ else "python "
    return prefix + " ".join([Path(sys.argv[0]).name] + sys.argv[1:])


def parse_overrides(items: list[str]) -> dict:
    """["patch=7", "augment=true"] -> {"patch": 7, "augment": True}: values are read as JSON, else as text."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: write FIELD=VALUE, e.g. --set patch=7")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def check_writable(out: Path):
    """Fail before training, not after it, if the run directory cannot take a checkpoint."""
    probe = out / ".probe"
    try:
        out.mkdir(parents=True, exist_ok=True)
        records.atomic_write(probe, b"\0" * (1 << 20))  # about what a checkpoint needs
    except OSError as e:
        raise ValueError(f"run directory {out} is not writable or is full ({e.strerror}); free space or choose "
                         f"another --out") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def main(argv=None) -> dict:
    args = parse_args(argv)
    records.git_commit()  # read now: the code this run starts with
    out = Path(args.resume or args.out)
    overrides = {**parse_overrides_or_exit(args.set),  # an explicit flag wins over --set
                 **{k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr).items()
                    if v is not None}}
    given = dict(preset=args.preset, seed=args.seed, train_limit=args.train_limit, eval_limit=args.eval_limit,
                 max_seconds=args.max_seconds, test_curve=args.test_curve)
    try:
        if args.resume:  # the run's own settings, with what this command line asks on top (run() checks it)
            model, recipe, kept = resumable(out, args.resume_from or "last.pt", **overrides)
            given = {k: kept[k] if v is None else v for k, v in given.items()}
        else:
            model, recipe = get_preset(args.preset or "quick", **overrides)
            given = dict(given, preset=args.preset or "quick", seed=args.seed or 0, test_curve=bool(args.test_curve))
        hardware.resolve_precision(hardware.resolve_device(args.device), args.precision)
        check_selectable(recipe)
        if int(os.environ.get("RANK", "0")) == 0:
            check_writable(out)
        if args.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
        cfg = RunConfig(**given, out_dir=out, resume=bool(args.resume), resume_from=args.resume_from or "last.pt",
                        device=args.device, precision=args.precision, compile=args.compile, progress=not args.quiet,
                        command=command_line(), data_root=args.data_dir)
        r = run(model, recipe, cfg)
    except PeerFailed:
        dist.barrier()  # until rank 0 has said why (torchrun ends the group when the first process exits)
        raise SystemExit(1)
    except (ValueError, FloatingPointError, data.DataError, checkpoint.RunInUse, OSError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if isinstance(e, CheckpointWriteError) and dist.is_initialized():
            dist.barrier()  # the others wait for this line (PeerFailed)
        raise SystemExit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if r.test_acc is None:
        raise SystemExit(130)  # interrupted: run() said where the checkpoint is
    return r.metrics


def parse_overrides_or_exit(items):
    try:
        return parse_overrides(items)
    except ValueError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
