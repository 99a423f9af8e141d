"""Render the result tables of README.md and docs/*.md from the JSON files in results/ (no hand-typed
numbers), and draw the figures beside them.

    python -m tools.render           # rewrite the marked blocks
    python -m tools.render --check   # exit 1 if a page is out of date
    python -m tools.render --record runs/NAME   # keep a `make run` as results/make_run_cpu.json (+ curves)
    python -m tools.render --record-run runs/A runs/B   # keep train.py runs as results/runs/A.json ...

A block is the text between `<!-- results:NAME -->` and `<!-- /results:NAME -->`; NAME picks the renderer
(the tables: tools/tables.py and tools/equal_cost.py; the figures: tools/figures.py). What the tables select
and how they judge is mlp/results.py's, which the searches and the study use too.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from mlp import records
from mlp.results import HERE, ResultsError, keep_run, load
from tools import equal_cost, figures, studies, tables

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the pages with rendered blocks

RENDERERS = {
    "frontier": tables.render_frontier, "make_run": tables.render_make_run, "bench": tables.render_bench,
    "bench_gpu": tables.render_bench_gpu, "bench_avx512": lambda folder: tables.render_bench(folder, "bench_cpu_avx512.json"),
    "profile": tables.render_profile, "muon_ns": tables.render_muon_ns, "live_overhead": tables.render_live_overhead,
    "presets": tables.render_presets, "presets_all": lambda folder: tables.render_presets(folder, True, True),
    "seed_curve": tables.render_seed_curve, "best_probe": tables.render_best_probe,
    "model_card": tables.render_model_card, "model_classes": tables.render_model_classes,
    "targets": equal_cost.render_targets, "baselines": equal_cost.render_baselines,
    "baselines_summary": equal_cost.render_summary, "baseline_search": equal_cost.render_baseline_search,
    "patch_study": equal_cost.render_patch_study, "speed": equal_cost.render_speed,
    "patch_study_gpu": lambda folder: equal_cost.render_patch_study(folder, "patch_study_gpu.json"),
    "studies": studies.render_studies,
}
# Each figure, drawn where a page holds its block.
FIGURES = {"frontier": lambda folder: figures.plot_frontier(folder, folder / "frontier.png"),
           "baselines": lambda folder: figures.plot_baselines(folder, folder / "baselines.png"),
           "patch_study": lambda folder: figures.plot_patch_study(folder, "patch_study"),
           "patch_study_gpu": lambda folder: figures.plot_patch_study(folder, "patch_study_gpu"),
           "studies": studies.plot_studies}


def render(text: str, folder: Path = HERE) -> str:
    def block(match):
        name = match.group(1)
        if name not in RENDERERS:
            raise ResultsError(f"README block results:{name} has no renderer; known: {sorted(RENDERERS)}")
        return f"<!-- results:{name} -->\n{RENDERERS[name](folder)}\n<!-- /results:{name} -->"
    return re.sub(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", block, text, flags=re.S)


def record(run: Path, folder: Path = HERE, force: bool = False):
    """Keep a `make run` directory: results/make_run_cpu.json (+ curves), and the run among its preset's."""
    metrics = load(run / "metrics.json", ("test_acc", "val_acc", "history"))
    metrics.update(load(run / "wall.json", ("notebook_wall_seconds",)), command=f"make run NAME={run.name}")
    records.atomic_write(folder / "make_run_cpu.json", json.dumps(metrics, indent=2))
    keep_run(run, folder, force=force)
    records.atomic_write(folder / "curves_make_run_cpu.png", (run / "curves.png").read_bytes())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readme", nargs="+", default=[str(p) for p in PAGES],
                   help="the Markdown files whose marked blocks to render (default: README.md and docs/*.md)")
    p.add_argument("--check", action="store_true")
    p.add_argument("--results", default=str(HERE), help="the folder of recorded data (default: results/)")
    p.add_argument("--record-run", metavar="RUN_DIR", nargs="+", default=[],
                   help="keep train.py runs' metrics.json as results/runs/<name>.json, then render")
    p.add_argument("--record-trial", metavar="RUN_DIR", nargs="+", default=[],
                   help="keep train.py runs that were tried and not adopted as results/trials/<name>.json")
    p.add_argument("--record", metavar="RUN_DIR", help="copy a make-run directory's metrics.json + wall.json "
                   "into results/make_run_cpu.json and its curves.png beside it, then render")
    p.add_argument("--force", action="store_true", help="with --record*: replace a record of the same name")
    args = p.parse_args(argv)
    folder = Path(args.results)
    try:
        if args.record:
            record(Path(args.record), folder, args.force)
        for run in args.record_run:
            keep_run(Path(run), folder, force=args.force)
        for run in args.record_trial:
            keep_run(Path(run), folder, kind="trials", force=args.force)
        pages = {Path(f): Path(f).read_text() for f in args.readme}
        rendered = {f: render(text, folder) for f, text in pages.items()}  # all or nothing: no file half-updated
    except ResultsError as e:
        sys.exit(f"error: {e}")
    stale = [f for f in pages if rendered[f] != pages[f]]
    if args.check:
        sys.exit(f"out of date: {', '.join(map(str, stale))}; run python -m tools.render" if stale else 0)
    for f in stale:
        records.atomic_write(f, rendered[f])
        print(f"updated {f}")
    for name, draw in FIGURES.items():
        if any(f"<!-- results:{name} -->" in t for t in pages.values()) and (
                not name.startswith("patch_study") or (folder / f"{name}.json").exists()):
            draw(folder)


if __name__ == "__main__":
    main()
