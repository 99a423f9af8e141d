"""The speed table: each network's seconds per training epoch and per validation pass on this CPU, timed side
by side in interleaved rounds (A, B, C, A, B, C, ...), so that a slow spell of a shared host lands on every
network alike. A run's cost is computed from the development CPU's table (mlp/results.py), not read off its
wall clock. `make speed` writes results/speed/<cpu>.json; docs/speed.md says how to read it.

What sets a network's speed is its model config, batch size, augmentation, optimiser, weight averaging and
precision (`fingerprint`); its learning rate, schedule and epochs do not, so trials that differ only there share
one row.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from mlp import cpu, data, hardware, records
from mlp.evaluate import ONE, Views, evaluate_accuracy
from mlp.loop import Trainer, seed_everything
from mlp.nets import build_net
from mlp.results import SPEED_FIELDS, fingerprint

SCHEMA = 1
# A round is under load where the host stole more than this share of the CPU from us, or other processes used
# more than OTHERS of it: its timings are then not those of this CPU alone.
STEAL, OTHERS = 0.05, 0.10


class Probe:
    """A stop signal for Trainer.fit_epoch, read once after each step: requested `seconds` after the first step.
    It times the epoch's start (the loader's shuffle and augmentation, and the first step) apart from the steps
    after it."""

    def __init__(self, seconds: float):
        self.seconds, self.reads, self.made = seconds, [], time.perf_counter()

    @property
    def requested(self) -> bool:
        self.reads.append(time.perf_counter())
        return self.reads[-1] - self.reads[0] >= self.seconds


def epoch_seconds(trainer: Trainer, seconds: float) -> float:
    """One whole epoch's training seconds, from its start and `seconds` of its steps (after a warm-up)."""
    trainer.fit_epoch(1, Probe(min(1.0, seconds)))  # warm-up: first calls allocate and pick kernels
    probe = Probe(seconds)
    trainer.fit_epoch(2, probe)
    begin, steps = probe.reads[0] - probe.made, len(probe.reads) - 1
    if steps < 1:  # a one-step epoch: its start is the whole of it
        return begin
    return begin + (probe.reads[-1] - probe.reads[0]) / steps * (len(trainer.train_iter) - 1)


def eval_seconds(net, loader, views: Views, seconds: float, precision: str) -> float:
    """One validation pass's seconds over the whole validation split with `views`: the batches timed for about
    `seconds` (after a warm-up batch), scaled to all of them."""
    batches, n = list(loader), len(loader)
    evaluate_accuracy(net, batches[:1], precision=precision, views=views)
    timed, start = 0, time.perf_counter()
    while timed < n and (timed == 0 or time.perf_counter() - start < seconds):
        evaluate_accuracy(net, batches[timed:timed + 1], precision=precision, views=views)
        timed += 1
    return (time.perf_counter() - start) / timed * n


def time_network(model, recipe, precision: str = "fp32", seconds: float = 3.0, train_limit=None) -> dict:
    """A network's seconds per training epoch, per validation pass with its views and per one-view pass, here
    (`train_limit`: an epoch of that many images, and as many validation images, for smoke runs)."""
    seed_everything(0)
    dev = torch.device("cpu")
    trainer = Trainer(build_net(model), recipe, data.loaders(recipe, device=dev, train_limit=train_limit,
                                                                 eval_limit=train_limit), dev,
                      precision)
    train = epoch_seconds(trainer, seconds)
    views = Views.of(model)
    multi = eval_seconds(trainer.evaluated, trainer.val_iter, views, seconds / 2, precision)
    one = multi if views == ONE else eval_seconds(trainer.evaluated, trainer.val_iter, ONE, seconds / 4, precision)
    return dict(train_epoch_s=train, eval_s=multi, eval_one_s=one, steps=len(trainer.train_iter))


def stat(xs: list[float]) -> dict:
    return dict(median=statistics.median(xs), min=min(xs), max=max(xs), n=len(xs))


def measure(networks: dict[str, tuple], rounds: int = 5, seconds: float = 3.0, precision: str = "fp32",
            log=print, timer=time_network) -> dict:
    """Time every network once per round, in the same order each round, until `rounds` rounds were taken
    without load (at most twice as many in all). Medians come from the rounds without load where there are
    `rounds` of them, else from every round, and the table says it was measured under load."""
    taken, clean = [], 0
    while clean < rounds and len(taken) < 2 * rounds:
        before, own0 = cpu.stat_times(), cpu.own_seconds()
        times = {}
        for name, (model, recipe) in networks.items():
            times[name] = timer(model, recipe, precision, seconds)
        load = cpu.load_between(before, cpu.stat_times(), cpu.own_seconds() - own0)
        flagged = load["steal"] > STEAL or load["others"] > OTHERS
        clean += not flagged
        taken.append(dict(index=len(taken), order=list(networks), **load, under_load=flagged, networks=times))
        log(f"round {len(taken)}: steal {100 * load['steal']:.1f} %, others {100 * load['others']:.1f} %"
            + (" (under load: repeated)" if flagged else "") + "; "
            + ", ".join(f"{n} {t['train_epoch_s']:.1f}s" for n, t in times.items()))
    use = [r for r in taken if not r["under_load"]]
    under_load = len(use) < rounds
    use = taken if under_load else use
    table = {}
    for name, (model, recipe) in networks.items():
        rows = [r["networks"][name] for r in use]
        table[name] = dict(fingerprint=fingerprint(model.to_dict(), recipe.to_dict(), precision),
                           model=model.to_dict(), recipe={k: getattr(recipe, k) for k in SPEED_FIELDS},
                           precision=precision, steps=rows[0]["steps"], views=Views.of(model).count,
                           **{k: stat([t[k] for t in rows]) for k in ("train_epoch_s", "eval_s", "eval_one_s")})
    return dict(schema=SCHEMA, cpu=cpu.identity(), key=cpu.key(cpu.identity()), hardware=hardware.describe("cpu"),
                threads=torch.get_num_threads(), torch=torch.__version__, git_commit=records.git_commit(),
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), seconds_per_probe=seconds, rounds_wanted=rounds,
                rounds_used=[r["index"] for r in use], under_load=under_load,
                load_limits=dict(steal=STEAL, others=OTHERS), rounds=taken, networks=table)


def path_for(folder: Path, key: str) -> Path:
    return Path(folder) / f"{key}.json"


def merge(old: dict | None, new: dict) -> dict:
    """A table measured now, with the networks an earlier table of the same CPU had and this one did not time
    (each row keeps the rounds it came from: `measured`)."""
    for row in new["networks"].values():
        row["measured"] = new["date"]
    if old and old.get("schema") == SCHEMA:
        for name, row in old["networks"].items():
            new["networks"].setdefault(name, dict(row, measured=row.get("measured", old["date"])))
    return new


def write(folder: Path, table: dict) -> Path:
    """Write the table into `folder`/<cpu>.json (merged with what it held), atomically."""
    path = path_for(folder, table["key"])
    os.makedirs(path.parent, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else None
    records.atomic_write(path, json.dumps(merge(old, table), indent=1) + "\n")
    return path


def relative_row(model, recipe, reference: tuple, ref_name: str, ref_row: dict, precision: str = "fp32", rounds: int = 2,
                 seconds: float = 2.0, train_limit=None, timer=time_network) -> dict:
    """A network's row as the development CPU's table would hold it, measured here: timed beside `reference`
    (model, recipe), a network that table has (`ref_row`), in `rounds` interleaved rounds, each of its times
    scaled by the reference's (seconds there over seconds here, same round). A search costs its trials so on
    any CPU, before they train; the ratio assumes the two scale alike between CPUs (give a reference of the
    same family), so such costs are provisional until `make speed` times the network itself."""
    mine, theirs = [], []
    for _ in range(rounds):
        mine.append(timer(model, recipe, precision, seconds, train_limit=train_limit))
        theirs.append(timer(*reference, precision, seconds, train_limit=train_limit))
    ratios = {k: [m[k] / t[k] for m, t in zip(mine, theirs)] for k in ("train_epoch_s", "eval_s", "eval_one_s")}
    out = dict(fingerprint=fingerprint(model.to_dict(), recipe.to_dict(), precision), model=model.to_dict(),
               recipe={k: getattr(recipe, k) for k in SPEED_FIELDS}, precision=precision, steps=mine[0]["steps"],
               views=Views.of(model).count)
    for k, rs in ratios.items():
        out[k] = dict(median=statistics.median(rs) * ref_row[k]["median"], n=rounds)
    out["via"] = dict(ref_name=ref_name, reference=ref_row["fingerprint"], ratios={k: statistics.median(v) for k, v in ratios.items()},
                      cpu=cpu.key(cpu.identity()), rounds=rounds, seconds=seconds, train_limit=train_limit,
                      date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    return out
