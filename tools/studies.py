"""The recipe searches on the pages (docs/search.md): per study of results/studies/search.journal, its trials,
its best on validation, what pruning spared, and its figures: Optuna's optimisation history and parameter
importances, and validation accuracy against cost (results/studies/STUDY-*.png)."""
from __future__ import annotations

from pathlib import Path

from mlp import results, search


def studies(folder: Path) -> list:
    """The studies of the embedded journal (none where no search has run)."""
    if not search.journal_path(folder).exists():
        return []
    import optuna
    store = search.storage(None, folder)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(store))
    return [optuna.load_study(study_name=n, storage=store) for n in names]


def importances(study, top: int = 3) -> dict[str, float]:
    import optuna
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 4:
        return {}
    ranked = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())  # (fANOVA needs scikit-learn)
    return dict(list(ranked.items())[:top])


def render_studies(folder: Path) -> str:
    found = studies(folder)
    if not found:
        return "No study yet: `make search FAMILY=cnn AT=60 TRIALS=32` starts one (results/studies/search.journal)."
    from optuna.trial import TrialState
    tables = results.speed_tables(folder)
    lines = ["| study | complete | pruned | failed | best validation (trial, cost) | trained | spared by pruning | "
             "what mattered most (PED-ANOVA importance) |", "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for st in found:
        n = search.tally(st)
        spent, spared = search.saved_seconds(st)
        best = search.best_trial(st)
        cell = ""
        if best is not None:
            rec = results.load(Path(folder) / best.user_attrs["record"], results.RUN_KEYS)
            c = results.cost(rec, tables)
            cell = (f"{100 * best.value:.2f} % (trial {best.number}, {c.mark if c else ''}"
                    f"{c.seconds if c else float('nan'):.0f} s)")
        imp = ", ".join(f"{k} {v:.2f}" for k, v in importances(st).items())
        lines.append(f"| `{st.study_name}` | {n[TrialState.COMPLETE]} | {n[TrialState.PRUNED]} | "
                     f"{n[TrialState.FAIL]} | {cell} | {spent:,.0f} s | {spared:,.0f} s | {imp} |")
    lines += ["", "Seconds are the development CPU's, by each trial's speed row (timed beside a network of the speed "
              "table, mlp/speed.relative_row). Failed: a worker died mid-trial (trials over a study's cap are not "
              "counted). Figures per study (history, importances, cost): " + "; ".join(
                  ", ".join(f"[{st.study_name} {k}](../results/studies/{st.study_name}-{k}.png)"
                            for k in ("history", "importances", "cost")) for st in found) + "."]
    return "\n".join(lines)


def plot_studies(folder: Path):
    """Per study, beside its journal: STUDY-history.png and STUDY-importances.png (Optuna's own plots), and
    STUDY-cost.png, validation accuracy against each complete trial's cost."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm
    tables = results.speed_tables(folder)
    out = Path(folder) / "studies"
    for st in studies(folder):
        done = st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not done:
            continue
        ovm.plot_optimization_history(st).figure.savefig(out / f"{st.study_name}-history.png", dpi=80,
                                                         bbox_inches="tight")
        if len(done) >= 4:
            ovm.plot_param_importances(st, evaluator=optuna.importance.PedAnovaImportanceEvaluator()).figure \
                .savefig(out / f"{st.study_name}-importances.png", dpi=80, bbox_inches="tight")
        costs = [results.cost(results.load(Path(folder) / t.user_attrs["record"]), tables) for t in done]
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        ax.scatter([c.seconds if c else float("nan") for c in costs], [100 * t.value for t in done], s=18)
        ax.set(xlabel="cost (development-CPU s)", ylabel="validation accuracy (%)",
               title=f"{st.study_name}: accuracy against cost, {len(done)} complete trials")
        fig.savefig(out / f"{st.study_name}-cost.png", dpi=80)
        plt.close("all")
