"""Budgets in development-CPU seconds of training (the AVX2 CPU the targets are set on): what one is worth on
this CPU, and how many epochs of a network fit in it, from a measured epoch. The baselines' search
(tools/baseline_search.py) and the patch-size study's equal-time arm (mlp/study.py) set their epochs so.

A CPU's speed against the development CPU's is measured in the session that spends the budget (`calibrate`):
the AVX-512 CPU ran at 3.2x on one day and 1.9x on another, so a fixed ratio cannot carry a budget."""
from __future__ import annotations

import json
import math
import statistics
import time

import torch

from mlp import data, hardware, records
from mlp.loop import Trainer, seed_everything
from mlp.nets import build_net, config_from
from mlp.recipe import Recipe, get_preset

# The reference: an epoch of `quick` in fp32, whose seconds on the development CPU are its recorded runs'.
REFERENCE = "quick"
REFERENCE_RUNS = tuple(f"results/runs/quick-avx2-seed{s}.json" for s in range(3))


class Probe:
    """A stop signal for Trainer.fit_epoch, which reads it once after each step: requested `seconds` after the
    first step. It times the epoch's start (the loader's shuffle and augmentation, and the first step) apart
    from the steps after it."""

    def __init__(self, seconds: float):
        self.seconds, self.reads, self.made = seconds, [], time.perf_counter()

    @property
    def requested(self) -> bool:
        self.reads.append(time.perf_counter())
        return self.reads[-1] - self.reads[0] >= self.seconds


def seconds_per_epoch(model, recipe, seconds: float = 6.0, device="cpu", precision="fp32") -> float:
    """One epoch's training seconds here: its start, and the steps after it at the rate of `seconds` of them
    on the real data (after a warm-up epoch start and a second of steps). Repeat probes agree within ~15 %
    for LeNet's short steps, ~3 % for the CNN's."""
    seed_everything(0)
    dev = torch.device(device)
    trainer = Trainer(build_net(model), recipe, data.loaders(recipe, device=dev, eval_limit=recipe.batch_size), dev,
                      precision)
    trainer.fit_epoch(1, Probe(1.0))  # warm-up: first calls allocate and pick kernels
    probe = Probe(seconds)
    trainer.fit_epoch(2, probe)
    begin, steps = probe.reads[0] - probe.made, len(probe.reads) - 1  # (a small network may end its epoch)
    return begin + (probe.reads[-1] - probe.reads[0]) / steps * (len(trainer.train_iter) - 1)


def reference_epoch(root=records.ROOT) -> float:
    """The mean seconds of an epoch of `quick` (fp32, all the data) on the development CPU, over every epoch of
    its recorded runs; refused where a record is not of the preset as it is now (re-measure it then)."""
    model, recipe = get_preset(REFERENCE)
    now = dict(model=model.to_dict(), recipe=recipe.to_dict())
    seconds = []
    for name in REFERENCE_RUNS:
        r = json.loads((root / name).read_text())
        ran = dict(model=config_from(r["model"]).to_dict(), recipe=Recipe(**r["recipe"]).to_dict())
        if (ran != now or not r["hardware"].endswith(records.DEV_CPU) or r["precision"] != "fp32"
                or r.get("train_limit") or r.get("capped")):
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
    if where.endswith(records.DEV_CPU):
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
