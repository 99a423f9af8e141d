"""One complete run (`run`: the notebook, train.py and the patch study all train through it), its files,
and the command line.

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
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

import checkpoint
import data
import hardware
import my_utils as mu
from loop import Trainer, best_record, device_rng_state, fit, seed_everything
from model import MLPNet, ModelConfig, count_params
from recipe import PRESETS, Recipe, get_preset, override
from results import records


# ----------------------------------------------------------------------------- one complete run

@dataclass
class Run:
    """What `run` returns: the trained net (best validation weights), its history, the test accuracy, the
    metrics written to metrics.json (empty without an output directory), the loaders, and the test set's
    (predictions, labels) from the one pass that gave the test accuracy."""
    net: MLPNet
    history: list
    test_acc: float | None
    metrics: dict = field(default_factory=dict)
    loaders: tuple = ()
    test_predictions: tuple = ()


class PeerFailed(RuntimeError):
    """Under torchrun: another rank (rank 0, which writes) failed; it reports why, this rank only exits."""


class CheckpointWriteError(OSError):
    """Rank 0 could not write a checkpoint (under torchrun the other ranks stop too: PeerFailed)."""


class Checkpointer:
    """After every epoch: DIR/last.pt, and DIR/best.pt when validation improved (rank 0 writes, all wait; if
    rank 0 cannot write, every rank stops)."""

    def __init__(self, run_dir: Path, meta: dict, writer: bool):
        self.run_dir, self.meta, self.writer, self.saved = run_dir, meta, writer, 0

    def __call__(self, trainer: Trainer):
        ranks = None
        if trainer.world > 1:  # every rank's own torch random state (dropout), so that a resume replays each
            ranks = [None] * trainer.world
            dist.all_gather_object(ranks, device_rng_state(trainer.device))
        error = None
        if self.writer:
            state = dict(trainer.state_dict(), **self.meta)
            if ranks:
                state["rng"]["ranks"] = ranks
            try:
                if trainer.best_epoch == len(trainer.history):  # this epoch is the new best
                    checkpoint.save(self.run_dir / "best.pt", state)
                checkpoint.save(self.run_dir / "last.pt", state)
                self.saved = len(trainer.history)
            except OSError as e:
                error = CheckpointWriteError(e.errno, f"cannot write a checkpoint into {self.run_dir} ({e.strerror}). "
                                + self.where() + "; free space, then continue with --resume")
        if trainer.world > 1:  # one collective for all: nobody races ahead of rank 0's checkpoint, or waits
            failed = torch.tensor([float(error is not None)], device=trainer.device)  # forever when it failed
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() and error is None:
                raise PeerFailed("rank 0 could not write a checkpoint")
        if error is not None:
            raise error

    def where(self) -> str:
        return (f"the checkpoint of epoch {self.saved} is intact in {self.run_dir}" if self.saved else
                "no complete epoch was saved")


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


RUN_FILES = ("run.json", "last.pt", "best.pt", "model.pt", "metrics.json", "curves.png")  # what a run writes


def resume_state(out: Path, name: str = "last.pt") -> dict:
    """The checkpoint to continue from, checked to belong to the run in `out`. A damaged file is one error
    naming it and the next good state (best.pt, or a fresh start)."""
    try:
        state = checkpoint.load(out / name)
        owner = json.loads((out / "run.json").read_text())["run_id"] if (out / "run.json").exists() else None
        if owner is not None and state.get("run_id") != owner:
            raise checkpoint.CheckpointError(
                f"{out / name} belongs to another run (run id {state.get('run_id')}, preset {state.get('preset')}), "
                f"not to the run in {out} (run id {owner})")
        return state
    except checkpoint.CheckpointError as e:
        offer = "start afresh with another output directory"
        if name != "best.pt" and (out / "best.pt").exists():
            try:
                best = checkpoint.load(out / "best.pt")
                offer = (f"best.pt (epoch {best['epoch']}, validation {best['best_val_acc']:.4f}) is intact: continue "
                         f"from it with `python train.py --resume {out} --from best.pt`, or {offer}")
            except checkpoint.CheckpointError:
                pass
        raise checkpoint.CheckpointError(f"{e}. Next good state: {offer}.") from None


def refuse_a_used_directory(out: Path):
    """A fresh run never writes beside another run's files (its best.pt would pass for this run's)."""
    found = [f for f in RUN_FILES if (out / f).exists()]
    if found:
        raise ValueError(f"run directory {out} already holds a run ({', '.join(found)}). Continue that run with "
                         f"`python train.py --resume {out}` (notebook: resume = True), or choose another output "
                         f"directory (--out / out_dir); delete it yourself if it is no longer wanted")


KEPT_ON_RESUME = ("preset", "seed", "train_limit", "eval_limit", "max_seconds", "test_curve")


def resumed_settings(state: dict, model, recipe, given: dict, precision: str) -> tuple:
    """What a resumed run trains with: its checkpoint's settings. A resume may only raise the number of epochs
    (an extension, kept in the record); any other setting asked for that differs from the run's is refused,
    named, instead of being ignored."""
    saved = dict(state["recipe"])
    wanted = recipe.to_dict() if recipe is not None else saved
    differ = [f"{k}={wanted[k]!r} (the run has {saved[k]!r})" for k in saved if k != "epochs" and wanted[k] != saved[k]]
    if model is not None:
        differ += [f"{k}={v!r} (the run has {state['model'][k]!r})" for k, v in model.to_dict().items()
                   if v != state["model"][k]]
    differ += [f"{k}={v!r} (the run has {state.get(k)!r})" for k, v in given.items()
               if k in KEPT_ON_RESUME and v != state.get(k)]
    if precision != "auto" and precision != state["precision"]:
        differ.append(f"precision={precision!r} (the run has {state['precision']!r})")
    if differ:
        raise checkpoint.CheckpointError(
            "a resumed run keeps its own settings; only its number of epochs may grow. This resume asks for "
            + "; ".join(differ) + ". Start a new run with another output directory to change them")
    done = state["epoch"]
    if wanted["epochs"] < done:
        raise checkpoint.CheckpointError(f"epochs={wanted['epochs']}: the run has already trained {done} epochs; "
                                         f"a resume can keep or raise its number of epochs, not cut it")
    extended = list(state.get("extended", []))
    if wanted["epochs"] != saved["epochs"]:
        extended.append(dict(at_epoch=done, epochs_from=saved["epochs"], epochs_to=wanted["epochs"]))
    return ModelConfig(**state["model"]), Recipe(**wanted), extended


def run(model: ModelConfig | None = None, recipe: Recipe | None = None, *, preset="custom", seed=0, device="auto",
        precision="auto", train_limit=None, eval_limit=None, out_dir=None, resume=False, resume_from="last.pt",
        live=True, log=None, progress=True, compile=False, test_curve=False, max_seconds=None, until=None,
        command="run()", data_root=None) -> Run:
    """One complete run, as the notebook, train.py and the study make it: device and seed, loaders, MLPNet,
    `fit`, the test set once, and with `out_dir` checkpoints every epoch plus metrics.json, model.pt and
    curves.png at the end. A fresh run refuses a directory that holds another run's files.
    `resume`: continue the run in out_dir with its checkpoint's model, recipe and settings; given ones must
    match, except a larger `recipe.epochs`, which extends the run (the cosine schedule is then that of the new
    length from the next step on, and metrics.json lists the extension under `extended`).
    `live`: draw the curves (in Jupyter: in place, several times an epoch). `max_seconds`: stop after the epoch
    that reaches this much training time (the run is marked capped). `eval_limit`: validate and test on the
    first N images only (smoke runs and tests; recorded, and such a run is no result)."""
    records.git_commit()  # read now: the code this run starts with
    out = Path(out_dir) if out_dir else None
    dev = hardware.resolve_device(device)
    rank, world, dev = setup_distributed(dev)
    writer = out is not None and rank == 0
    # A second run into the same directory stops at the lock, naming the live one.
    with checkpoint.RunLock(out, command) if writer else contextlib.nullcontext():
        if writer:
            for tmp in out.glob(".*.tmp"):
                tmp.unlink()  # left by a crash mid-write; no live writer can own it while we hold the lock
        state, extended = None, []
        if resume:
            state = resume_state(out, resume_from)
            given = dict(preset=preset, seed=seed, train_limit=train_limit, eval_limit=eval_limit,
                         max_seconds=max_seconds, test_curve=test_curve)
            model, recipe, extended = resumed_settings(state, model, recipe, given, precision)
            precision = state["precision"]  # a resumed run continues in its own precision
            run_id = state["run_id"]
            preset, seed, train_limit = state["preset"], state["seed"], state["train_limit"]
            eval_limit, max_seconds = state.get("eval_limit"), state.get("max_seconds")
            test_curve = state.get("test_curve", False)
        else:
            if writer:
                refuse_a_used_directory(out)
            run_id = uuid.uuid4().hex[:12]
        prec = hardware.resolve_precision(dev, precision)
        if recipe.batch_size % world:
            raise ValueError(f"batch size {recipe.batch_size} must divide evenly over {world} processes")
        if writer and not resume:
            records.atomic_write(out / "run.json", json.dumps(dict(run_id=run_id, preset=preset, seed=seed)))
        seed_everything(seed)
        loaders = data.loaders(recipe, seed=seed, device=dev, train_limit=train_limit, root=data_root,
                               shard=(rank, world), eval_limit=eval_limit)
        net = MLPNet(model)  # the same initial weights on every rank
        if rank:
            seed_everything(seed, rank)  # its own dropout and stochastic depth from here on
        animator = mu.training_animator(recipe.epochs) if live and rank == 0 else None
        say = (log or (animator.log if animator else print)) if rank == 0 else (lambda s: None)
        say(f"preset {preset}: {count_params(net):,} parameters, {loaders[0].num_examples * world:,} training images"
            + (f" in {world} shards of {loaders[0].num_examples:,}" if world > 1 else "")
            + (f"; validation and test on their first {eval_limit:,} images only" if eval_limit else ""))
        if extended and state is not None and extended[-1]["at_epoch"] == state["epoch"]:
            say(f"extending the run from {extended[-1]['epochs_from']} to {extended[-1]['epochs_to']} epochs")
        trainer = Trainer(net, recipe, loaders, dev, prec, compile=compile, test_curve=test_curve)
        if state is not None:
            best = resume_state(out, "best.pt") if (out / "best.pt").exists() else None
            trainer.load_state_dict(state, checkpoint.evaluated_weights(best) if best else None)
            if animator:
                mu.draw_history(animator, trainer.history)
        meta = dict(run_id=run_id, preset=preset, seed=seed, train_limit=train_limit, eval_limit=eval_limit,
                    max_seconds=max_seconds, test_curve=test_curve, extended=extended, model=model.to_dict(),
                    recipe=recipe.to_dict(), precision=prec)
        saver = Checkpointer(out, meta, writer) if out is not None else None
        over_budget = lambda: max_seconds is not None and sum(h["seconds"] for h in trainer.history) >= max_seconds  # noqa: E731
        stop_when = lambda r: over_budget() or (until is not None and until(r))  # noqa: E731
        on_progress = (lambda x, loss, acc: animator.add(x, (loss, acc, None))) if animator else None

        def after_epoch(t):
            if saver:
                saver(t)
            if animator:
                animator.add(t.history[-1]["epoch"], (None, None, t.history[-1]["val_acc"]))
        fit(trainer, after_epoch=after_epoch, on_progress=on_progress, log=say, progress=progress and rank == 0,
            until=stop_when)
        if trainer.interrupted:
            say(f"{saver.where() if saver else 'nothing was saved (no output directory)'}"
                + (f"; continue with `python train.py --resume {out}` (notebook: resume = True)" if saver and saver.saved else ""))
            return Run(net, trainer.history, None, loaders=loaders)
        preds, labels = mu.predict(net, loaders[2], dev, prec)  # kept: with view averaging a pass is not cheap
        test_acc = float((preds == labels).sum()) / len(labels)
        metrics = {}
        if writer:
            metrics = save_run(out, net, model, recipe, trainer.history, test_acc, preset=preset, seed=seed,
                               device=dev, precision=prec, train_limit=train_limit, animator=animator,
                               extra=dict(world_size=world, command=command, run_id=run_id, eval_limit=eval_limit,
                                          val_images=loaders[1].num_examples, test_images=len(labels),
                                          eval_views=model.views, extended=extended,
                                          capped=over_budget() and len(trainer.history) < recipe.epochs,
                                          **({"max_seconds": max_seconds} if max_seconds else {})))
            say(f"best val acc {metrics['val_acc']:.4f} (epoch {metrics['best_epoch']}), test acc {test_acc:.4f}, "
                f"{metrics['train_seconds']:.0f}s training. Wrote {out}/metrics.json, model.pt, curves.png")
        return Run(net, trainer.history, test_acc, metrics, loaders, (preds, labels))


def save_run(out_dir, net, model, recipe, history, test_acc, *, preset, seed, device, precision, train_limit=None,
             animator=None, extra=None) -> dict:
    """Write model.pt, curves.png and metrics.json (last, atomically) into out_dir; return the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    best = best_record(history)
    metrics = dict(preset=preset, model=model.to_dict(), recipe=recipe.to_dict(), params=count_params(net),
                   device=str(device), hardware=hardware.describe(device), precision=precision, seed=seed,
                   train_limit=train_limit, epochs=len(history),
                   preset_epochs=PRESETS[preset].recipe.epochs if preset in PRESETS else recipe.epochs,
                   history=history, best_epoch=best["epoch"], val_acc=best["val_acc"], test_acc=test_acc,
                   train_seconds=sum(r["seconds"] for r in history), torch=torch.__version__,
                   git_commit=records.git_commit(), **(extra or {}))
    checkpoint.save(out / "model.pt", {"model": model.to_dict(), "preset": preset, "state_dict": net.state_dict()})
    if animator is None:
        animator = mu.training_animator(len(history))
        mu.draw_history(animator, history)
    animator.save(out / "curves.png")
    records.atomic_write(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


# ----------------------------------------------------------------------------- command line

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
                   "budget (metrics.json then says capped: true)")
    p.add_argument("--seed", type=int, help="default: 0")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (auto: CUDA, then MPS, then CPU)")
    p.add_argument("--precision", default="auto", choices=hardware.PRECISIONS)
    p.add_argument("--train-limit", type=int, help="train on the first N training images only (smoke runs)")
    p.add_argument("--eval-limit", type=int, help="validate and test on the first N images only (smoke runs, "
                   "tests: the run's accuracies are then no result)")
    p.add_argument("--data-dir", help="default: $FASHION_MNIST_DIR or ./data")
    p.add_argument("--out", help="run directory for metrics.json, model.pt, curves.png, checkpoints")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last complete epoch, with its "
                   "own settings (only --epochs may change: a larger number extends it)")
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
            state = resume_state(out, args.resume_from or "last.pt")
            model, recipe = override(ModelConfig(**state["model"]), Recipe(**state["recipe"]), **overrides)
            given = {k: state.get(k) if v is None else v for k, v in given.items()}
        else:
            model, recipe = get_preset(args.preset or "quick", **overrides)
            given = dict(given, preset=args.preset or "quick", seed=args.seed or 0, test_curve=bool(args.test_curve))
        hardware.resolve_precision(hardware.resolve_device(args.device), args.precision)
        if int(os.environ.get("RANK", "0")) == 0:
            check_writable(out)
        if args.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
        r = run(model, recipe, device=args.device, precision=args.precision, out_dir=out, resume=bool(args.resume),
                resume_from=args.resume_from or "last.pt", progress=not args.quiet, compile=args.compile,
                command=command_line(), data_root=args.data_dir, **given)
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
