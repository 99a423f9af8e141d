"""The training loop (`fit`), its checkpoints, and the command line; the notebook and bench.py use the same.

    python train.py --preset default --out runs/default
    python train.py --preset seed --epochs 2 --train-limit 5000 --out runs/seed-smoke
    python train.py --resume runs/default          # continue an interrupted run

Writes DIR/metrics.json, DIR/model.pt, DIR/curves.png, and after every epoch DIR/last.pt (and DIR/best.pt).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

import my_utils as mu
from model import PRESETS, Config, MLPNet, count_params, get_config


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(net, cfg):
    """Adam(W); with AdamW, no weight decay on biases and norm parameters (1-D tensors)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    decay = [p for p in net.parameters() if p.dim() > 1]
    no_decay = [p for p in net.parameters() if p.dim() <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def make_scheduler(opt, cfg, steps_per_epoch):
    """Per-step linear warm-up, then cosine decay to 0 ("cosine"), or constant ("none")."""
    warm, total = cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict):
    buf = io.BytesIO()
    torch.save(state, buf)
    mu.atomic_write(path, buf.getvalue())  # a crash mid-write leaves the previous checkpoint intact


def load_checkpoint(path, cfg: Config | None = None) -> dict:
    """Load with weights_only=True; a checkpoint of another configuration is one clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: was the run started with this --out, and did it "
                                f"finish at least one epoch?")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}); it may be truncated") from e
    if cfg is not None and ckpt["config"] != cfg.to_dict():
        raise ValueError(f"{path} was trained with another configuration.\n  checkpoint: {ckpt['config']}\n"
                         f"  requested:  {cfg.to_dict()}")
    return ckpt


def rng_state(train_iter) -> dict:
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(), python=list(random.getstate()[1]),
                numpy=torch.from_numpy(np_state[1].astype(np.int64)), numpy_pos=int(np_state[2]),
                loader=train_iter.generator.get_state())


def set_rng_state(state: dict, train_iter):
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    train_iter.generator.set_state(state["loader"])


# ----------------------------------------------------------------------------- the loop

class StopOnInterrupt:
    """While active, Ctrl-C (SIGINT, also a Jupyter interrupt) only sets `requested`; a second one interrupts."""

    def __enter__(self):
        self.requested, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def fit(net, train_iter, val_iter, cfg, device="auto", precision="auto", animator=None, log=print,
        progress=True, run_dir=None, resume=None, meta=None, compile=False, test_iter=None, until=None):
    """The training loop used by the notebook, train.py, the benchmark and the tests.

    Per epoch: train loss/acc (accumulated on the device, read once an epoch) and validation accuracy; with
    `run_dir`, a checkpoint (last.pt, and best.pt when validation improves). `resume`: a checkpoint dict to
    continue from. `compile`: run the model through torch.compile. `test_iter`: also record each epoch's
    test accuracy, for learning curves only (nothing is chosen on it). `until(record)`: stop after the first
    epoch for which it returns True (bench.py's time to 90 %). Ctrl-C stops after the current batch and
    keeps the last complete epoch's checkpoint. At the end the weights of the best validation epoch are
    restored (model selection on validation).
    Returns the history: a list of {epoch, train_loss, train_acc, val_acc, seconds, eval_seconds, lr}."""
    device = mu.resolve_device(device)
    precision = mu.resolve_precision(device, precision)
    net.to(device)
    world = dist.get_world_size() if dist.is_initialized() else 1
    writer = not dist.is_initialized() or dist.get_rank() == 0  # only rank 0 writes files
    model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
    if compile:  # off by default: on a 2-core CPU it did not win back its compile time
        model = torch.compile(model)
    opt = make_optimizer(net, cfg)
    sched = make_scheduler(opt, cfg, len(train_iter))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_f = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history, best_val, best_state = [], -1.0, None
    if resume is not None:
        net.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"], train_iter)
        history, best_val = list(resume["history"]), resume["best_val_acc"]
        best_pt = Path(run_dir or "") / "best.pt"
        best_state = load_checkpoint(best_pt)["model"] if run_dir and best_pt.exists() else None
        for r in history:
            if animator is not None:
                animator.add(r["epoch"], (r["train_loss"], r["train_acc"], r["val_acc"]))
    run_dir = Path(run_dir) if run_dir else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    start = len(history) + 1
    log(f"training on {device} in {precision}: epochs {start}-{cfg.epochs} x {len(train_iter)} batches "
        f"of {cfg.batch_size}")
    saved = start - 1 if resume is not None else 0
    with StopOnInterrupt() as stop:
        for epoch in range(start, cfg.epochs + 1):
            net.train()
            timer, sums = mu.Timer(), torch.zeros(3, device=device)  # loss sum, correct, count
            for X, y in tqdm(train_iter, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress):
                X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with mu.autocast(device, precision):
                    y_hat = model(X)
                    loss = loss_f(y_hat, y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                with torch.no_grad():
                    sums += torch.stack([loss.detach().float() * len(y), (y_hat.argmax(1) == y).sum(),
                                         torch.tensor(len(y), device=device)])
                if stop.requested:
                    break
            if stop.requested:
                where = (f"the checkpoint of epoch {saved} is in {run_dir}; continue with `python train.py "
                         f"--resume {run_dir}` (notebook: resume = True)" if run_dir and saved
                         else "no complete epoch was saved")
                log(f"interrupted during epoch {epoch}: stopped after the current batch and dropped that "
                    f"partial epoch; {where}")
                break
            if world > 1:
                dist.all_reduce(sums)  # every rank's share of the epoch
            loss_sum, correct, count = sums.tolist()
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"epoch {epoch}: the training loss is {loss_sum}; the learning rate "
                                         f"(lr={cfg.lr}) is probably too high. The last good checkpoint is kept.")
            seconds = timer.stop()  # training only; validation is timed apart
            timer.start()
            val_acc = mu.evaluate_accuracy(net, val_iter, device, precision) if val_iter is not None else float("nan")
            history.append(dict(epoch=epoch, train_loss=loss_sum / count, train_acc=correct / count,
                                val_acc=val_acc, seconds=seconds, eval_seconds=timer.stop(),
                                lr=opt.param_groups[0]["lr"]))
            if test_iter is not None:
                history[-1]["test_acc"] = mu.evaluate_accuracy(net, test_iter, device, precision)
            improved = val_acc > best_val
            if improved:
                best_val, best_state = val_acc, {k: v.detach().clone() for k, v in net.state_dict().items()}
            if run_dir is not None and writer:
                state = dict(config=cfg.to_dict(), epoch=epoch, model=net.state_dict(), optimizer=opt.state_dict(),
                             scheduler=sched.state_dict(), scaler=scaler.state_dict(), history=history,
                             best_val_acc=best_val, rng=rng_state(train_iter), **(meta or {}))
                if improved:
                    save_checkpoint(run_dir / "best.pt", state)
                save_checkpoint(run_dir / "last.pt", state)
                saved = epoch
            r = history[-1]
            log(f"epoch {epoch:3d}  loss {r['train_loss']:.4f}  train acc {r['train_acc']:.4f}  "
                f"val acc {val_acc:.4f}  {seconds:.1f}s  ({count / seconds:.0f} img/s)")
            if world > 1 and run_dir is not None:
                dist.barrier()  # nobody races ahead of rank 0's checkpoint
            if animator is not None:
                animator.add(epoch, (r["train_loss"], r["train_acc"], val_acc))
            if until is not None and until(r):
                break
    if best_state is not None:
        net.load_state_dict(best_state)
        best = max(history, key=lambda r: r["val_acc"])
        log(f"restored the weights of epoch {best['epoch']} (best validation accuracy {best['val_acc']:.4f})")
    return history


def train_and_test(cfg, seed=0, device="auto", precision="auto", train_limit=None, log=print, progress=False):
    """One complete run without files: seeded data and weights, `fit`, then the test set once.
    Returns (net, history, test_acc). The patch-size study runs many of these."""
    seed_everything(seed)
    train_iter, val_iter, test_iter = mu.fashion_mnist_loaders(
        cfg.batch_size, cfg.val_size, augment=cfg.augment, erase=cfg.erase, seed=seed, device=device,
        train_limit=train_limit)
    net = MLPNet(cfg)
    history = fit(net, train_iter, val_iter, cfg, device, precision, log=log, progress=progress)
    return net, history, mu.evaluate_accuracy(net, test_iter, device, precision)


def save_run(out_dir, net, cfg, history, test_acc, *, preset, seed, device, precision, train_limit=None,
             animator=None, extra=None) -> dict:
    """Write model.pt, curves.png and metrics.json (last, atomically) into out_dir; return the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    best = max(history, key=lambda r: r["val_acc"])
    metrics = dict(preset=preset, config=cfg.to_dict(), params=count_params(net), device=str(device),
                   hardware=mu.hardware(device), precision=precision, seed=seed, train_limit=train_limit,
                   epochs=len(history), history=history, best_epoch=best["epoch"], val_acc=best["val_acc"],
                   test_acc=test_acc, train_seconds=sum(r["seconds"] for r in history),
                   torch=torch.__version__, git_commit=mu.git_commit(), **(extra or {}))
    save_checkpoint(out / "model.pt", {"config": cfg.to_dict(), "preset": preset, "state_dict": net.state_dict()})
    if animator is None:
        animator = mu.training_animator(len(history))
        for r in history:
            animator.add(r["epoch"], (r["train_loss"], r["train_acc"], r["val_acc"]))
    animator.save(out / "curves.png")
    mu.atomic_write(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--epochs", type=int, help="default: the preset's")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--lr", type=float, help="default: the preset's")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any Config field, e.g. --set patch=7 --set dropout=0.1 (repeatable)")
    p.add_argument("--test-curve", action="store_true",
                   help="also record test accuracy after every epoch (to report a learning curve; model "
                        "selection still uses validation only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (auto: CUDA, then MPS, then CPU)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--train-limit", type=int, help="train on the first N training images only (smoke runs)")
    p.add_argument("--data-dir", help="default: $FASHION_MNIST_DIR or ./data")
    p.add_argument("--out", help="run directory for metrics.json, model.pt, curves.png, checkpoints")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last complete epoch")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on GPUs)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (for CUDA; slower). CPU runs are deterministic anyway")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not args.out and not args.resume:
        p.error("give --out DIR (or --resume DIR)")
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
    """Fail before training, not after it, if the run directory cannot take our files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-") as f:
            f.write(b"\0" * (1 << 20))  # about what a checkpoint needs
            f.flush()
    except OSError as e:
        raise SystemExit(f"error: run directory {out} is not writable or is full ({e.strerror}); free space "
                         f"or choose another --out")


def setup_distributed(device):
    """Under torchrun (WORLD_SIZE > 1): join the process group (nccl on CUDA, gloo on CPU) and take this
    process's GPU. Returns (rank, world_size, device); (0, 1, device) for a plain `python train.py`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def main(argv=None) -> dict:
    args = parse_args(argv)
    mu.git_commit()  # read now: the code this run starts with
    resume = None
    try:
        if args.resume:
            resume = load_checkpoint(Path(args.resume) / "last.pt")
            args.preset, args.seed = resume["preset"], resume["seed"]
            args.train_limit, args.out = resume["train_limit"], args.out or args.resume
            cfg = Config(**resume["config"])
        else:
            flags = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
            cfg = get_config(args.preset, **{**parse_overrides(args.set),  # an explicit flag wins over --set
                                             **{k: v for k, v in flags.items() if v is not None}})
        if args.train_limit is not None and args.train_limit <= 0:
            raise ValueError(f"--train-limit={args.train_limit} must be positive")
        device = mu.resolve_device(args.device)
        precision = mu.resolve_precision(device, args.precision)
        rank, world, device = setup_distributed(device)
        if cfg.batch_size % world:
            raise ValueError(f"batch size {cfg.batch_size} must divide evenly over {world} processes")
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    log = print if rank == 0 else (lambda s: None)
    out = Path(args.out)
    if rank == 0:
        check_writable(out)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
    seed_everything(args.seed)
    try:
        train_iter, val_iter, test_iter = mu.fashion_mnist_loaders(
            cfg.batch_size // world, cfg.val_size, augment=cfg.augment, erase=cfg.erase, seed=args.seed, device=device,
            train_limit=args.train_limit, root=args.data_dir, shard=(rank, world))
    except mu.DataError as e:
        raise SystemExit(f"error: {e}")
    net = MLPNet(cfg)
    log(f"preset {args.preset}: {count_params(net):,} parameters, {train_iter.num_examples * world} training "
        f"images" + (f" in {world} shards of {train_iter.num_examples} ({world} processes)" if world > 1 else ""))
    animator = mu.training_animator(cfg.epochs)
    meta = dict(preset=args.preset, seed=args.seed, train_limit=args.train_limit)
    try:
        history = fit(net, train_iter, val_iter, cfg, device, precision, animator=animator, log=log,
                      progress=not args.quiet and rank == 0, run_dir=out, resume=resume, meta=meta,
                      compile=args.compile, test_iter=test_iter if args.test_curve else None)
    except FloatingPointError as e:
        raise SystemExit(f"error: {e}")
    if len(history) < cfg.epochs:
        raise SystemExit(130)  # interrupted: fit said where the checkpoint is
    test_acc = mu.evaluate_accuracy(net, test_iter, device, precision)
    if rank != 0:
        dist.destroy_process_group()
        return {}
    metrics = save_run(out, net, cfg, history, test_acc, precision=precision, device=device, animator=animator,
                       extra=dict(world_size=world, command=command_line()), **meta)
    print(f"best val acc {metrics['val_acc']:.4f} (epoch {metrics['best_epoch']}), test acc {test_acc:.4f}, "
          f"{metrics['train_seconds']:.0f}s training. Wrote {out}/metrics.json, model.pt, curves.png")
    if dist.is_initialized():
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
