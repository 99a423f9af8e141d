"""TensorBoard event files in a run directory (`make tensorboard` serves runs/): the live figure's scalars at the
optimiser steps where the figure draws them, validation after every epoch, and at the end the run's settings
and results as hparams, so that TensorBoard's HParams tab compares runs.

Tags: train/loss, train/acc (about five points an epoch), val/acc_1view (every epoch), val/acc (the model's
views, the epochs that were validated), and hparam/val_acc, hparam/test_acc, hparam/train_seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

from mlp.plots import validation_points


class Board:
    """One run's event writer. Step = optimiser steps since the run began: epoch x (fractional, as the figure
    draws it) is step round(x * steps_per_epoch). A resumed run hides the events written after the epoch it
    continues from (a resume from best.pt redoes later epochs), so each step holds one value."""

    def __init__(self, run_dir: Path, steps_per_epoch: int, resumed_at: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # (imports tensorboard: only where a run writes)
        self.n = steps_per_epoch
        self.writer = SummaryWriter(str(run_dir), purge_step=resumed_at * self.n + 1 if resumed_at else None)

    def step(self, x: float) -> int:
        return round(x * self.n)

    def epoch(self, r: dict):
        """An epoch's record: its training points, then its validation points."""
        for x, loss, acc in r["points"]:
            self.writer.add_scalar("train/loss", loss, self.step(x))
            self.writer.add_scalar("train/acc", acc, self.step(x))
        for tag, v in zip(("val/acc_1view", "val/acc"), validation_points(r)):
            if v is not None:  # None: an epoch not validated on every view (Recipe.validates)
                self.writer.add_scalar(tag, v, self.step(r["epoch"]))
        self.writer.flush()

    def results(self, metrics: dict):
        """The finished run: its settings as hparams, its results as their metrics. (TensorBoard keeps the first
        hparams a run directory holds: a finished run extended by a resume shows the settings it was made with;
        metrics.json lists the extension.)"""
        from torch.utils.tensorboard.summary import hparams
        results = {"hparam/val_acc": metrics["val_acc"], "hparam/test_acc": metrics["test_acc"],
                   "hparam/train_seconds": metrics["train_seconds"]}
        for summary in hparams(hparams_of(metrics), results):
            self.writer.file_writer.add_summary(summary)
        step = self.step(metrics["epochs"]) + 1  # after the last epoch's points: a resume hides them as it hides those
        for tag, v in results.items():
            self.writer.add_scalar(tag, v, step)
        self.writer.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.writer.close()


def open_board(run_dir: Path, steps_per_epoch: int, resumed_at: int, say) -> Board | None:
    """The run's event writer, or None (and one line saying so) where the tensorboard package is missing: a
    machine with torch alone (the GPU programme's) still trains, without event files."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        say("no TensorBoard event files: the tensorboard package is not installed (pip install tensorboard)")
        return None
    return Board(run_dir, steps_per_epoch, resumed_at)


def hparams_of(metrics: dict) -> dict:
    """The settings a run was made with, as TensorBoard's hparams take them (bool, int, float, str): the
    preset, seed, precision, hardware, and every model and recipe field (lists as JSON)."""
    out = {k: metrics[k] for k in ("preset", "seed", "precision", "hardware", "world_size") if k in metrics}
    for part in ("model", "recipe"):
        for k, v in metrics[part].items():
            out[f"{part}.{k}"] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
    return out
