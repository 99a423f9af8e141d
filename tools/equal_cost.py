"""The pages' tables of the equal-cost question: the targets, the baselines against the all-MLP at each budget
with Welch's verdicts, the searches, the patch study and the speed tables. What they select and how they
judge is mlp/results.py's; this module only writes it out."""
from __future__ import annotations

from pathlib import Path

from mlp import cpu, records, results
from mlp.results import full_data, is_current, load, load_runs
from tools.tables import pct, pm

# The frontier's targets (issue #30), in development-CPU seconds of training, fp32, mean over three seeds:
# (goal, seconds, test accuracy, the most evaluation may add as a share of the training seconds).
TARGETS = {"sprint": ("90 % validation in ≤ 60 s, every seed", 60, None, None),
           "quick": ("≥ 92.0 % test in ≤ 600 s", 600, 0.920, None),
           "long": ("≥ 94.0 % test in ≤ 1,800 s; evaluation ≤ 10 % of that", 1800, 0.940, 0.10),
           "best": ("≥ 94.5 % test (GPU)", None, 0.945, None)}


def target_row(preset: str, rs: list[dict], tables: list[dict]) -> str:
    """One preset's runs (any CPU, fp32) against its target, at their cost by the speed tables."""
    goal, budget, acc, most = TARGETS[preset]
    costs = [results.cost(r, tables) for r in rs]
    if None in costs:
        return f"| `{preset}` | {goal} | no cost: `make speed` on the development CPU | {len(rs)} | — | — | no |"
    mark = "≈ " if any(c.provisional for c in costs) else ""
    if acc is None:  # time to 90 % validation, training + validation
        times = [results.time_to(r, 0.90, tables) for r in rs]
        worst = None if None in times else max(t.seconds for t in times)
        measured = (f"90 % validation by {mark}{worst:.0f} s in the slowest seed" if worst is not None
                    else f"{sum(t is None for t in times)} of {len(times)} seeds never reach 90 % validation")
        met = worst is not None and worst <= budget
    else:
        test, _ = records.mean_std(r["test_acc"] for r in rs)
        slowest = max(c.seconds for c in costs)
        measured = f"{pct(test)} test (mean) at a cost of {mark}{slowest:,.0f} s"
        met = test >= acc and slowest <= budget
    share = max((c.seconds - c.train + c.test) / c.train for c in costs)
    measured += f"; evaluation {100 * share:.0f} % of training"
    met = met and (most is None or share <= most) and len(rs) >= 3  # a target is met by the mean over three seeds
    cpus = ", ".join(sorted({r["hardware"] for r in rs}))
    return (f"| `{preset}` | {goal} | {measured} | {len(rs)} | {cpus}, fp32 | "
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
    """Each preset against its target, from its current fp32 CPU runs (one per seed, any CPU: mlp/results.py),
    at their cost by the development CPU's speed table."""
    lines = ["| preset | target | measured | seeds | hardware, precision | runs (results/runs/) | met? |",
             "| --- | --- | --- | ---: | --- | --- | --- |"]
    presets, every, tables = results.current_presets(), load_runs(folder), results.speed_tables(folder)
    for preset, (goal, budget, _, _) in TARGETS.items():
        if budget is None:  # a GPU target: its runs come from `make gpu-results`
            lines.append(gpu_target_row(preset, [r for r in every if r["preset"] == preset and full_data(r)
                                                 and str(r.get("device", "")).startswith("cuda")], presets))
            continue
        rs = results.preset_runs(preset, every, presets)
        lines.append(target_row(preset, rs, tables) if rs else f"| `{preset}` | {goal} | — | — | — | — | not measured |")
    return "\n".join(lines)


def cell(c: results.Cell | None, over: list[results.Cell], tables: list[dict]) -> str:
    """A cell: its configuration's name, test mean ± sd (n), validation, its cost; and the configurations
    better on validation that did not fit (none fits: the best of those that do not)."""
    passed = ("; " + ("over budget: " if c is None else "better on validation, over budget: ") + ", ".join(
        f"`{o.name}` ({o.cost.mark}{o.cost.seconds:,.0f} s)" if o.cost else f"`{o.name}` (no cost)"
        for o in over)) if over else ""
    if c is None:
        return ("none fits" if over else "—") + passed
    rs = c.runs
    (te, te_sd), (va, _) = (records.mean_std(r[k] for r in rs) for k in ("test_acc", "val_acc"))
    checks = [x for x in (results.measured_over_predicted(r, tables) for r in rs) if x is not None]
    check = f", measured ÷ predicted {min(checks):.2f}–{max(checks):.2f}" if checks else ""
    return (f"`{c.name}`: **{100 * te:.2f}**{pm(te_sd, len(rs))} % (n={len(rs)}); val {100 * va:.2f} %; "
            f"{c.cost.mark}{c.cost.seconds:,.0f} s{check}, {rs[0]['epochs']} ep.{passed}")


def render_baselines(folder: Path, presets: dict | None = None) -> str:
    """Accuracy at equal cost: per budget (development-CPU seconds of training and validation), each family's
    configuration that validation chooses among those with three seeds whose cost fits (mlp/results.py), and
    Welch's verdict between the all-MLP and the baseline that validation chooses."""
    tables = results.speed_tables(folder)
    lines = ["| budget | " + " | ".join(f"`{b}`" for b in results.BASELINES) + " | best all-MLP |",
             "| ---: | " + " | ".join("---" for _ in results.BASELINES) + " | --- |"]
    verdicts = []
    for budget, cells in results.table_cells(folder, presets):
        lines.append(f"| {budget:,} s | " + " | ".join(cell(*cells[f], tables) for f in
                                                       (*results.BASELINES, "all-MLP")) + " |")
        verdicts.append(verdict_at(budget, cells))
    provisional = any("≈" in line for line in lines)
    notes = [""] + [v for v in verdicts if v]
    if provisional:
        notes += ["", "≈: a provisional cost (the network is not in the development CPU's speed table; "
                      "`make speed` there replaces it)."]
    return "\n".join(lines + notes)


def verdict_at(budget: int, cells: dict) -> str:
    """The all-MLP cell against the baseline cell that validation chooses (the best mean validation accuracy),
    by Welch's t-test on test accuracy over seeds."""
    mlp, best, v = results.budget_verdict(cells)
    if best is None:
        return ""
    if mlp is None:
        return f"At {budget:,} s: no all-MLP preset fits the budget; the best baseline on validation is `{best.name}`."
    return (f"At {budget:,} s, `{mlp.name}` against the baseline validation chooses, `{best.name}`: test accuracy "
            f"{v.words()}.")


def render_summary(folder: Path, presets: dict | None = None) -> str:
    """README's three rows: per budget, the all-MLP against the baseline validation chooses, with p."""
    lines = ["| budget | best all-MLP | best baseline | difference, Welch p | verdict |", "| ---: | --- | --- | --- | --- |"]
    for budget, cells in results.table_cells(folder, presets):
        mlp, best, v = results.budget_verdict(cells)

        def show(c):
            if c is None:
                return "none fits"
            m, sd = records.mean_std(r["test_acc"] for r in c.runs)
            return f"`{c.name}` {100 * m:.2f}{pm(sd, len(c.runs))} % (n={len(c.runs)})"
        if v is None:
            lines.append(f"| {budget:,} s | {show(mlp)} | {show(best)} | — | no comparison |")
            continue
        said = f"`{v.winner}` more accurate" if v.winner else "no significant difference"
        lines.append(f"| {budget:,} s | {show(mlp)} | {show(best)} | {100 * v.diff:+.2f} points, {results.p_text(v.p)} | "
                     f"{said} |")
    return "\n".join(lines)


def render_speed(folder: Path) -> str:
    """Each network's seconds per training epoch on every CPU with a speed table, side by side, and the other
    CPUs' ratio to the development CPU per family."""
    tables = results.speed_tables(folder)
    if not tables:
        return "No speed table yet: `make speed` writes `results/speed/<cpu>.json`, which this table renders."
    tables.sort(key=lambda t: not cpu.is_dev(t["cpu"]))
    names = list(dict.fromkeys(n for t in tables for n in t["networks"]))
    now = {}  # fingerprint -> the presets that are that network now
    for name, p in results.current_presets().items():
        now.setdefault(results.fingerprint(p["model"], p["recipe"], "fp32"), []).append(name)
    preset_names = {p for ps in now.values() for p in ps}
    head = [f"{t['cpu']['model']}, {t['cpu']['cores']} cores, {t['cpu']['isa']}" + (" (development CPU)" if
            cpu.is_dev(t["cpu"]) else "") for t in tables]
    lines = ["| network | " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(tables)]
    for n in names:
        row = []
        for t in tables:
            r = t["networks"].get(n)
            row.append("—" if r is None else f"{r['train_epoch_s']['median']:.2f} ({r['train_epoch_s']['min']:.2f}–"
                       f"{r['train_epoch_s']['max']:.2f}); val {r['eval_s']['median']:.2f}")
        fp = next(t["networks"][n]["fingerprint"] for t in tables if n in t["networks"])
        also = [p for p in now.get(fp, []) if p != n and p != "default"]
        label = f"`{n}`" + (f" (now also `{'`, `'.join(also)}`)" if also else "") + (
            " (the preset as it was when timed)" if n in preset_names and n not in now.get(fp, []) else "")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    notes = []
    for t in tables:
        used = len(t["rounds_used"])
        steal = max(r["steal"] for r in t["rounds"])
        notes.append(f"`results/speed/{t['key']}.json`: `{t.get('command', 'make speed')}`, {t['date']}, torch "
                     f"{t['torch']}, commit {str(t['git_commit'])[:7]}; {used} rounds used of {len(t['rounds'])} "
                     f"taken (highest steal {100 * steal:.1f} %)" + (", **measured under load**" if t["under_load"]
                                                                     else "") + ".")
    dev = results.dev_table(tables)
    for t in tables:
        if dev and t is not dev:
            ratios = {f: results.family_ratio(dev, t, f) for f in ("mlp", "dense", "conv")}
            notes.append(f"Development-CPU seconds per second of {t['cpu']['model']} ({t['cpu']['isa']}): " +
                         ", ".join(f"{f} {r:.2f}" for f, r in ratios.items() if r) + ".")
    return "\n".join(lines + ["", "Seconds per training epoch: median (min–max) over the rounds; val: one validation "
                               "pass with the network's views.", ""] + notes)


# The hand-named searches that came before the engine (mlp/search.py): which baseline at which budgets.
HAND_SEARCHED = {"softmax": (60, 600), "d2l-mlp": (60, 600), "lenet": (60, 600, 1800), "cnn": (60, 600, 1800)}


def render_baseline_search(folder: Path) -> str:
    """Each baseline's hand-named search at each budget (results/trials/bl-*.json): every candidate, seed 0,
    and the one validation chose (★), which its preset NAME-SECONDS became."""
    tables = results.speed_tables(folder)
    lines = ["| baseline | budget | candidate | epochs | training s here (cost, development-CPU s) | validation | test | "
             "hardware | chosen |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | :---: |"]
    for arch, budgets in HAND_SEARCHED.items():
        for budget in budgets:
            trials = results.searched_trials(arch, budget, folder, kinds=("bl",))
            best = results.choose_trial(trials, budget, tables)
            if not trials:
                lines.append(f"| `{arch}` | {budget:,} s | not searched yet | | | | | | |")
            for n, t in trials.items():
                over = "" if results.fits(t, budget, tables) else " (over budget: not chosen)"
                c = results.cost(t, tables)
                spent = f"{t['train_seconds']:.0f}" + (f" ({c.mark}{c.seconds:.0f})" if c is not None else "")
                lines.append(f"| `{arch}` | {budget:,} s | {n} | {t['epochs']} | {spent}{over} | "
                             f"{pct(t['val_acc'])} | {pct(t['test_acc'])} | {t['hardware']} | "
                             f"{'★' if n == best else ''} |")
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
    speeds = study.table_speeds(st["rows"], results.dev_table(results.speed_tables(folder)))
    lines += ["", f"`{st['command']}` on {st['hardware']}, {st['precision']}, commit {str(st['git_commit'])[:7]}. "
              + study.RULE + " " + " ".join(study.verdict(summary, speeds))]
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
