"""One complete run (`run`: the notebook, train.py, the patch study and the benchmark all train through it) and
its files: the lock, the resume checks, checkpoints after every epoch, metrics.json, model.pt and curves.png.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from mlp import checkpoint, data, hardware, plots, records
from mlp.board import open_board
from mlp.evaluate import Views, predict
from mlp.loop import Trainer, best_record, device_rng_state, fit, seed_everything
from mlp.nets import Config, build_net, config_from
from mlp.recipe import PRESETS, Recipe, override
from model import count_params


@dataclass
class Run:
    """What `run` returns: the trained net (best validation weights), its history, the test accuracy, the
    metrics written to metrics.json (empty without an output directory), the loaders, and the test set's
    (predictions, labels) from the one pass that gave the test accuracy."""
    net: torch.nn.Module
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
KEPT_FILES = RUN_FILES[1:]  # what is worth keeping: run.json alone is a run that never finished an epoch


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


def resumable(out: Path, name: str = "last.pt", **overrides) -> tuple[Config, Recipe, dict]:
    """The model, recipe and settings (`KEPT_ON_RESUME`) of the run in `out`, read from its checkpoint, with
    `overrides` of model or recipe fields on top (None: the run's own): what `train.py --resume` and the
    notebook's `resume = True` continue with (`run` refuses what a resume may not change)."""
    state = resume_state(out, name)
    model, recipe = override(config_from(state["model"]), Recipe(**state["recipe"]), **overrides)
    return model, recipe, {k: state.get(k) for k in KEPT_ON_RESUME}


def new_run_dir(parent: Path, prefix: str) -> Path:
    """A new directory parent/prefix-YYYYmmdd-HHMMSS, made now (-2, -3, ... where that second is taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = parent / (f"{prefix}-{stamp}" + (f"-{i}" if i > 1 else ""))
        with contextlib.suppress(FileExistsError):
            path.mkdir()
            return path
    raise FileExistsError(f"{parent}/{prefix}-{stamp}-*: a thousand run directories made in one second")


def latest_run(parent: Path, prefix: str) -> Path:
    """The newest run directory parent/prefix-* (by its date-time name) that holds a checkpoint to resume."""
    runs = sorted((p for p in parent.glob(f"{prefix}-*") if (p / "last.pt").exists()),
                  key=lambda p: [int(t) for t in p.name[len(prefix) + 1:].split("-") if t.isdigit()])
    if not runs:
        raise checkpoint.CheckpointError(f"no run to resume: no {parent}/{prefix}-*/last.pt. Train one first "
                                         f"(resume = False), or name the run to continue in out_dir")
    return runs[-1]


def check_selectable(recipe: Recipe):
    """A run keeps the weights of its best validated epoch: it needs a validation split to choose on."""
    if recipe.val_size == 0:
        raise ValueError("val_size=0 leaves nothing to validate on, and a run keeps the weights of its best "
                         "validated epoch; give val_size of at least 1 (the presets hold out 5,000)")


def refuse_a_used_directory(out: Path):
    """A fresh run never writes beside another run's files (its best.pt would pass for this run's). A run that
    stopped before its first checkpoint (bad data, settings, a diverged first epoch) left only run.json: a new
    run may start there."""
    found = [f for f in KEPT_FILES if (out / f).exists()]
    if found:
        raise ValueError(f"run directory {out} already holds a run ({', '.join(found)}). Continue that run with "
                         f"`python train.py --resume {out}` (notebook: resume = True), or choose another output "
                         f"directory (--out / out_dir); delete it yourself if it is no longer wanted")


@dataclass
class RunConfig:
    """How a run is made, beside its model and recipe. The first six are the run's own: its checkpoint keeps
    them, and a resume keeps them too (`resumed_settings`)."""
    preset: str = "custom"              # the preset's name, for the record
    seed: int = 0                       # initial weights, data order, augmentation, dropout
    train_limit: int | None = None      # train on the first N training images only (smoke runs)
    eval_limit: int | None = None       # validate and test on the first N images only (recorded: no result)
    max_seconds: float | None = None    # stop after the epoch that reaches this much training (marked capped)
    test_curve: bool = False            # also test after every epoch (a learning curve; nothing is chosen on it)
    out_dir: str | Path | None = None   # the run directory: checkpoints every epoch, then the run's files
    resume: bool = False                # continue the run in out_dir from its checkpoint, with its settings
    resume_from: str = "last.pt"        # or best.pt, where last.pt is damaged
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False               # torch.compile (pays on GPUs)
    live: bool = True                   # draw the curves (in Jupyter: in place, several times an epoch)
    progress: bool = True               # a progress bar per epoch
    command: str = "run()"              # what started the run, for the record
    data_root: str | None = None

    def kept(self) -> dict:
        return {k: getattr(self, k) for k in KEPT_ON_RESUME}


KEPT_ON_RESUME = ("preset", "seed", "train_limit", "eval_limit", "max_seconds", "test_curve")
RESET_ON_RESUME = ("max_seconds",)  # a resume may give a new training-time budget (it counts the whole run)


def resumed_settings(state: dict, model, recipe, given: dict, precision: str) -> tuple:
    """What a resumed run trains with: its checkpoint's settings. A resume may only raise the number of epochs
    (an extension, kept in the record); any other setting asked for that differs from the run's is refused,
    named, instead of being ignored."""
    saved = Recipe(**state["recipe"]).to_dict()  # (a field newer than the run: its default, what the run did)
    wanted = recipe.to_dict() if recipe is not None else saved
    differ = [f"{k}={wanted[k]!r} (the run has {saved[k]!r})" for k in saved if k != "epochs" and wanted[k] != saved[k]]
    if model is not None:
        differ += [f"{k}={v!r} (the run has {state['model'][k]!r})" for k, v in model.to_dict().items()
                   if v != state["model"][k]]
    differ += [f"{k}={v!r} (the run has {state.get(k)!r})" for k, v in given.items()
               if k in KEPT_ON_RESUME and k not in RESET_ON_RESUME and v != state.get(k)]
    if precision != "auto" and precision != state["precision"]:
        differ.append(f"precision={precision!r} (the run has {state['precision']!r})")
    if differ:
        raise checkpoint.CheckpointError(
            "a resumed run keeps its own settings; only its number of epochs may grow and its time budget change. "
            "This resume asks for " + "; ".join(differ)
            + ". Start a new run with another output directory to change them")
    done = state["epoch"]
    if wanted["epochs"] < saved["epochs"]:  # a shorter schedule would cut the cosine the run trained on
        raise checkpoint.CheckpointError(f"epochs={wanted['epochs']}: the run was made for {saved['epochs']} epochs "
                                         f"({done} done); a resume can keep or raise its number of epochs, not cut "
                                         f"it. Start a new run for a shorter schedule")
    extended = list(state.get("extended", []))
    if wanted["epochs"] != saved["epochs"]:
        extended.append(dict(at_epoch=done, epochs_from=saved["epochs"], epochs_to=wanted["epochs"]))
    if "max_seconds" in given and given["max_seconds"] != state.get("max_seconds"):
        extended.append(dict(at_epoch=done, max_seconds_from=state.get("max_seconds"),
                             max_seconds_to=given["max_seconds"]))
    return config_from(state["model"]), Recipe(**wanted), extended


@dataclass
class Start:
    """Where a run starts: fresh, or from its checkpoint (`state`) with the settings it was made with."""
    model: Config
    recipe: Recipe
    cfg: RunConfig
    run_id: str
    state: dict | None = None
    extended: list = field(default_factory=list)


def start(model, recipe, cfg: RunConfig, out: Path | None, writer: bool) -> Start:
    """A resume takes its checkpoint's model, recipe, settings and precision (refusing others, `resumed_settings`);
    a fresh run refuses a directory that holds another run's files, and records its run id."""
    if cfg.resume:
        state = resume_state(out, cfg.resume_from)
        model, recipe, extended = resumed_settings(state, model, recipe, cfg.kept(), cfg.precision)
        kept = {k: state.get(k) for k in KEPT_ON_RESUME}  # (runs older than a setting lack it: None)
        kept["test_curve"] = bool(kept["test_curve"])
        kept["max_seconds"] = cfg.max_seconds  # the budget this resume was given (train.py: the run's unless told)
        cfg = dataclasses.replace(cfg, **kept, precision=state["precision"])  # it continues in its own precision
        return Start(model, recipe, cfg, state["run_id"], state, extended)
    run_id = uuid.uuid4().hex[:12]
    if writer:
        refuse_a_used_directory(out)
        records.atomic_write(out / "run.json", json.dumps(dict(run_id=run_id, preset=cfg.preset, seed=cfg.seed)))
    return Start(model, recipe, cfg, run_id)


def build(model: Config, seed: int):
    """The network a run with this seed starts from (the notebook builds it so, then hands it to `run`)."""
    seed_everything(seed)
    return build_net(model)


def quiet(line: str):
    """The log of a rank other than 0: nothing (rank 0 speaks for the run)."""


class RunHooks:
    """What `run` does around `fit`: the live curves, the checkpoint and the TensorBoard events after each
    epoch, and when to stop (the time budget, or `until`)."""

    def __init__(self, trainer: Trainer, saver, animator, board, max_seconds, until):
        self.trainer, self.saver, self.animator, self.board = trainer, saver, animator, board
        self.max_seconds, self.until = max_seconds, until

    def progress(self, x, loss, acc):
        self.animator.add(x, (loss, acc))

    def after_epoch(self, trainer: Trainer):
        if self.saver:
            self.saver(trainer)
        if self.board:  # after the checkpoint: what TensorBoard shows, a resume keeps
            self.board.epoch(trainer.history[-1])
        if self.animator:
            r = trainer.history[-1]
            self.animator.add(r["epoch"], (None, None, *plots.validation_points(r))[:len(self.animator.legend)])

    def over_budget(self) -> bool:
        return self.max_seconds is not None and sum(h["seconds"] for h in self.trainer.history) >= self.max_seconds

    def stop(self, record: dict) -> bool:
        return self.over_budget() or (self.until is not None and self.until(record))


def run(model: Config | None, recipe: Recipe | None, cfg: RunConfig | None = None, *, net=None,
        animator: plots.Animator | None = None, log=None, until=None) -> Run:
    """One complete run, as the notebook, train.py, the study and the benchmark make it: loaders, the network
    (`net`, else `build(model, cfg.seed)`), `fit`, the test set once, and with `cfg.out_dir` a checkpoint
    every epoch plus metrics.json, model.pt and curves.png at the end. A resume (`cfg.resume`) continues the
    run in out_dir with its own model, recipe and settings: given ones must match, except a larger
    `recipe.epochs`, which extends it (the cosine of the new length from the next step; metrics.json lists the
    extension under `extended`). `until(record)`: stop after an epoch for which it is true."""
    cfg = cfg or RunConfig()
    if recipe is not None:
        check_selectable(recipe)
    records.git_commit()  # read now: the code this run starts with
    rank, world, dev = setup_distributed(hardware.resolve_device(cfg.device))
    out = Path(cfg.out_dir) if cfg.out_dir else None
    writer = out is not None and rank == 0
    with contextlib.ExitStack() as runs:  # closed on the way out: the lock (one run per directory), the events
        if writer:
            runs.enter_context(checkpoint.RunLock(out, cfg.command))
            for tmp in out.glob(".*.tmp"):
                tmp.unlink()  # left by a crash mid-write; no live writer can own it while we hold the lock
        begin = start(model, recipe, cfg, out, writer)
        model, recipe, cfg = begin.model, begin.recipe, begin.cfg
        prec = hardware.resolve_precision(dev, cfg.precision)
        if recipe.batch_size % world:
            raise ValueError(f"batch size {recipe.batch_size} must divide evenly over {world} processes")
        loaders = data.loaders(recipe, seed=cfg.seed, device=dev, train_limit=cfg.train_limit, root=cfg.data_root,
                               shard=(rank, world), eval_limit=cfg.eval_limit)
        net = given_net(net, model) if net is not None else build(model, cfg.seed)  # the same on every rank
        if rank:
            seed_everything(cfg.seed, rank)  # its own dropout and stochastic depth from here on
        if cfg.live and rank == 0:
            animator = animator or plots.training_animator(recipe.epochs, model.views)
        else:
            animator = None
        say = quiet if rank else log or (animator.log if animator else print)
        say(introduction(begin, net, loaders[0].num_examples, world))
        trainer = Trainer(net, recipe, loaders, dev, prec, compile=cfg.compile, test_curve=cfg.test_curve)
        if begin.state is not None:
            continue_from(trainer, begin.state, out, animator)
        meta = dict(run_id=begin.run_id, **cfg.kept(), extended=begin.extended, model=model.to_dict(),
                    recipe=recipe.to_dict(), precision=prec)
        board = open_board(out, len(loaders[0]), len(trainer.history), say) if writer else None
        if board:
            runs.enter_context(board)
        hooks = RunHooks(trainer, Checkpointer(out, meta, writer) if out else None, animator, board, cfg.max_seconds,
                         until)
        fit(trainer, after_epoch=hooks.after_epoch, on_progress=hooks.progress if animator else None, log=say,
            progress=cfg.progress and rank == 0, until=hooks.stop)
        if trainer.interrupted:
            say(interrupted(hooks.saver, out))
            return Run(net, trainer.history, None, loaders=loaders)
        began = time.perf_counter()
        preds, labels = predict(net, loaders[2], dev, prec, Views.of(model))  # kept: views make a pass costly
        test_seconds = time.perf_counter() - began
        test_acc = float((preds == labels).sum()) / len(labels)
        metrics = {}
        if writer:
            metrics = save_run(out, net, model, recipe, trainer.history, test_acc, preset=cfg.preset, seed=cfg.seed,
                               device=dev, precision=prec, train_limit=cfg.train_limit, animator=animator,
                               extra=dict(world_size=world, command=cfg.command, run_id=begin.run_id,
                                          eval_limit=cfg.eval_limit, val_images=loaders[1].num_examples,
                                          test_images=len(labels), eval_views=model.views, test_seconds=test_seconds,
                                          extended=begin.extended,
                                          capped=hooks.over_budget() and len(trainer.history) < recipe.epochs,
                                          **({"max_seconds": cfg.max_seconds} if cfg.max_seconds else {})))
            if board:
                board.results(metrics)
            say(f"best val acc {metrics['val_acc']:.4f} (epoch {metrics['best_epoch']}), test acc {test_acc:.4f}, "
                f"{metrics['train_seconds']:.0f}s training. Wrote {out}/metrics.json, model.pt, curves.png")
        return Run(net, trainer.history, test_acc, metrics, loaders, (preds, labels))


def given_net(net, model: Config):
    if net.cfg.to_dict() != model.to_dict():
        raise ValueError("the network given to run() was built from another model config than the run's "
                         "(build it with mlp.runner.build(model, seed) from the run's own config)")
    return net


def introduction(begin: Start, net, images: int, world: int) -> str:
    cfg = begin.cfg
    line = f"preset {cfg.preset}: {count_params(net):,} parameters, {images * world:,} training images"
    line += f" in {world} shards of {images:,}" if world > 1 else ""
    line += f"; validation and test on their first {cfg.eval_limit:,} images only" if cfg.eval_limit else ""
    for change in begin.extended if begin.state is not None else []:
        if change["at_epoch"] == begin.state["epoch"] and "epochs_to" in change:
            line += f"\nextending the run from {change['epochs_from']} to {change['epochs_to']} epochs"
        elif change["at_epoch"] == begin.state["epoch"]:
            line += (f"\nits training-time budget: {change['max_seconds_to']} s (was {change['max_seconds_from']}), "
                     f"counting the {sum(r['seconds'] for r in begin.state['history']):.0f} s trained so far")
    return line


def continue_from(trainer: Trainer, state: dict, out: Path, animator):
    """Load a checkpoint into the trainer, with best.pt's weights as the best so far, and redraw its curves."""
    best = resume_state(out, "best.pt") if (out / "best.pt").exists() else None
    trainer.load_state_dict(state, checkpoint.evaluated_weights(best) if best else None)
    if animator:
        plots.draw_history(animator, trainer.history)


def interrupted(saver, out) -> str:
    if saver is None:
        return "nothing was saved (no output directory)"
    return saver.where() + (f"; continue with `python train.py --resume {out}` (notebook: resume = True)"
                            if saver.saved else "")


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
        animator = plots.training_animator(len(history), model.views)
        plots.draw_history(animator, history)
    animator.save(out / "curves.png")
    records.atomic_write(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
