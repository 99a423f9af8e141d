"""The pages' tables of single runs, benchmarks and the shipped model (tools/render.py puts them in place)."""
from __future__ import annotations

import json
from pathlib import Path

from mlp import records
from mlp.results import (
    RUN_KEYS,
    ResultsError,
    as_now,
    current_presets,
    frontier_points,
    full_data,
    is_current,
    load,
    load_runs,
)


def pct(x):
    return "n/a" if x is None else f"{100 * x:.2f} %"


def table(rows) -> str:
    return "\n".join(["| what | value |", "| --- | --- |", *[f"| {a} | {b} |" for a, b in rows]])


def pm(sd: float, n: int) -> str:
    """" ± sd" over n seeds; nothing for one seed, whose spread is unknown rather than zero."""
    return f" ± {100 * sd:.2f}" if n > 1 else ""


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
    # Only a run trained at a clean commit can ship: its code is that commit (a -dirty one's is not recorded)
    shippable = [r for r in rs if not str(r["git_commit"]).endswith("-dirty")]
    chosen = max(shippable, key=lambda r: r["val_acc"]) if shippable else None
    size = (folder / "model" / "model.pt").stat().st_size
    rows = [("file", f"`results/model/model.pt` ({size / 1e3:.0f} kB: model config and weights), "
                     f"`metrics.json` beside it"),
            ("network", f"`{m['preset']}`: {network(m)}; {m['params']:,} parameters"),
            ("trained by", f"`{m['command']}` at commit {m['git_commit'][:7]}: {m['epochs']} epochs, "
                           f"{m['train_seconds']:.0f} s, {m['hardware']}, {m['precision']}"),
            ("chosen on validation", f"seed {m['seed']}, the best validation accuracy ({pct(m['val_acc'])}) of "
                                     f"the {len(shippable)} recorded seeds below trained at a clean commit" + (
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
