"""`make search`: the recipe search of a family at a budget of development-CPU seconds (mlp/search.py), and what
follows it: the winner as a preset, and its seeds.

    python -m tools.search search cnn 600 --trials 32              # run trials until the study has 32 finished
    python -m tools.search search cnn 1800 --trials 16 --from 600  # a new study starts from the 600-s best
    python -m tools.search search cnn 600 --storage postgresql://user@host/db   # one study, several machines
    python -m tools.search status                                  # every study: trials, best, pruning's savings
    python -m tools.search adopt cnn 600 avx2                      # the best trial becomes seed 0 of cnn-600
    python -m tools.search seeds cnn 600 avx2 1 2 3 4              # its seeds 1-4 (5 in all)

A search continues where it stopped: interrupt it, run it again. `adopt` checks that the preset FAMILY-BUDGET (in
mlp/recipe.py's CHOSEN, the line `status` prints) is the best trial's model config and recipe: CPU training in
fp32 is deterministic, so its seed 0 is that trial, and is not trained twice.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mlp import records, results, search
from mlp.results import as_now, current_presets

ROOT = Path(__file__).resolve().parents[1]


def chosen_fields(family: str, record: dict) -> dict:
    """The fields of the base preset the record changed: the preset FAMILY-BUDGET's line in mlp/recipe.py."""
    now, base = as_now(record), current_presets()[search.BASE[family]]
    return {k: v for part in ("model", "recipe") for k, v in now[part].items() if v != base[part][k]}


def status(url=None, folder: Path = results.HERE, out=print):
    import optuna
    from optuna.trial import TrialState
    store = search.storage(url, folder)
    for summary in sorted(optuna.get_all_study_summaries(store), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        n = search.tally(study)
        spent, spared = search.saved_seconds(study)
        out(f"{study.study_name}: {n[TrialState.COMPLETE]} complete, {n[TrialState.PRUNED]} pruned, "
            f"{n[TrialState.FAIL]} failed (+{n['over_cap']} over the cap), {n[TrialState.RUNNING]} running; "
            f"{spent:.0f} development-CPU s trained, {spared:.0f} s spared by pruning")
        best = search.best_trial(study)
        if best is not None:
            rec = results.load(Path(folder) / best.user_attrs["record"])
            family, budget = study.study_name.rsplit("-", 1)
            out(f"  best: trial {best.number}, {100 * best.value:.2f} % validation ({best.user_attrs['record']})")
            out(f"  mlp/recipe.py CHOSEN: \"{family}-{budget}\": (\"{search.BASE[family]}\", "
                f"{chosen_fields(family, rec)!r}),")


def adopt(family: str, budget: int, tag: str, url=None, folder: Path = results.HERE):
    """Record the best trial as seed 0 of the preset FAMILY-BUDGET, after checking that the preset is it."""
    from mlp.recipe import PRESETS
    study = search.open_study(family, budget, url, folder)
    best, preset = search.best_trial(study), f"{family}-{budget}"
    if best is None:
        raise SystemExit(f"error: the study {study.study_name} has no complete trial; run the search first")
    if preset not in PRESETS:
        raise SystemExit(f"error: write the preset {preset!r} into mlp/recipe.py's CHOSEN first (python -m "
                         f"tools.search status prints its line)")
    rec = results.load(Path(folder) / best.user_attrs["record"])
    if as_now(rec) != current_presets()[preset] or rec["seed"] != 0:
        raise SystemExit(f"error: preset {preset!r} is not trial {best.number} ({best.user_attrs['record']}): model "
                         f"config or recipe differ; make it so, or train its seed 0 with `seeds`")
    target = Path(folder) / "runs" / f"{preset}-{tag}-seed0.json"
    if target.exists():
        raise SystemExit(f"error: {target} already holds a record")
    records.atomic_write(target, json.dumps(dict(rec, preset=preset, adopted_from=best.user_attrs["record"]),
                                            indent=2))
    print(f"wrote {target}: {preset} seed 0 = {best.user_attrs['record']}")


def seeds(family: str, budget: int, tag: str, which: list[int], force: bool = False):
    """Train seeds of the preset FAMILY-BUDGET (fp32), each kept as results/runs/FAMILY-BUDGET-TAG-seedS.json."""
    preset = f"{family}-{budget}"
    names = [f"{preset}-{tag}-seed{s}" for s in which]
    held = [n for n in names if (ROOT / "results" / "runs" / f"{n}.json").exists()]
    if held and not force:
        raise SystemExit(f"error: results/runs/{held[0]}.json already holds a record; give another TAG, or "
                         f"replace it with --force")
    for s, name in zip(which, names):
        out = ROOT / "runs" / name
        subprocess.run([sys.executable, "train.py", "--preset", preset, "--seed", str(s), "--precision", "fp32",
                        "--out", str(out.relative_to(ROOT)), "--quiet"], cwd=ROOT, check=True)
        results.keep_run(out, kind="runs", force=force)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", metavar="URL", help="a database all workers share (postgresql://, mysql://); "
                   "default: the journal file results/studies/search.journal")
    p.add_argument("--results", type=Path, default=results.HERE, help="the folder of records (default results/)")
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("status")
    for what in ("search", "adopt", "seeds"):
        s = sub.add_parser(what)
        s.add_argument("family", choices=search.FAMILIES)
        s.add_argument("budget", type=int, help="development-CPU seconds")
        if what == "search":
            s.add_argument("--trials", type=int, default=32, help="finished trials the study should have, across "
                           "every worker (default 32)")
            s.add_argument("--from", dest="warm_from", type=int, metavar="BUDGET",
                           help="a new study starts from the best trials of this budget's study")
            s.add_argument("--train-limit", type=int, help="smoke runs: the first N training images only")
            s.add_argument("--eval-limit", type=int, help="smoke runs: validate on the first N images only")
            s.add_argument("--probe-seconds", type=float, default=2.0, help="training timed per network and round")
            s.add_argument("--probe-rounds", type=int, default=2, help="rounds of a new network's timing beside "
                           "its family's reference (default 2)")
            s.add_argument("--runs", type=Path, default=ROOT / "runs", help="the trials' run directories")
            s.add_argument("--quiet", action="store_true", help="no progress bar")
        else:
            s.add_argument("tag", help="the run name's tag (e.g. avx2)")
        if what == "seeds":
            s.add_argument("seeds", type=int, nargs="+")
            s.add_argument("--force", action="store_true", help="replace existing records (and say so)")
    a = p.parse_args(argv)
    if a.what == "status":
        return status(a.storage, a.results)
    if a.budget <= 0:
        p.error(f"budget {a.budget}: give positive development-CPU seconds (the pages use 60, 600, 1800)")
    if a.what == "adopt":
        return adopt(a.family, a.budget, a.tag, a.storage, a.results)
    if a.what == "seeds":
        return seeds(a.family, a.budget, a.tag, a.seeds, a.force)
    if a.trials < 1:
        p.error("--trials must be at least 1")
    search.work(a.family, a.budget, a.trials, a.storage, a.results, warm_from=a.warm_from, progress=not a.quiet,
                runs=a.runs, train_limit=a.train_limit, eval_limit=a.eval_limit, probe_seconds=a.probe_seconds, probe_rounds=a.probe_rounds)


if __name__ == "__main__":
    main()
