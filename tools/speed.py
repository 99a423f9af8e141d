"""`make speed`: the speed table of this CPU (mlp/speed.py) for every network the pages compare: the all-MLP
presets, the patch study's networks (`quick` at K = 2 and 7), each baseline's preset per budget and, with
--candidates, every network the searches recorded (results/trials/search-*.json, and bl-*.json from the
hand-named searches before the engine). A benchmark, not a test.

    python -m tools.speed                      # -> results/speed/<cpu>.json, five clean rounds
    python -m tools.speed --only quick cnn-600 --rounds 5
    python -m tools.speed --candidates         # the searches' networks too (a longer table)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlp import records, speed
from mlp.nets import config_from
from mlp.recipe import PRESETS, Recipe, get_preset

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "speed"
MLP_PRESETS = ("sprint", "quick", "long")
STUDY_PATCHES = (2, 7)  # the patch study's other networks (`quick` at K=4 is the preset)


def networks(candidates: bool = False, trials: Path = ROOT / "results" / "trials") -> dict[str, tuple]:
    """Name -> (model config, recipe) of every network to time, one per speed fingerprint."""
    nets = {name: get_preset(name) for name in MLP_PRESETS}
    nets |= {f"quick-k{k}": get_preset("quick", patch=k) for k in STUDY_PATCHES}
    nets |= {name: get_preset(name) for name in PRESETS if name.rsplit("-", 1)[-1].isdigit()}
    if candidates:
        for f in sorted([*trials.glob("bl-*.json"), *trials.glob("search-*.json")]):
            t = json.loads(f.read_text())
            nets.setdefault(f.stem, (config_from(t["model"]), Recipe(**t["recipe"])))
    seen, out = set(), {}
    for name, (model, recipe) in nets.items():
        fp = speed.fingerprint(model.to_dict(), recipe.to_dict(), "fp32")
        if fp not in seen:
            seen.add(fp)
            out[name] = (model, recipe)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="rounds without load wanted (at least 5 for the pages)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds of training steps timed per network and round")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="time only these networks")
    ap.add_argument("--candidates", action="store_true", help="also every network the searches recorded")
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the tables (default results/speed/)")
    ap.add_argument("--train-limit", type=int, help="smoke runs: only the first N training images")
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.seconds <= 0:
        ap.error("--rounds must be at least 1 and --seconds positive")
    nets = networks(a.candidates)
    if a.only:
        unknown = sorted(set(a.only) - set(nets))
        if unknown:
            ap.error(f"unknown network(s) {unknown}: choose from {sorted(nets)}")
        nets = {n: nets[n] for n in a.only}
    records.git_commit()  # read now: a commit made while it measures is not credited with its numbers
    timer = speed.time_network
    if a.train_limit:
        def timer(model, recipe, precision, seconds):
            return speed.time_network(model, recipe, precision, seconds, train_limit=a.train_limit)
    table = speed.measure(nets, rounds=a.rounds, seconds=a.seconds, timer=timer)
    table["command"] = "python -m tools.speed " + " ".join(argv if argv is not None else sys.argv[1:])
    table["train_limit"] = a.train_limit
    path = speed.write(a.out, table)
    print(f"wrote {path}" + (" (measured under load: see its rounds)" if table["under_load"] else ""))
    for name, row in table["networks"].items():
        print(f"  {name:>16}: {row['train_epoch_s']['median']:7.2f} s/epoch (±{row['train_epoch_s']['max'] - row['train_epoch_s']['min']:.2f}), "
              f"validation {row['eval_s']['median']:5.2f} s ({row['views']} views), one view {row['eval_one_s']['median']:5.2f} s")


if __name__ == "__main__":
    main()
