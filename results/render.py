"""Render the result tables of README.md and BENCHMARKS.md from the JSON files in results/ (no hand-typed
numbers).

    python results/render.py           # rewrite the marked blocks
    python results/render.py --check   # exit 1 if a page is out of date
    python results/render.py --record runs/NAME   # keep a `make run` as results/make_run_cpu.json (+ curves)

A block is the text between `<!-- results:NAME -->` and `<!-- /results:NAME -->`; NAME picks the renderer.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


class ResultsError(ValueError):
    pass


def load(path: Path, required: tuple[str, ...]) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path} is missing; re-create it with the command named in README.md")
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not valid JSON ({e}); re-create it with the command that wrote it")
    missing = [k for k in required if k not in data]
    if missing:
        raise ResultsError(f"{path} lacks {missing}; it was not written by this repo's train.py/make run/bench.py")
    return data


def pct(x):
    return "n/a" if x is None else f"{100 * x:.2f} %"


def render_make_run(folder: Path) -> str:
    m = load(folder / "make_run_cpu.json", ("test_acc", "val_acc", "best_epoch", "epochs", "train_seconds",
                                             "notebook_wall_seconds", "hardware", "precision", "params",
                                             "torch", "git_commit"))
    rows = [("test accuracy (10,000 test images, evaluated once)", pct(m["test_acc"])),
            (f"validation accuracy (model selection; best of {m['epochs']} epochs: epoch {m['best_epoch']})",
             pct(m["val_acc"])),
            ("training time (sum of epochs)", f"{m['train_seconds']:.0f} s"),
            ("whole notebook, kernel start to saved files", f"{m['notebook_wall_seconds']:.0f} s"),
            ("hardware / precision", f"{m['hardware']} / {m['precision']}"),
            ("parameters", f"{m['params']:,}"), ("torch / commit", f"{m['torch']} / {m['git_commit']}")]
    return table(rows)


def render_bench(folder: Path) -> str:
    b = load(folder / "bench_cpu.json", ("reference_img_s", "ours_img_s", "speedup", "mfu", "peak_gflops",
                                         "model_gflops", "time_to_90_s", "peak_rss_mb", "hardware", "precision"))
    p = b.get("presets", {})
    rows = [("`seed` network: reference (d2l-style) → ours",
             f"{b['reference_img_s']:.0f} → {b['ours_img_s']:.0f} img/s (**{b['speedup']:.2f}×**)")]
    s = p.get("seed", {})
    if s.get("reference_test_acc") is not None and s.get("ours_test_acc") is not None:
        rows.append((f"`seed` test accuracy after {s['epochs']} epochs: reference → ours",
                     f"{100 * s['reference_test_acc']:.2f} % → {100 * s['ours_test_acc']:.2f} % "
                     f"({100 * (s['ours_test_acc'] - s['reference_test_acc']):+.2f} points)"))
    if "default" in p and p["default"].get("reference_img_s"):
        d = p["default"]
        rows.append(("`default` network: reference → ours",
                     f"{d['reference_img_s']:.0f} → {d['ours_img_s']:.0f} img/s ({d['speedup']:.2f}×)"))
    rows += [("`default` MFU (achieved ÷ measured matmul peak)",
              f"{100 * b['mfu']:.1f} % of {b['peak_gflops']:.0f} GFLOP/s ({b['precision']}), "
              f"{1000 * b['model_gflops']:.1f} MFLOP per training image"),
             ("time to 90 % validation accuracy, `default` recipe",
              "not reached in its epochs" if b["time_to_90_s"] is None
              else f"{b['time_to_90_s']:.0f} s (epoch {b['epoch_90']})"),
             ("peak RSS of a `default` training run", f"{b['peak_rss_mb']:.0f} MB"),
             ("hardware", b["hardware"])]
    return table(rows)


def render_profile(folder: Path) -> str:
    prof = load(folder / "profile_cpu.json", ("profiles", "hardware", "precision"))
    rows = []
    for p in prof["profiles"]:
        ops = ", ".join(f"`{o['op']}` {100 * o['share']:.0f} %" for o in p["top_ops"][:6])
        rows.append((f"`{p['preset']}`, one step of batch 256 ({p['step_ms']:.0f} ms)", ops))
    return table(rows)


def table(rows) -> str:
    return "\n".join(["| what | value |", "| --- | --- |", *[f"| {a} | {b} |" for a, b in rows]])


RENDERERS = {"make_run": render_make_run, "bench": render_bench, "profile": render_profile}


def render(text: str, folder: Path = HERE) -> str:
    def block(match):
        name = match.group(1)
        if name not in RENDERERS:
            raise ResultsError(f"README block results:{name} has no renderer; known: {sorted(RENDERERS)}")
        return f"<!-- results:{name} -->\n{RENDERERS[name](folder)}\n<!-- /results:{name} -->"
    return re.sub(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", block, text, flags=re.S)


def record(run: Path, folder: Path = HERE):
    metrics = load(run / "metrics.json", ("test_acc", "val_acc", "history"))
    metrics.update(load(run / "wall.json", ("notebook_wall_seconds",)), command=f"make run NAME={run.name}")
    (folder / "make_run_cpu.json").write_text(json.dumps(metrics, indent=2))
    (folder / "curves_make_run_cpu.png").write_bytes((run / "curves.png").read_bytes())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readme", nargs="+", default=[str(HERE.parent / n) for n in ("README.md", "BENCHMARKS.md")],
                   help="the Markdown files whose marked blocks to render (default: README.md BENCHMARKS.md)")
    p.add_argument("--check", action="store_true")
    p.add_argument("--record", metavar="RUN_DIR", help="copy a make-run directory's metrics.json + wall.json "
                   "into results/make_run_cpu.json and its curves.png beside it, then render")
    args = p.parse_args(argv)
    try:
        if args.record:
            record(Path(args.record))
        pages = {Path(f): Path(f).read_text() for f in args.readme}
        rendered = {f: render(text) for f, text in pages.items()}  # all or nothing: no file half-updated
    except ResultsError as e:
        sys.exit(f"error: {e}")
    stale = [f for f in pages if rendered[f] != pages[f]]
    if args.check:
        sys.exit(f"out of date: {', '.join(map(str, stale))}; run python results/render.py" if stale else 0)
    for f in stale:
        tmp = f.with_name(f".{f.name}.tmp")
        tmp.write_text(rendered[f])
        tmp.replace(f)
        print(f"updated {f}")


if __name__ == "__main__":
    main()
