"""A run's directory: naming a new one, finding the newest, refusing one that holds another run, and the files a
finished run leaves there (model.pt, curves.png, metrics.json)."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from mlp import checkpoint, hardware, plots, records
from mlp.loop import best_record
from mlp.recipe import PRESETS
from model import count_params

RUN_FILES = ("run.json", "last.pt", "best.pt", "model.pt", "metrics.json", "curves.png")  # what a run writes


KEPT_FILES = RUN_FILES[1:]  # what is worth keeping: run.json alone is a run that never finished an epoch


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


def refuse_a_used_directory(out: Path):
    """A fresh run never writes beside another run's files (its best.pt would pass for this run's). A run that
    stopped before its first checkpoint (bad data, settings, a diverged first epoch) left only run.json: a new
    run may start there."""
    found = [f for f in KEPT_FILES if (out / f).exists()]
    if found:
        raise ValueError(f"run directory {out} already holds a run ({', '.join(found)}). Continue that run with "
                         f"`python train.py --resume {out}` (notebook: resume = True), or choose another output "
                         f"directory (--out / out_dir); delete it yourself if it is no longer wanted")


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
