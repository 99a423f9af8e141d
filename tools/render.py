"""Render the result tables of README.md and docs/*.md from the JSON files in results/ (no hand-typed
numbers).

    python -m tools.render           # rewrite the marked blocks
    python -m tools.render --check   # exit 1 if a page is out of date
    python -m tools.render --record runs/NAME   # keep a `make run` as results/make_run_cpu.json (+ curves)
    python -m tools.render --record-run runs/A runs/B   # keep train.py runs as results/runs/A.json ...

A block is the text between `<!-- results:NAME -->` and `<!-- /results:NAME -->`; NAME picks the renderer.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

from mlp import records  # torch-free: rendering needs no torch

ROOT = Path(__file__).resolve().parents[1]

HERE = ROOT / "results"  # the recorded data
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the pages with rendered blocks


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
                                             "torch", "git_commit", "preset"))
    now = "model" in m and is_current(dict(m, history=m.get("history", [])), current_presets())
    preset = f"`{m['preset']}`" + ("" if now else f" as it was at commit {str(m['git_commit'])[:7]}, not as it is now")
    rows = [("preset", preset), ("test accuracy (10,000 test images, evaluated once)", pct(m["test_acc"])),
            (f"validation accuracy (model selection; best of {m['epochs']} epochs: epoch {m['best_epoch']})",
             pct(m["val_acc"])),
            ("training time (sum of epochs)", f"{m['train_seconds']:.0f} s"),
            ("whole notebook, kernel start to saved files", f"{m['notebook_wall_seconds']:.0f} s"),
            ("hardware / precision", f"{m['hardware']} / {m['precision']}"),
            ("parameters", f"{m['params']:,}"), ("torch / commit", f"{m['torch']} / {m['git_commit']}")]
    return table(rows)


def speed(ref, ours, speedup, bold=False) -> str:
    if ref is None:  # a bench that did not run the reference loop
        return f"not measured → {ours:.0f} img/s"
    ratio = f"**{speedup:.2f}×**" if bold else f"{speedup:.2f}×"
    return f"{ref:.0f} → {ours:.0f} img/s ({ratio})"


def reached(hit: dict) -> str:
    return ("not reached in its epochs" if hit["time_to_90_s"] is None
            else f"{hit['time_to_90_s']:.0f} s (epoch {hit['epoch_90']})")


def render_bench(folder: Path, name="bench_cpu.json") -> str:
    b = load(folder / name, ("reference_img_s", "ours_img_s", "speedup", "mfu", "peak_gflops",
                             "model_gflops", "time_to_90_s", "peak_rss_mb", "hardware", "precision"))
    p = b.get("presets", {})
    rows = [("`seed` network: reference (d2l-style) → ours", speed(b["reference_img_s"], b["ours_img_s"], b["speedup"], bold=True))]
    s = p.get("seed", {})
    if s.get("reference_test_acc") is not None and s.get("ours_test_acc") is not None:
        rows.append((f"`seed` test accuracy after {s['epochs']} epochs: reference → ours",
                     f"{100 * s['reference_test_acc']:.2f} % → {100 * s['ours_test_acc']:.2f} % "
                     f"({100 * (s['ours_test_acc'] - s['reference_test_acc']):+.2f} points)"))
    if "default" in p:
        d = p["default"]
        rows.append(("`default` (= `quick`) network: reference → ours",
                     speed(d["reference_img_s"], d["ours_img_s"], d["speedup"])))
        if d.get("ours_adamw_img_s"):
            rows.append(("`default` trained with AdamW instead of Muon (ours)",
                         f"{d['ours_adamw_img_s']:.0f} img/s (Muon's steps cost "
                         f"{100 * (d['ours_adamw_img_s'] / d['ours_img_s'] - 1):.0f} % more time)"))
    rows += [("`default` MFU (achieved ÷ measured matmul peak)",
              f"{100 * b['mfu']:.1f} % of {b['peak_gflops']:.0f} GFLOP/s ({b['precision']}), "
              f"{1000 * b['model_gflops']:.1f} MFLOP per training image"),
             ("time to 90 % validation accuracy, `default` (= `quick`) recipe", reached(b)),
             *([("time to 90 % validation accuracy, `sprint` recipe (3 epochs)", reached(b["sprint"]))]
               if "sprint" in b else []),
             ("peak RSS of a `default` training run", f"{b['peak_rss_mb']:.0f} MB"),
             ("hardware", b["hardware"])]
    if b.get("git_commit"):  # `default` is whatever the preset was at this commit
        rows.append(("commit", f"{b['git_commit'][:7]}"))
    return table(rows)


def render_bench_gpu(folder: Path) -> str:
    """bench_gpu.json, written by `make gpu-results` on a CUDA machine; until then, how to make it."""
    if not (folder / "bench_gpu.json").exists():
        return ("Not measured yet: no GPU has run `make gpu-results` for this repo (it writes "
                "`results/bench_gpu.json`, which this table renders).")
    return render_bench(folder, "bench_gpu.json")


def render_live_overhead(folder: Path) -> str:
    o = load(folder / "live_overhead_cpu.json", ("updates", "sync_s", "sync_share", "update_s", "epoch_s", "share",
                                                  "hardware", "precision", "command", "git_commit"))
    return (f"**{100 * o['sync_share']:.3f} %** of a {o['epoch_s']:.1f} s `{o.get('preset', 'quick')}` epoch: "
            f"{o['updates']} extra reads, {1e3 * o['sync_s']:.2f} ms. Redrawing the figure and encoding it as PNG each "
            f"time (what Jupyter's in-place update needs; `train.py` outside Jupyter does not encode) costs more: "
            f"{o['update_s']:.2f} s, **{100 * o['share']:.2f} %** of the epoch "
            f"(`{o['command']}`, {o['hardware']}, {o['precision']}, commit {str(o['git_commit'])[:7]}).")


def render_muon_ns(folder: Path) -> str:
    """results/muon_ns_*.json (`bench.py --muon-ns`): a Muon step with bf16 and with fp32 Newton-Schulz."""
    rows = ["| machine | bf16 Newton-Schulz | fp32 Newton-Schulz | MuonAdamW takes | command, commit |",
            "| --- | --- | --- | --- | --- |"]
    for f in sorted(folder.glob("muon_ns_*.json")):
        m = load(f, ("step_ms", "matmul_gflops", "steps_per_epoch", "used", "preset", "matrices", "hardware",
                     "command", "git_commit"))
        def cell(dt):
            ms = m["step_ms"][dt]
            return (f"{ms:.1f} ms/step, **{ms * m['steps_per_epoch'] / 1e3:.1f} s** per `{m['preset']}` epoch of "
                    f"{m['steps_per_epoch']} steps; the orthogonalisation of a 128×384 matrix at "
                    f"{m['matmul_gflops'][dt]:.1f} GFLOP/s")
        rows.append(f"| {m['hardware']} | {cell('bf16')} | {cell('fp32')} | {m['used']} | "
                    f"`{m['command']}`, {str(m['git_commit'])[:7]} ({f.name}) |")
    if len(rows) == 2:
        raise ResultsError(f"no {folder}/muon_ns_*.json; write one with python bench.py --muon-ns --out ...")
    return "\n".join(rows)


def render_profile(folder: Path) -> str:
    prof = load(folder / "profile_cpu.json", ("profiles", "hardware", "precision"))
    rows = []
    for p in prof["profiles"]:
        ops = ", ".join(f"`{o['op']}` {100 * o['share']:.0f} %" for o in p["top_ops"][:6])
        rows.append((f"`{p['preset']}`, one step of batch 256 ({p['step_ms']:.0f} ms)", ops))
    return table(rows)


RUN_KEYS = ("preset", "seed", "test_acc", "val_acc", "best_epoch", "epochs", "train_seconds", "hardware",
            "precision", "git_commit", "command", "history")


def load_runs(folder: Path) -> list[dict]:
    return [dict(load(f, RUN_KEYS), file=f.name) for f in sorted((folder / "runs").glob("*.json"))]


def network(r: dict) -> str:
    """A run's network in a few words (with its token MLPs' hidden width), whether it averaged shifted views at
    evaluation, whether it trained with Muon and whether its weights were a moving average (a preset's name
    outlives its recipe: the run records which)."""
    m = r.get("model") or r.get("config") or {}
    if "arch" in m:  # a baseline (baselines.py)
        return (f"baseline {m['arch']}" + (f", width {m['width']}" if m.get("width") else "")
                + (f", ±{m['shift_tta']} px shift averaging" if m.get("shift_tta") else ""))
    if not {"patch", "dim", "blocks"} <= set(m):
        return "—"
    recipe = r.get("recipe") or {}
    token_widths = sorted({b["tokens"][1] for b in m["blocks"] if "tokens" in b})  # the token MLPs' hidden widths
    return (f"K={m['patch']}, width {m['dim']}, {len(m['blocks'])} blocks"
            + (f", token MLPs {'/'.join(map(str, token_widths))} wide" if token_widths else "")
            + (f", ±{m['shift_tta']} px shift averaging" if m.get("shift_tta") else "")
            + (", Muon" if recipe.get("optimizer") == "muon" else "")
            + (f", EMA {recipe['ema']}" if recipe.get("ema") else ""))


def full_data(r: dict) -> bool:
    """A run trained on every training image and evaluated on every validation and test image, without a test
    curve: subset, smoke (eval_limit) and learning-curve runs are reported elsewhere, never as results."""
    return not (r.get("train_limit") or r.get("eval_limit") or any("test_acc" in h for h in r["history"]))


def current_presets() -> dict[str, dict]:
    """Each preset's model config and recipe as the code defines them now (the one place rendering imports
    torch: mlp.recipe builds them)."""
    from mlp.recipe import PRESETS
    return {name: dict(model=p.model.to_dict(), recipe=p.recipe.to_dict()) for name, p in PRESETS.items()}


def as_now(r: dict) -> dict | None:
    """A record's model config and recipe with the fields it predates at their defaults, as the code would
    write them now; None where the code can no longer read them (a field since removed)."""
    from mlp.nets import config_from
    from mlp.recipe import Recipe
    try:
        return dict(model=config_from(r["model"]).to_dict(), recipe=Recipe(**r["recipe"]).to_dict())
    except (KeyError, TypeError, ValueError):
        return None


def is_current(r: dict, presets: dict[str, dict]) -> bool:
    """A run of its preset as the preset is now: the model config and recipe it recorded equal the preset's
    current ones, on all the data, its whole schedule, neither capped nor extended. Its file name decides
    nothing: a run with --set, other --epochs, a cap or an extension is a trial, whatever it is called."""
    now = presets.get(r["preset"])
    return (now is not None and full_data(r) and not r.get("capped") and not r.get("extended")
            and as_now(r) == now)


def render_presets(folder: Path, superseded: bool = False, baselines: bool = False) -> str:
    """One row per (preset, network, epochs, hardware) in results/runs/: test and validation mean ± std over seeds.
    The runs of the presets as they are now only (`is_current`), unless `superseded` (then every recorded run);
    the all-MLP presets only, unless `baselines` (their own table: `render_baselines`)."""
    groups, presets = {}, current_presets()
    for r in load_runs(folder):
        now = is_current(r, presets)
        if not full_data(r) or not (superseded or now) or ("arch" in (r.get("model") or {}) and not baselines):
            continue
        what = json.dumps([as_now(r) or r.get("model"), r.get("capped"), r.get("extended")], sort_keys=True)
        groups.setdefault((r["preset"], network(r), r["epochs"], r["hardware"], r["precision"], not now, what),
                          []).append(r)
    lines = ["| preset | network | epochs | seeds | test accuracy | validation accuracy | training time | hardware | "
             "runs (results/runs/) |", "| --- | --- | ---: | --- | --- | --- | ---: | --- | --- |"]
    if superseded:
        lines = [lines[0] + " the preset now? |", lines[1] + " :---: |"]
    for (preset, net, epochs, hw, prec, old, _), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["seed"])
        (te, te_sd), (va, va_sd), (sec, _) = (records.mean_std([r[k] for r in rs])
                                              for k in ("test_acc", "val_acc", "train_seconds"))
        now = f" {'no' if old else 'yes'} |" if superseded else ""
        epochs = f"{epochs} (capped)" if any(r.get("capped") for r in rs) else epochs
        lines.append(f"| `{preset}` | {net} | {epochs} | {', '.join(str(r['seed']) for r in rs)} | "
                     f"**{100 * te:.2f}**{pm(te_sd, len(rs))} % | {100 * va:.2f}{pm(va_sd, len(rs))} % | "
                     f"{sec:.0f} s | {hw}, {prec} | {', '.join(r['file'].removesuffix('.json') for r in rs)} |{now}")
    return "\n".join(lines)


DEV_CPU, AVX512_RATIO = records.DEV_CPU, records.AVX512_RATIO
# The frontier's targets (issue #30), in development-CPU seconds of training, fp32, mean over three seeds:
# (goal, seconds, test accuracy, the most evaluation may add as a share of the training seconds).
TARGETS = {"sprint": ("90 % validation in ≤ 60 s, every seed", 60, None, None),
           "quick": ("≥ 92.0 % test in ≤ 600 s", 600, 0.920, None),
           "long": ("≥ 94.0 % test in ≤ 1,800 s; evaluation ≤ 10 % of that", 1800, 0.940, 0.10),
           "best": ("≥ 94.5 % test (GPU)", None, 0.945, None)}


def eval_share(r: dict) -> float | None:
    """Validation and test seconds over training seconds; None for runs that did not time their test pass."""
    if "test_seconds" not in r:
        return None
    return (sum(h.get("eval_seconds", 0.0) for h in r["history"]) + r["test_seconds"]) / r["train_seconds"]


def target_row(preset: str, rs: list[dict], ratio: float) -> str:
    """One preset's runs on one CPU against its target; ratio: development-CPU seconds per second of theirs."""
    goal, budget, acc, most = TARGETS[preset]
    scale = "" if ratio == 1 else f" (× {ratio} = development-CPU estimate)"
    if acc is None:  # time to 90 % validation, training + validation seconds
        times = [records.time_to_accuracy(r["history"], 0.90)[0] for r in rs]
        worst = None if None in times else ratio * max(times)
        measured = (f"90 % validation by {worst:.0f} s in the slowest seed{scale}" if worst is not None
                    else f"{sum(t is None for t in times)} of {len(times)} seeds never reach 90 % validation")
        met = worst is not None and worst <= budget
    else:
        test, _ = records.mean_std(r["test_acc"] for r in rs)
        slowest = ratio * max(r["train_seconds"] for r in rs)
        measured = f"{pct(test)} test (mean) in ≤ {slowest:,.0f} s{scale}"
        met = test >= acc and slowest <= budget
    shares = [eval_share(r) for r in rs]
    if None not in shares:
        measured += f"; evaluation {100 * max(shares):.0f} % of training"
    if most is not None:
        met = met and None not in shares and max(shares) <= most
    met = met and len(rs) >= 3  # a target is met by the mean over three seeds
    return (f"| `{preset}` | {goal} | {measured} | {len(rs)} | {rs[0]['hardware']}, fp32 | "
            f"{', '.join(r['file'].removesuffix('.json') for r in rs)} | {'**yes**' if met else 'no'} |")


def gpu_target_row(preset: str, rs: list[dict], presets: dict) -> str:
    """A GPU target from its GPU runs of the preset as it is now; capped runs (not the recipe) are named as
    such and meet nothing."""
    goal, _, acc, _ = TARGETS[preset]
    current = [r for r in rs if is_current(r, presets)]
    capped = [r for r in rs if r.get("capped") and not r.get("extended")]
    if not current and not capped:
        return f"| `{preset}` | {goal} | not trained on a GPU yet | — | — | — | no |"
    shown = current or capped
    test, _ = records.mean_std(r["test_acc"] for r in shown)
    measured = f"{pct(test)} test (mean) in ≤ {max(r['train_seconds'] for r in shown):,.0f} s"
    if not current:
        measured += (f"; capped at {max(r.get('max_seconds') or 0 for r in shown):,.0f} s after "
                     f"{'/'.join(str(r['epochs']) for r in shown)} of {shown[0]['recipe']['epochs']} epochs: "
                     f"not the recipe")
    met = bool(current) and len(current) >= 3 and test >= acc
    return (f"| `{preset}` | {goal} | {measured} | {len(shown)} | {shown[0]['hardware']}, {shown[0]['precision']} | "
            f"{', '.join(r['file'].removesuffix('.json') for r in shown)} | {'**yes**' if met else 'no'} |")


def render_targets(folder: Path) -> str:
    """Each preset against its target, from its current runs (results/runs/, superseded versions aside): those
    of the development CPU, and while it has fewer than three seeds also the AVX-512 CPU's, its seconds x
    AVX512_RATIO (an estimate)."""
    lines = ["| preset | target | measured | seeds | hardware, precision | runs (results/runs/) | met? |",
             "| --- | --- | --- | ---: | --- | --- | --- |"]
    presets = current_presets()
    every = load_runs(folder)
    runs = [r for r in every if is_current(r, presets)]
    for preset, (goal, budget, _, _) in TARGETS.items():
        if budget is None:  # a GPU target: its runs come from `make gpu-results`
            lines.append(gpu_target_row(preset, [r for r in every if r["preset"] == preset and full_data(r)
                                                 and str(r.get("device", "")).startswith("cuda")], presets))
            continue
        mine = [r for r in runs if r["preset"] == preset and r["precision"] == "fp32"]
        dev = [r for r in mine if r["hardware"].endswith(DEV_CPU)]
        avx512 = [r for r in mine if "AVX-512" in r["hardware"]] if len(dev) < 3 else []
        lines += [target_row(preset, rs, ratio) for rs, ratio in ((dev, 1.0), (avx512, AVX512_RATIO)) if rs]
        if not dev and not avx512:
            lines.append(f"| `{preset}` | {goal} | — | — | — | — | not measured |")
    return "\n".join(lines)


BASELINES = ("softmax", "d2l-mlp", "lenet", "cnn")
BUDGETS = (60, 600, 1800)
ALL_MLP = {60: "sprint", 600: "quick", 1800: "long"}  # the all-MLP preset made for each budget (docs/frontier.md)


def cell_runs(preset: str, runs: list[dict], presets: dict) -> list[dict]:
    """A preset's current fp32 runs on one CPU whose seconds convert to the development CPU's (records.dev_ratio_of:
    calibrated in the run's session, or the CPU's fixed ratio): the development CPU's when it has three seeds
    or as many as any other, else the CPU with the most; never two CPUs mixed."""
    mine = [r for r in runs if r["preset"] == preset and r["precision"] == "fp32" and is_current(r, presets)
            and records.dev_ratio_of(r) is not None]
    by_cpu = {}
    for r in mine:
        by_cpu.setdefault(r["hardware"], []).append(r)
    dev = next((rs for cpu, rs in by_cpu.items() if cpu.endswith(DEV_CPU)), [])
    other = max((rs for cpu, rs in by_cpu.items() if not cpu.endswith(DEV_CPU)), key=len, default=[])
    return dev if len(dev) >= 3 or len(dev) >= len(other) else other


def pm(sd: float, n: int) -> str:
    """" ± sd" over n seeds; nothing for one seed, whose spread is unknown rather than zero."""
    return f" ± {100 * sd:.2f}" if n > 1 else ""


def cell(rs: list[dict]) -> str:
    """Test mean ± sd, validation, and the range of development-CPU seconds: each run's own at its ratio,
    marked ≈ where a run's ratio is its CPU's fixed estimate rather than calibrated in its session."""
    if not rs:
        return "not run yet"
    (te, te_sd), (va, _) = (records.mean_std(r[k] for r in rs) for k in ("test_acc", "val_acc"))
    secs = [records.dev_seconds(r) for r in rs]
    est = "" if all(r.get("calibration") or r["hardware"].endswith(DEV_CPU) for r in rs) else "≈ "
    return (f"**{100 * te:.2f}**{pm(te_sd, len(rs))} % (n={len(rs)}); val {100 * va:.2f} %; "
            f"{est}{min(secs):,.0f}–{max(secs):,.0f} s, {rs[0]['epochs']} ep.")


def baseline_cells(runs: list[dict], presets: dict):
    """Per budget: the runs of each baseline's preset for it (where that preset exists), the all-MLP preset made
    for it and its runs, each cell's runs chosen by cell_runs."""
    for budget in BUDGETS:
        found = {b: cell_runs(f"{b}-{budget}", runs, presets) for b in BASELINES if f"{b}-{budget}" in presets}
        yield budget, found, ALL_MLP[budget], cell_runs(ALL_MLP[budget], runs, presets)


def render_baselines(folder: Path, presets: dict | None = None) -> str:
    """Accuracy at equal CPU time: per budget (development-CPU seconds of training), each baseline's preset
    for that budget (NAME-SECONDS) and the all-MLP preset made for it, over their current runs."""
    runs, presets = load_runs(folder), presets or current_presets()
    lines = ["| budget | " + " | ".join(f"`{b}`" for b in BASELINES) + " | best all-MLP |",
             "| ---: | " + " | ".join("---" for _ in BASELINES) + " | --- |"]
    verdicts = []
    for budget, found, mlp, ours in baseline_cells(runs, presets):
        cells = [cell(found[b]) if b in found else "—" for b in BASELINES]
        cells.append(f"`{mlp}`: {cell(ours)}")
        lines.append(f"| {budget:,} s | " + " | ".join(cells) + " |")
        verdicts.append(verdict_at(budget, mlp, ours, {b: rs for b, rs in found.items() if rs}))
    return "\n".join(lines + [""] + [v for v in verdicts if v])


def baseline_series(folder: Path, presets: dict | None = None) -> dict[str, list[tuple[int, list[tuple[float, float]]]]]:
    """What the baselines table's cells hold, per column: (budget, [(development-CPU seconds, test accuracy) per
    run]), the runs chosen as the table chooses them and each run's seconds at its own ratio."""
    series = {}
    for budget, found, _, ours in baseline_cells(load_runs(folder), presets or current_presets()):
        for name, rs in [*found.items(), ("all-MLP", ours)]:
            if rs:
                series.setdefault(name, []).append((budget, [(records.dev_seconds(r), r["test_acc"]) for r in rs]))
    return series


def plot_baselines(folder: Path, png: Path, presets: dict | None = None):
    """results/baselines.png: the baselines table drawn: every run at its development-CPU seconds, a line through
    each column's per-budget means."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    colors = dict(zip([*BASELINES, "all-MLP"], ("tab:gray", "tab:olive", "tab:orange", "tab:red", "tab:blue")))
    for name, cells in baseline_series(folder, presets).items():
        runs = [pt for _, pts in cells for pt in pts]
        ax.scatter([s for s, _ in runs], [100 * a for _, a in runs], s=18, alpha=0.6, color=colors[name])
        means = [(sum(s for s, _ in pts) / len(pts), 100 * sum(a for _, a in pts) / len(pts)) for _, pts in cells]
        label = f"all-MLP ({', '.join(ALL_MLP[b] for b, _ in cells)})" if name == "all-MLP" else name
        ax.plot(*zip(*means), marker="o", lw=2.5 if name == "all-MLP" else 1.5, color=colors[name], label=label)
    for budget in BUDGETS:
        ax.axvline(budget, ls=":", lw=1, color="k", alpha=0.4)
    ax.set(xscale="log", xlabel="training time, development-CPU seconds (log scale; dotted: the 60, 600, 1,800 s budgets)",
           ylabel="test accuracy (%)", title="Accuracy at equal CPU time: each run, and the mean per budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.savefig(png, dpi=110)


def verdict_at(budget: int, mlp: str, ours: list[dict], baselines: dict[str, list[dict]]) -> str:
    """The all-MLP preset against the baseline of highest mean test accuracy at a budget, by records.outcome."""
    if not ours or not baselines:
        return ""
    stats = {name: records.mean_std(r["test_acc"] for r in rs) + (len(rs),) for name, rs in baselines.items()}
    best = max(stats, key=lambda n: stats[n][0])
    mine = records.mean_std(r["test_acc"] for r in ours) + (len(ours),)
    over = "the difference exceeds twice its standard error"
    said = {"a": f"`{mlp}` is more accurate ({over})", "b": f"`{best}` is more accurate ({over})",
            "tie": "no significant difference (within twice its standard error)",
            None: "no verdict (fewer than two seeds)"}[records.outcome(mine, stats[best])]
    return (f"At {budget:,} s, `{mlp}` against the most accurate baseline, `{best}`: "
            f"{100 * (mine[0] - stats[best][0]):+.2f} points of test accuracy: {said}.")


def render_baseline_search(folder: Path) -> str:
    """Each baseline's search at each budget (results/trials/bl-*.json): every candidate, seed 0, and the one
    validation chose (★), which its preset NAME-SECONDS became."""
    from tools import baseline_search as baselines  # (it imports this module)
    lines = ["| baseline | budget | candidate | epochs | training s here (development-CPU s) | validation | test | "
             "hardware | chosen |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | :---: |"]
    for arch, budgets in baselines.BUDGETS.items():
        for budget in budgets:
            trials = baselines.load_trials(arch, budget, folder / "trials")
            for t in trials.values():
                missing = [k for k in RUN_KEYS if k not in t]
                if missing:
                    raise ResultsError(f"a trial of {arch} at {budget} s lacks {missing}")
            best = baselines.choice(trials, budget)
            if not trials:
                lines.append(f"| `{arch}` | {budget:,} s | not searched yet | | | | | | |")
            for n, t in trials.items():
                over = "" if baselines.within(t, budget) else " (over budget: not chosen)"
                dev = records.dev_seconds(t)
                spent = f"{t['train_seconds']:.0f}" + (f" ({'' if t.get('calibration') else '≈ '}{dev:.0f})"
                                                         if dev is not None else "")
                lines.append(f"| `{arch}` | {budget:,} s | {n} | {t['epochs']} | {spent}{over} | "
                             f"{pct(t['val_acc'])} | {pct(t['test_acc'])} | {t['hardware']} | "
                             f"{'★' if n == best else ''} |")
    return "\n".join(lines)


def render_seed_curve(folder: Path) -> str:
    """Per-epoch test (and validation) accuracy of the runs recorded with --test-curve."""
    runs = [r for r in load_runs(folder) if all("test_acc" in h for h in r["history"])]
    if not runs:
        raise ResultsError(f"no run in {folder / 'runs'} has a per-epoch test curve; record one made with "
                           f"train.py --test-curve")
    # The longest curve (the GPU's 200 epochs over a CPU's few), a GPU's before a CPU's of the same length
    r = max(runs, key=lambda r: (len(r["history"]), str(r.get("device", "")).startswith("cuda"), r["file"]))
    capped = f"; capped after {len(r['history'])} of {r['recipe']['epochs']} epochs" if r.get("capped") else ""
    lines = [f"`{r['command']}` (seed {r['seed']}, {r['hardware']}, {r['precision']}, commit {str(r['git_commit'])[:7]}"
             f"{capped}):",
             "", "| epoch | train loss | validation | test | seconds |", "| ---: | ---: | ---: | ---: | ---: |"]
    h = r["history"]
    best = max((e for e in h if e.get("val_acc") is not None), key=lambda e: e["val_acc"], default=h[-1])["epoch"]
    shown = [e for e in h if len(h) <= 20 or e["epoch"] <= 10 or e["epoch"] % 10 == 0 or e["epoch"] in (best, h[-1]["epoch"])]
    lines += [f"| {e['epoch']} | {e['train_loss']:.4f} | {pct(e['val_acc'])} | {pct(e['test_acc'])} | "
              f"{e['seconds']:.0f} |" for e in shown]
    if len(shown) < len(h):  # a long curve: its shape, not every row (the record has them all)
        lines += ["", f"{len(shown)} of its {len(h)} epochs: 1–10, every tenth, epoch {best} (the best validation) "
                      f"and the last; `results/runs/{r['file']}` has every one."]
    return "\n".join(lines)


def render_patch_study(folder: Path, name: str = "patch_study.json") -> str:
    """The study's table and verdict; a study still in progress (its record is rewritten after every run) shows
    the runs recorded so far, and says so. `name`: the CPU study (`make study`) or the GPU's (`make gpu-results`)."""
    gpu = name == "patch_study_gpu.json"
    if gpu and not (folder / name).exists():
        return "Not run yet: `make gpu-results` writes `results/patch_study_gpu.json`, which this table renders."
    st = load(folder / name, ("rows", "hardware", "precision", "command", "git_commit"))
    from mlp import study  # the verdict by today's rule, from the recorded summary (not the words it was saved with)
    summary = st.get("summary") or study.summarize(st["rows"])
    lines = [records.study_table(summary)]
    lines += ["", f"`{st['command']}` on {st['hardware']}, {st['precision']}, commit {str(st['git_commit'])[:7]}. "
              + study.RULE + " " + " ".join(study.verdict(summary))]
    if not st.get("complete"):
        p = st.get("parameters", {})
        planned = len(p.get("arms", [])) * len(p.get("patches", [])) * len(p.get("seeds", []))
        lines[-1] += (f" In progress: {len(st['rows'])} of the {planned} runs its command planned are recorded; "
                      + ("the GPU window ended the rest (`make gpu-results` starts the study afresh)." if gpu else
                         "`make study` resumes it, reusing them."))
    if any("model" not in r for r in st.get("rows", [])):
        lines[-1] += (f" These rows predate the record of each run's model config: each preset is the network it "
                      f"was at commit {str(st['git_commit'])[:7]} (`quick` has changed since), and `make study` "
                      f"trains them again instead of reusing them.")
    return "\n".join(lines)


def plot_patch_study(folder: Path, name: str = "patch_study"):
    """results/NAME.png from the record as it stands (a study in progress too), as the notebook draws it."""
    from mlp import study
    st = json.loads((folder / f"{name}.json").read_text())
    summary = st.get("summary") or study.summarize(st["rows"])
    study.plot(summary, folder / f"{name}.png", st["precision"], st.get("device", "cpu").split(":")[0])


def render_best_probe(folder: Path) -> str:
    """What the `best` recipe would cost on the CPU: one timed epoch on a subset, extrapolated."""
    path = folder / "runs" / "best-cpu-probe.json"
    r = load(path, RUN_KEYS + ("train_limit", "preset_epochs"))
    if not r["train_limit"]:
        raise ResultsError(f"{path} should be a subset run (train.py --train-limit N)")
    epochs = r["preset_epochs"]  # the recipe's own number of epochs (the probe ran fewer)
    per_epoch = r["train_seconds"] / r["epochs"] / r["train_limit"] * 55000
    return (f"`{r['command']}` took {r['train_seconds']:.0f} s for {r['epochs']} epoch(s) of {r['train_limit']:,} "
            f"images on {r['hardware']} ({r['precision']}): about {per_epoch / 60:.0f} min per epoch of 55,000 images, "
            f"so the `{r['preset']}` recipe's {epochs} epochs would take about {per_epoch * epochs / 3600:.0f} hours "
            f"per seed here (extrapolated from that measurement, not run).")


# Reference lines of the frontier (facts from their sources, not rerun here; README's comparison table).
ANCHORS = [(0.8863, "the original network, 200 GPU epochs (88.63 %)"), (0.902, "an MLP-Mixer adaptation (90.2 %)")]


def frontier_points(folder: Path) -> list[dict]:
    """Every full-data run and trial in results/runs/ and results/trials/ (subset and curve-only runs aside)."""
    points = []
    for kind in ("runs", "trials"):
        for f in sorted((folder / kind).glob("*.json")):
            r = load(f, RUN_KEYS)
            if not full_data(r):
                continue
            points.append(dict(r, file=f"{kind}/{f.name}", kind=kind))
    return sorted(points, key=lambda r: r["train_seconds"])


def time_to_90(history) -> str:
    seconds, epoch = records.time_to_accuracy(history, 0.90)
    return "—" if seconds is None else f"{seconds:.0f} s (epoch {epoch})"


def render_frontier(folder: Path) -> str:
    """Test accuracy against training seconds: every recorded run a row, the best so far on its own hardware
    and precision marked."""
    lines = ["| training s | test | validation | preset / trial | epochs | hardware, precision | best so far | file | "
             "first val ≥ 90 % |", "| ---: | ---: | ---: | --- | ---: | --- | :---: | --- | ---: |"]
    best = {}  # per hardware and precision: seconds on different machines are not comparable
    for r in frontier_points(folder):
        machine = (r["hardware"], r["precision"])
        new = r["test_acc"] > best.get(machine, -1.0)
        best[machine] = max(best.get(machine, -1.0), r["test_acc"])
        capped = " (capped)" if r.get("capped") else ""
        who = f"`{r['preset']}` preset ({network(r)})" if r["kind"] == "runs" else f"`{r['command']}`"
        lines.append(f"| {r['train_seconds']:.0f} | {pct(r['test_acc'])} | {pct(r['val_acc'])} | {who} | "
                     f"{r['epochs']}{capped} | {r['hardware']}, {r['precision']} | {'★' if new else ''} | {r['file']} | "
                     f"{time_to_90(r['history'])} |")
    return "\n".join(lines)


def plot_frontier(folder: Path, png: Path):
    """results/frontier.png: every point (stars: preset runs), one colour and one best-so-far line per hardware
    and precision (seconds on different CPUs are not comparable) for the all-MLP runs, the baselines in red
    without a line, the anchors as reference lines."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    pts = frontier_points(folder)
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    baseline = [r for r in pts if "arch" in (r.get("model") or {})]  # drawn apart, in their own colour
    pts = [r for r in pts if r not in baseline]
    for kind, marker, size in (("trials", "o", 30), ("runs", "*", 140)):
        sel = [r for r in baseline if r["kind"] == kind]
        ax.scatter([r["train_seconds"] for r in sel], [100 * r["test_acc"] for r in sel], marker=marker, s=size,
                   color="tab:red", zorder=4, label="baselines (softmax, d2l MLP, LeNet, CNN)" if kind == "runs" else None)
    machines = list(dict.fromkeys(f"{r['hardware']}, {r['precision']}" for r in pts))
    for m, color in zip(machines, ("tab:gray", "tab:blue", "tab:green", "tab:purple", "tab:orange")):
        mine = [r for r in pts if f"{r['hardware']}, {r['precision']}" == m]
        for kind, marker, size in (("trials", "o", 30), ("runs", "*", 140)):
            sel = [r for r in mine if r["kind"] == kind]
            ax.scatter([r["train_seconds"] for r in sel], [100 * r["test_acc"] for r in sel], marker=marker, s=size,
                       color=color, zorder=3)
        xs, ys, best = [], [], -1.0
        for r in mine:
            best = max(best, 100 * r["test_acc"])
            xs.append(r["train_seconds"])
            ys.append(best)
        ax.step(xs, ys, where="post", color=color, label=textwrap.fill(f"best so far: {m}", 70))
    ax.scatter([], [], marker="*", s=140, color="k", label="preset run (results/runs)")
    ax.scatter([], [], marker="o", s=30, color="k", label="trial (results/trials)")
    for y, label in ANCHORS:
        ax.axhline(100 * y, ls="--", lw=1, color="k", alpha=0.5)
        ax.annotate(label, (0.01, 100 * y), xycoords=("axes fraction", "data"), fontsize=8, va="bottom")
    ax.set(xscale="log", xlabel="training seconds (log scale)", ylabel="test accuracy (%)",
           title="Test accuracy against training seconds: every recorded run (baselines in red)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(png, dpi=110)


def seeds_of(model: dict, runs: list[dict]) -> list[dict]:
    """The recorded runs of the shipped model's configuration on its hardware and precision: the same model
    config, the same recipe (on the fields both records have), all the data, the full schedule."""
    def same(r):
        recipe = r.get("recipe") or {}
        return (r.get("model") == model["model"] and r["hardware"] == model["hardware"]
                and r["precision"] == model["precision"] and full_data(r) and not r.get("capped")
                and not r.get("extended") and all(recipe[k] == v for k, v in model["recipe"].items() if k in recipe))
    return sorted((r for r in runs if same(r)), key=lambda r: r["seed"])


def render_model_card(folder: Path) -> str:
    """The shipped model (results/model/): what it is, how it was made and chosen, its test accuracy and its
    preset's over seeds."""
    m = load(folder / "model" / "metrics.json", (*RUN_KEYS, "model", "recipe", "params"))
    e = load(folder / "model" / "evaluation.json", ("test_acc", "per_class", "precision", "eval_views", "command"))
    rs = seeds_of(m, load_runs(folder))
    (te, te_sd), (va, va_sd) = (records.mean_std([r[k] for r in rs]) for k in ("test_acc", "val_acc"))
    chosen = max(rs, key=lambda r: r["val_acc"]) if rs else None
    size = (folder / "model" / "model.pt").stat().st_size
    rows = [("file", f"`results/model/model.pt` ({size / 1e3:.0f} kB: model config and weights), "
                     f"`metrics.json` beside it"),
            ("network", f"`{m['preset']}`: {network(m)}; {m['params']:,} parameters"),
            ("trained by", f"`{m['command']}` at commit {m['git_commit'][:7]}: {m['epochs']} epochs, "
                           f"{m['train_seconds']:.0f} s, {m['hardware']}, {m['precision']}"),
            ("chosen on validation", f"seed {m['seed']}, the best validation accuracy ({pct(m['val_acc'])}) of "
                                     f"the {len(rs)} recorded seeds below" + (
                                         "" if chosen and chosen["seed"] == m["seed"] else " (NOT the best: re-choose)")),
            ("test accuracy, this model", f"**{pct(m['test_acc'])}** (10,000 test images, {e['eval_views']} views, "
                                          f"{e['precision']}; recomputed from the file by `{e['command']}`: "
                                          f"{pct(e['test_acc'])})"),
            (f"test accuracy, `{m['preset']}` over {len(rs)} seeds", f"{100 * te:.2f}{pm(te_sd, len(rs))} % "
             f"(validation {100 * va:.2f}{pm(va_sd, len(rs))} %; "
             f"{', '.join(r['file'].removesuffix('.json') for r in rs)} in results/runs/)")]
    return table(rows)


def render_model_classes(folder: Path) -> str:
    """Per-class test accuracy of the shipped model, worst first, with the class each is most often taken for."""
    e = load(folder / "model" / "evaluation.json", ("per_class", "confusion", "labels"))
    lines = ["| class | test accuracy | most often mistaken for |", "| --- | ---: | --- |"]
    for i, name in sorted(enumerate(e["labels"]), key=lambda t: e["per_class"][t[1]]):
        row = e["confusion"][i]
        j = max((k for k in range(len(row)) if k != i), key=lambda k: row[k])
        lines.append(f"| {name} | {pct(e['per_class'][name])} | {e['labels'][j]} ({row[j]} of {sum(row)}) |")
    return "\n".join(lines)


def table(rows) -> str:
    return "\n".join(["| what | value |", "| --- | --- |", *[f"| {a} | {b} |" for a, b in rows]])


RENDERERS = {"frontier": render_frontier, "make_run": render_make_run, "bench": render_bench, "bench_gpu": render_bench_gpu,
             "bench_avx512": lambda folder: render_bench(folder, "bench_cpu_avx512.json"),
             "profile": render_profile, "muon_ns": render_muon_ns, "live_overhead": render_live_overhead,
             "presets": render_presets, "targets": render_targets,
             "presets_all": lambda folder: render_presets(folder, superseded=True, baselines=True),
             "seed_curve": render_seed_curve, "patch_study": render_patch_study,
             "patch_study_gpu": lambda folder: render_patch_study(folder, "patch_study_gpu.json"), "best_probe": render_best_probe,
             "baselines": render_baselines, "baseline_search": render_baseline_search, "model_card": render_model_card, "model_classes": render_model_classes}


def render(text: str, folder: Path = HERE) -> str:
    def block(match):
        name = match.group(1)
        if name not in RENDERERS:
            raise ResultsError(f"README block results:{name} has no renderer; known: {sorted(RENDERERS)}")
        return f"<!-- results:{name} -->\n{RENDERERS[name](folder)}\n<!-- /results:{name} -->"
    return re.sub(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", block, text, flags=re.S)


def record_run(run: Path, folder: Path = HERE, kind: str = "runs", force: bool = False):
    """Keep a train.py run's metrics.json as results/<kind>/<run name>.json (no checkpoints). An existing record
    is a result a table may cite: it is replaced only with `force`, and then it says so."""
    metrics = load(run / "metrics.json", RUN_KEYS)
    target = folder / kind / f"{run.name}.json"
    if target.exists() and not force:
        raise ResultsError(f"{target} already holds a record; give the run another name, or replace the record with "
                           f"--force (make: FORCE=1)")
    if target.exists():
        print(f"replacing {target}")
    (folder / kind).mkdir(exist_ok=True)
    records.atomic_write(target, json.dumps(metrics, indent=2))


def record(run: Path, folder: Path = HERE, force: bool = False):
    metrics = load(run / "metrics.json", ("test_acc", "val_acc", "history"))
    metrics.update(load(run / "wall.json", ("notebook_wall_seconds",)), command=f"make run NAME={run.name}")
    records.atomic_write(folder / "make_run_cpu.json", json.dumps(metrics, indent=2))
    record_run(run, folder, force=force)  # also one of its preset's runs
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
            record_run(Path(run), folder, force=args.force)
        for run in args.record_trial:
            record_run(Path(run), folder, kind="trials", force=args.force)
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
    if any("<!-- results:frontier -->" in t for t in pages.values()):
        plot_frontier(folder, folder / "frontier.png")
    if any("<!-- results:baselines -->" in t for t in pages.values()):
        plot_baselines(folder, folder / "baselines.png")
    for name in ("patch_study", "patch_study_gpu"):
        if any(f"<!-- results:{name} -->" in t for t in pages.values()) and (folder / f"{name}.json").exists():
            plot_patch_study(folder, name)


if __name__ == "__main__":
    main()
