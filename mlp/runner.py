"""One complete run (`run`: the notebook, train.py, the patch study and the benchmark all train through it):
loaders, the network, `fit` with its live curves, checkpoints and TensorBoard events after every epoch, the
test set once, and the run's files. Where it starts is mlp/resume.py's, its directory mlp/rundirs.py's, and
training over several processes mlp/distributed.py's.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mlp import checkpoint, data, hardware, plots, records
from mlp.board import open_board
from mlp.distributed import Checkpointer, setup_distributed
from mlp.evaluate import Views, predict
from mlp.loop import Trainer, fit, seed_everything
from mlp.nets import Config, build_net
from mlp.recipe import Recipe
from mlp.resume import Start, continue_from, start
from mlp.runconfig import RunConfig
from mlp.rundirs import interrupted, save_run
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


def check_selectable(recipe: Recipe):
    """A run keeps the weights of its best validated epoch: it needs a validation split to choose on."""
    if recipe.val_size == 0:
        raise ValueError("val_size=0 leaves nothing to validate on, and a run keeps the weights of its best "
                         "validated epoch; give val_size of at least 1 (the presets hold out 5,000)")


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
