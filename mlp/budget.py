"""Budgets in development-CPU seconds of training (the AVX2 CPU the targets are set on): what one is worth on
this CPU, and how many epochs of a network fit in it, from a measured epoch. The baselines' search
(tools/baseline_search.py) and the patch-size study's equal-time arm (mlp/study.py) set their epochs so."""
from __future__ import annotations

import math
import time

import torch

from mlp import data, hardware, records
from mlp.loop import Trainer, seed_everything
from mlp.nets import build_net


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


def local_seconds(budget: float, device="cpu") -> tuple[float, str]:
    """A budget of development-CPU seconds in this CPU's seconds, and the CPU's name; a CPU whose ratio was
    never measured is refused."""
    where = hardware.describe(torch.device(device))
    ratio = records.dev_cpu_ratio(where)
    if ratio is None:
        raise ValueError(f"no measured ratio of development-CPU seconds for this machine ({where}); budgets are "
                         f"set on the AVX2 or the AVX-512 CPU (mlp/records.py)")
    return budget / ratio, where


def epochs_within(budget_here: float, per_epoch: float, most: int | None = None) -> int:
    """Whole epochs that fit `budget_here` seconds (0 where not even one does), at most `most`."""
    fit = math.floor(budget_here / per_epoch)
    return fit if most is None else min(most, fit)
