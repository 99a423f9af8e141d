"""Budgets in development-CPU seconds of training (the AVX2 CPU the targets are set on): what one is worth on
this CPU, and how many epochs of a network fit in it, from a measured epoch. The baselines' search
(tools/baseline_search.py) and the patch-size study's equal-time arm (mlp/study.py) set their epochs so.

A CPU's speed against the development CPU's is measured in the session that spends the budget (`calibrate`):
the AVX-512 CPU ran at 3.2x on one day and 1.9x on another, so a fixed ratio cannot carry a budget."""
from __future__ import annotations

import json
import math
import statistics

import torch

from mlp import cpu, data, hardware, results, speed
from mlp.loop import Trainer, seed_everything
from mlp.nets import build_net
from mlp.recipe import get_preset

# The reference: an epoch of `quick` in fp32, whose seconds on the development CPU are its recorded runs'.
REFERENCE = "quick"
REFERENCE_RUNS = tuple(f"results/runs/quick-avx2-seed{s}.json" for s in range(3))


def seconds_per_epoch(model, recipe, seconds: float = 6.0, device="cpu", precision="fp32") -> float:
    """One epoch's training seconds here, from its start and `seconds` of its steps on the real data, after a
    warm-up (mlp/speed.epoch_seconds). Repeat probes agree within ~15 % for LeNet's short steps, ~3 % for the
    CNN's: the speed table's rounds are the better measure where a network is in it."""
    seed_everything(0)
    dev = torch.device(device)
    trainer = Trainer(build_net(model), recipe, data.loaders(recipe, device=dev, eval_limit=recipe.batch_size), dev,
                      precision)
    return speed.epoch_seconds(trainer, seconds)


def reference_epoch(root=results.ROOT) -> float:
    """The mean seconds of an epoch of `quick` (fp32, all the data) on the development CPU, over every epoch of
    its recorded runs; refused where a record is not of the preset as it is now (re-measure it then)."""
    seconds = []
    for name in REFERENCE_RUNS:
        r = json.loads((root / name).read_text())
        if r["preset"] != REFERENCE or not results.is_current(r) or not cpu.is_dev(r["hardware"]) \
                or r["precision"] != "fp32":
            raise ValueError(f"{name} is not a whole fp32 run of today's {REFERENCE!r} on the development CPU: train "
                             f"its seeds there again (make seeds PRESET={REFERENCE} SEEDS=\"0 1 2\" TAG=avx2 "
                             f"ARGS='--precision fp32') before a budget can be converted")
        seconds += [e["seconds"] for e in r["history"]]
    return statistics.mean(seconds)


def calibrate(device="cpu", log=print) -> dict:
    """Development-CPU seconds per second of this CPU, now: the reference epoch's seconds there over one whole
    epoch of it here (after a warm-up). 1 on the development CPU itself, without measuring."""
    dev = torch.device(device)
    where = hardware.describe(dev)
    if dev.type != "cpu":
        raise ValueError(f"a budget of development-CPU seconds is a CPU's, not {where}'s: give epochs instead")
    there = reference_epoch()
    if cpu.is_dev(where):
        here = None
        ratio = 1.0
    else:
        here = seconds_per_epoch(*get_preset(REFERENCE), seconds=math.inf, device=device)
        ratio = there / here
    out = dict(ratio=ratio, hardware=where, reference=REFERENCE, epoch_here=here, epoch_dev_cpu=there,
               reference_runs=list(REFERENCE_RUNS))
    log(f"calibration: an epoch of {REFERENCE} takes {there:.1f} s on the development CPU"
        + (f" and {here:.1f} s here ({where}): {ratio:.2f} development-CPU seconds per second" if here else
           " (this CPU): budgets are its seconds"))
    return out


def epochs_within(budget_here: float, per_epoch: float, most: int | None = None) -> int:
    """Whole epochs that fit `budget_here` seconds (0 where not even one does), at most `most`."""
    fit = math.floor(budget_here / per_epoch)
    return fit if most is None else min(most, fit)


def fitting_epochs(model, recipe, budget: float, most: int | None = None, folder=results.HERE) -> int | None:
    """The most whole epochs of a network whose cost (training and its validation passes, by the development
    CPU's speed table: mlp/results.cost) fits `budget` development-CPU seconds; None where the table has not
    timed the network (then probe it and convert through `calibrate`, a provisional cost)."""
    dev = results.dev_table(results.speed_tables(folder))
    fp = results.fingerprint(model.to_dict(), recipe.to_dict(), "fp32")
    row = dev and results.by_fingerprint(dev).get(fp)
    return results.epochs_within(row, recipe.to_dict(), budget, most) if row else None
