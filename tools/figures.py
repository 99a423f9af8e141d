"""The pages' figures, drawn from the records as the tables read them (matplotlib, no screen)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

from mlp import results

# Reference lines of the frontier (facts from their sources, not rerun here; README's comparison table).
ANCHORS = [(0.8863, "the original network, 200 GPU epochs (88.63 %)"), (0.902, "an MLP-Mixer adaptation (90.2 %)")]



def plot_frontier(folder: Path, png: Path):
    """results/frontier.png: every point (stars: preset runs), one colour and one best-so-far line per hardware
    and precision (seconds on different CPUs are not comparable) for the all-MLP runs, the baselines in red
    without a line, the anchors as reference lines."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    pts = results.frontier_points(folder)
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


def baseline_series(folder: Path, presets: dict | None = None) -> dict[str, list[tuple[int, list[tuple[float, float]]]]]:
    """What the baselines table's cells hold, per column: (budget, [(cost in development-CPU seconds, test
    accuracy) per run]), the runs chosen as the table chooses them (mlp/results.table_cells)."""
    series, tables = {}, results.speed_tables(folder)
    for budget, cells in results.table_cells(folder, presets):
        for name, (c, _) in cells.items():
            if c is not None:
                series.setdefault(name, []).append((budget, [(results.cost(r, tables).seconds, r["test_acc"])
                                                             for r in c.runs]))
    return series


def plot_baselines(folder: Path, png: Path, presets: dict | None = None):
    """results/baselines.png: the baselines table drawn: every run of each cell at its cost, a line through each
    column's per-budget means."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    colors = dict(zip([*results.BASELINES, "all-MLP"], ("tab:gray", "tab:olive", "tab:orange", "tab:red", "tab:blue")))
    for name, cells in baseline_series(folder, presets).items():
        runs = [pt for _, pts in cells for pt in pts]
        ax.scatter([s for s, _ in runs], [100 * a for _, a in runs], s=18, alpha=0.6, color=colors[name])
        means = [(sum(s for s, _ in pts) / len(pts), 100 * sum(a for _, a in pts) / len(pts)) for _, pts in cells]
        label = "all-MLP" if name == "all-MLP" else name
        ax.plot(*zip(*means), marker="o", lw=2.5 if name == "all-MLP" else 1.5, color=colors[name], label=label)
    for budget in results.BUDGETS:
        ax.axvline(budget, ls=":", lw=1, color="k", alpha=0.4)
    ax.set(xscale="log", xlabel="cost: development-CPU seconds of training and validation, from the speed table "
           "(log scale; dotted: the budgets)", ylabel="test accuracy (%)",
           title="Accuracy at equal cost: each run of each cell, and the mean per budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.savefig(png, dpi=110)


def plot_patch_study(folder: Path, name: str = "patch_study"):
    """results/NAME.png from the record as it stands (a study in progress too), as the notebook draws it."""
    from mlp import study
    st = json.loads((folder / f"{name}.json").read_text())
    summary = st.get("summary") or study.summarize(st["rows"])
    study.plot(summary, folder / f"{name}.png", st["precision"], st.get("device", "cpu").split(":")[0])
