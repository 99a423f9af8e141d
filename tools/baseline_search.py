"""The baselines programme (docs/baselines.md): for each baseline and budget, a short search of recipes chosen on
validation (seed 0, kept as trials), whose winner becomes the preset NAME-SECONDS (mlp/recipe.py) that `make
seeds` trains three times. Budgets are development-CPU seconds of training; elsewhere they are converted at
the ratio measured at the start of the command (mlp/budget.calibrate, kept in each record it writes), and
each candidate's epochs are those that fit, from its seconds per epoch measured here first. One training at a
time; each trial is recorded as it finishes, and a recorded one is not trained again.

    python -m tools.baseline_search plan               # per baseline and budget: trials recorded, the choice, seeds
    python -m tools.baseline_search search cnn 600     # train the candidates not yet recorded, then say the choice
    python -m tools.baseline_search adopt cnn 600 avx512   # the chosen trial is seed 0 of preset cnn-600
    python -m tools.baseline_search seeds cnn 600 avx512 1 2   # and seeds 1, 2 (make seeds, calibrated)

`adopt` checks that the preset NAME-SECONDS (written into mlp/recipe.py from the choice) is the chosen trial's
model config and recipe: CPU training is deterministic, so its seed 0 is that trial, and is not trained twice.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mlp import records, results
from mlp.results import as_now, current_presets

ROOT = Path(__file__).resolve().parents[1]
TRIALS = ROOT / "results" / "trials"
BUDGETS = {"softmax": (60, 600), "d2l-mlp": (60, 600), "lenet": (60, 600, 1800), "cnn": (60, 600, 1800)}
# softmax regression and the d2l MLP converge long before the 1,875 and 470 epochs 600 s holds; LeNet at
# 1,800 s (~320 epochs) is not capped: a cap of 100 would make that cell its 600-s one again
MAX_EPOCHS = {"softmax": 100, "d2l-mlp": 100}
# What each search tries (--set overrides of the base preset, mlp/recipe.py), epochs aside: the book's recipe,
# then what the MLP presets learned (AdamW or Nesterov momentum, a cosine schedule; shifts and flips in training
# with their evaluation views). The CNN's width follows the budget: at 60 s 8 channels fit one epoch, 6 two.
NO_AUG = {"augment": False, "flip_tta": False, "shift_tta": 0}
NESTEROV = {"optimizer": "nesterov", "lr": 0.05, "weight_decay": 5e-4, "label_smoothing": 0.0}
CANDIDATES = {
    "softmax": {"book": {}, "sgd-cos": {"schedule": "cosine", "lr": 0.2},
                "adamw": {"optimizer": "adamw", "lr": 3e-3, "schedule": "cosine", "weight_decay": 1e-4}},
    "d2l-mlp": {"book": {}, "nesterov": {"optimizer": "nesterov", "lr": 0.05, "schedule": "cosine",
                                         "weight_decay": 5e-4},
                "adamw": {"optimizer": "adamw", "lr": 2e-3, "schedule": "cosine", "weight_decay": 0.05},
                "adamw-aug": {"optimizer": "adamw", "lr": 2e-3, "schedule": "cosine", "weight_decay": 0.05,
                              "augment": True, "shift": 1, "flip_tta": True}},
    "lenet": {"book": {}, "adamw": {"optimizer": "adamw", "lr": 3e-3, "schedule": "cosine", "weight_decay": 0.01},
              "adamw-aug": {"optimizer": "adamw", "lr": 3e-3, "schedule": "cosine", "weight_decay": 0.01,
                            "augment": True, "shift": 1, "flip_tta": True}},
    ("cnn", 60): {"w8": {"width": 8}, "w8-noaug": {"width": 8, **NO_AUG},
                  "w8-nesterov": {"width": 8, **NESTEROV}, "w8-lr1e-2": {"width": 8, "lr": 0.01},
                  # one epoch of 8 channels spends half the budget and two do not fit: 6 channels fit two
                  "w6-lr1e-2": {"width": 6, "lr": 0.01}},
    ("cnn", 600): {"w16": {"width": 16}, "w24": {}, "w12": {"width": 12}, "w16-noaug": {"width": 16, **NO_AUG},
                   "w16-nesterov": {"width": 16, **NESTEROV}},
    ("cnn", 1800): {"w16": {"width": 16}, "w24": {}, "w32": {"width": 32}, "w24-nesterov": NESTEROV},
}


def candidates(arch: str, budget: int) -> dict[str, dict]:
    return CANDIDATES.get((arch, budget)) or CANDIDATES[arch]


def trial_name(arch: str, budget: int, candidate: str) -> str:
    return f"bl-{arch}-{budget}-{candidate}"


def load_trials(arch: str, budget: int, folder: Path | None = None) -> dict[str, dict]:
    """The recorded trials of a search, by name: each candidate's, and its refits ("NAME@Nep")."""
    folder = folder or TRIALS
    out = {}
    for name in candidates(arch, budget):
        for f in [folder / f"{trial_name(arch, budget, name)}.json",
                  *sorted(folder.glob(f"{trial_name(arch, budget, name)}@*ep.json"))]:
            if f.exists():
                out[f.stem.removeprefix(trial_name(arch, budget, ""))] = json.loads(f.read_text())
    return out


def within(t: dict, budget: int, tables: list[dict] | None = None) -> bool:
    """Whether a trial's cost (mlp/results.cost) fits its budget: no margin."""
    c = results.cost(t, results.speed_tables() if tables is None else tables)
    return c is not None and c.seconds <= budget


def choice(trials: dict[str, dict], budget: int | None = None, tables: list[dict] | None = None) -> str | None:
    """The candidate validation chose (its best epoch's validation accuracy) among those whose cost fits the
    budget; the test set is not read."""
    tables = results.speed_tables() if tables is None else tables
    fair = {n: t for n, t in trials.items() if budget is None or within(t, budget, tables)}
    return max(fair, key=lambda n: fair[n]["val_acc"]) if fair else None


def calibrated() -> dict:
    from mlp import budget
    try:
        return budget.calibrate()
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")


def keep(run: Path, kind: str, calibration: dict, force: bool = False):
    """Record a train.py run (results/KIND/NAME.json) with the calibration its budget was converted at."""
    results.keep_run(run, kind=kind, force=force, calibration=calibration)  # (no rendering: runs after would be -dirty)


def search(arch: str, seconds: int):
    from mlp import budget
    from mlp.recipe import get_preset
    cal, tables = calibrated(), results.speed_tables()
    here, where = seconds / cal["ratio"], cal["hardware"]
    done = load_trials(arch, seconds)
    for name, overrides in candidates(arch, seconds).items():
        tried = [t for n, t in done.items() if n == name or n.startswith(f"{name}@")]
        if any(within(t, seconds, tables) for t in tried):
            continue
        model, recipe = get_preset(arch, **overrides)
        epochs = budget.fitting_epochs(model, recipe, seconds, MAX_EPOCHS.get(arch))
        if epochs is not None:
            how = "the development CPU's speed table"
        else:  # not timed there: a probe here, converted at this session's calibration (provisional)
            per_epoch = budget.seconds_per_epoch(model, recipe)
            epochs, how = budget.epochs_within(here, per_epoch, MAX_EPOCHS.get(arch)), f"a probe ({per_epoch:.1f} s here)"
        if epochs < 1:
            print(f"{arch} {seconds} s {name}: not even one epoch fits the budget (by {how}); not trained", flush=True)
            continue
        if tried and epochs >= min(t["epochs"] for t in tried):
            print(f"{arch} {seconds} s {name}: its recorded run is over the budget, and {how} fits no fewer than "
                  f"its {min(t['epochs'] for t in tried)} epochs; not trained again", flush=True)
            continue
        name = f"{name}@{epochs}ep" if tried else name
        print(f"{arch} {seconds} s {name}: {epochs} epochs fit (by {how}; {where})", flush=True)
        sets = {**overrides, **({"val_every": epochs} if arch == "cnn" else {})}
        out = ROOT / "runs" / trial_name(arch, seconds, name)
        cmd = [sys.executable, "train.py", "--preset", arch, "--epochs", str(epochs), "--precision", "fp32",
               "--seed", "0", "--out", str(out.relative_to(ROOT)), "--quiet"]
        cmd += [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
        subprocess.run(cmd, cwd=ROOT, check=True)
        keep(out, "trials", cal)
    plan(arch, seconds)


def seeds(arch: str, budget: int, tag: str, which: list[int], force: bool = False):
    """Train seeds of the preset ARCH-BUDGET as `make seeds` does, each record carrying this session's
    calibration (its seconds are then converted as its seed 0's were); an existing record is refused."""
    preset = f"{arch}-{budget}"
    names = [f"{preset}-{tag}-seed{s}" for s in which]
    held = [n for n in names if (ROOT / "results" / "runs" / f"{n}.json").exists()]
    if held and not force:
        raise SystemExit(f"error: results/runs/{held[0]}.json already holds a record; give another TAG, or "
                         f"replace it with --force")
    cal = calibrated()
    for s, name in zip(which, names):
        out = ROOT / "runs" / name
        subprocess.run([sys.executable, "train.py", "--preset", preset, "--seed", str(s), "--precision", "fp32",
                        "--out", str(out.relative_to(ROOT)), "--quiet"], cwd=ROOT, check=True)
        keep(out, "runs", cal, force)


def adopt(arch: str, budget: int, tag: str, folder: Path = ROOT / "results"):
    """Record the chosen trial as seed 0 of the preset `arch-budget`, after checking that the preset is it."""
    from mlp.recipe import PRESETS
    trials = load_trials(arch, budget)
    best, preset = choice(trials, budget), f"{arch}-{budget}"
    if best is None:
        raise SystemExit(f"error: no trial of {arch} at {budget} s is recorded; run the search first")
    if preset not in PRESETS:
        raise SystemExit(f"error: write the preset {preset!r} into mlp/recipe.py first (the choice: {best!r})")
    t = trials[best]
    if as_now(t) != current_presets()[preset] or t["seed"] != 0:
        raise SystemExit(f"error: preset {preset!r} is not the chosen trial {trial_name(arch, budget, best)!r} "
                         f"(model config or recipe differ); make it so, or train its seed 0 with make seeds")
    target = folder / "runs" / f"{preset}-{tag}-seed0.json"
    if target.exists():
        raise SystemExit(f"error: {target} already holds a record")
    records.atomic_write(target, json.dumps(dict(t, preset=preset, adopted_from=f"trials/"
                                                 f"{trial_name(arch, budget, best)}.json"), indent=2))
    print(f"wrote {target}: {preset} seed 0 = {trial_name(arch, budget, best)}")


def chosen_fields(arch: str, trial: dict) -> dict:
    """The fields of the base preset the trial changed (epochs included): the preset NAME-SECONDS's definition."""
    now, base = as_now(trial), current_presets()[arch]
    return {k: v for part in ("model", "recipe") for k, v in now[part].items() if v != base[part][k]}


def plan(arch: str | None = None, budget: int | None = None):
    tables = results.speed_tables()
    for a, budgets in BUDGETS.items():
        for b in budgets:
            if (arch and a != arch) or (budget and b != budget):
                continue
            trials = load_trials(a, b)
            best = choice(trials, b, tables)
            print(f"{a} at {b} s: {len(trials)} of {len(candidates(a, b))} candidates recorded" +
                  (f"; validation chooses {best!r} ({100 * trials[best]['val_acc']:.2f} %, "
                   f"{trials[best]['epochs']} epochs)" if best else ""))
            for n, t in trials.items():
                c = results.cost(t, tables)
                print(f"  {n:14s} val {100 * t['val_acc']:.2f} %  {t['epochs']:3d} epochs  "
                      f"{t['train_seconds']:6.0f} s  {t['hardware']}  cost {c.mark if c else ''}"
                      f"{c.seconds if c else float('nan'):.0f} s" + ("" if within(t, b, tables) else "  OVER BUDGET"))
            if best:
                print(f"  mlp/recipe.py CHOSEN: \"{a}-{b}\": (\"{a}\", {chosen_fields(a, trials[best])!r}),")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("plan")
    for what in ("search", "adopt", "seeds"):
        s = sub.add_parser(what)
        s.add_argument("arch", choices=sorted(BUDGETS))
        s.add_argument("budget", type=int)
        if what != "search":
            s.add_argument("tag", help="the run name's tag, as make seeds' TAG (e.g. avx512, avx2)")
        if what == "seeds":
            s.add_argument("seeds", type=int, nargs="+")
            s.add_argument("--force", action="store_true", help="replace existing records (and say so)")
    args = p.parse_args(argv)
    if args.what == "plan":
        return plan()
    if args.budget not in BUDGETS[args.arch]:
        p.error(f"{args.arch} is measured at {BUDGETS[args.arch]} development-CPU seconds, not {args.budget}")
    if args.what == "adopt":
        return adopt(args.arch, args.budget, args.tag)
    if args.what == "seeds":
        return seeds(args.arch, args.budget, args.tag, args.seeds, args.force)
    search(args.arch, args.budget)


if __name__ == "__main__":
    main()
