"""One complete run (`run`: the notebook, train.py, the patch study and the benchmark all train through it) and
its files: the lock, the resume checks, checkpoints after every epoch, metrics.json, model.pt and curves.png.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from mlp import checkpoint, data, hardware, plots, records
from mlp.evaluate import predict
from mlp.loop import Trainer, best_record, device_rng_state, fit, seed_everything
from mlp.recipe import PRESETS, Recipe
from model import MLPNet, ModelConfig, count_params

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
        animator = plots.training_animator(recipe.epochs) if live and rank == 0 else None
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
                plots.draw_history(animator, trainer.history)
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
        preds, labels = predict(net, loaders[2], dev, prec)  # kept: with view averaging a pass is not cheap
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
        animator = plots.training_animator(len(history))
        plots.draw_history(animator, history)
    animator.save(out / "curves.png")
    records.atomic_write(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
