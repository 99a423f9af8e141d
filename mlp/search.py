"""The recipe search: one Optuna engine for every family (the baselines and the all-MLP), at a budget of
development-CPU seconds. A family's search space is a function from an Optuna trial to the fields it changes in
its base preset (`SPACES`); the objective is the validation accuracy of a run whose epochs fit the budget.

- **Cost before training.** A trial's network is timed here beside a network of the development CPU's speed
  table (`REFERENCE`, same family) in interleaved rounds, and scaled to it (mlp/speed.relative_row): so its
  epochs fit the budget on any CPU, and the record carries the row it was costed by (mlp/results.cost).
- **Pruning** on the one-view validation after every epoch (Optuna's median pruner); a pruned trial keeps the
  epochs it trained and those it was spared, so the study can say what pruning saved.
- **Storage.** Embedded by default: one Optuna journal file, results/studies/search.journal, holding a study per
  family and budget (FAMILY-BUDGET): text, appended to, so it diffs in git; several processes on one machine
  share it through a file lock, and optuna-dashboard reads it whole (`make dashboard`). A URL
  (postgresql://...) lets several machines work on one study; there a heartbeat fails the trial of a worker that
  died, and on a journal a worker fails the trials of dead processes of its own host.
- **A cap** counts the study's finished trials (complete or pruned) across workers: a trial that would go over
  it fails at once, marked `over_cap`, and its worker stops.
- Every complete trial is a record in results/trials/ (search-FAMILY-BUDGET-tNNNN.json), like any trial.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from mlp import records, results
from mlp.recipe import get_preset
from model import mixer_blocks

FAMILIES = ("cnn", "mixer", "lenet", "d2l-mlp", "softmax")
BASE = {"cnn": "cnn", "mixer": "quick", "lenet": "lenet", "d2l-mlp": "d2l-mlp", "softmax": "softmax"}
# The development CPU's table row each family's trials are timed beside (the same kind of operations).
REFERENCE = {"cnn": "cnn-600", "mixer": "quick", "lenet": "lenet-1800", "d2l-mlp": "d2l-mlp-60",
             "softmax": "softmax-60"}
MAX_EPOCHS = {"softmax": 100, "d2l-mlp": 100, "lenet": 400}  # converged long before; the rest: what fits
# Seconds (database storages): a worker beats every HEARTBEAT; a trial not heard from for GRACE is failed by the
# next worker that starts a trial. MLP_SEARCH_HEARTBEAT="INTERVAL,GRACE" changes them (the tests shorten them).
HEARTBEAT, GRACE = map(int, os.environ.get("MLP_SEARCH_HEARTBEAT", "60,180").split(","))
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# TPE's `group` and the database heartbeat are marked experimental: used knowingly, no warning per worker
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class OverCap(Exception):
    """The study already has its cap of finished (or running) trials: this one is not run."""


# --- the spaces ---------------------------------------------------------------------------------------------

def augmentation(t: optuna.Trial) -> dict:
    """Training augmentation and the evaluation views that go with it."""
    aug = t.suggest_categorical("augment", ["none", "flip", "shift1", "shift2"])
    out = dict(augment=aug != "none", shift=int(aug[-1]) if aug.startswith("shift") else 0,
               erase=t.suggest_float("erase", 0.0, 0.4) if aug != "none" else 0.0,
               flip_tta=t.suggest_categorical("flip_tta", [False, True]))
    out["shift_tta"] = t.suggest_int("shift_tta", 0, 1) if aug.startswith("shift") else 0
    return out


def optimiser(t: optuna.Trial, choices: list[str]) -> dict:
    """Optimiser, learning rate (log scale, per optimiser), decay, schedule and warm-up (a share of the run)."""
    opt = t.suggest_categorical("optimizer", choices)
    lo, hi = {"nesterov": (0.01, 0.3), "sgd": (0.01, 1.0), "muon": (1e-3, 1e-2), "adamw": (3e-4, 3e-2)}[opt]
    # Decay per optimiser: SGD's steps are ~30x AdamW's, so is its decay per step at one weight_decay (the
    # first full-data trial, Nesterov at lr 0.11 with 0.064, validated 47 %)
    decay = (1e-5, 3e-3) if opt in ("sgd", "nesterov") else (1e-4, 0.2)
    return dict(optimizer=opt, lr=t.suggest_float(f"lr_{opt}", lo, hi, log=True),
                weight_decay=t.suggest_float(f"weight_decay_{'sgd' if opt == 'nesterov' else opt}", *decay,
                                             log=True),
                schedule=t.suggest_categorical("schedule", ["cosine", "onecycle"]),
                warmup_share=t.suggest_float("warmup_share", 0.0, 0.3),
                batch_size=t.suggest_categorical("batch_size", [64, 128, 256]),
                label_smoothing=t.suggest_float("label_smoothing", 0.0, 0.2),
                ema=t.suggest_categorical("ema", [0.0, 0.99, 0.998]))


def cnn_space(t: optuna.Trial) -> dict:
    return dict(width=t.suggest_categorical("width", [8, 12, 16, 24, 32]), depth=t.suggest_int("depth", 1, 2),
                stem_stride=t.suggest_int("stem_stride", 1, 2), **optimiser(t, ["adamw", "nesterov"]),
                **augmentation(t))


def mixer_space(t: optuna.Trial) -> dict:
    """MixerBlock networks (model.py): patch size, width, depth, token and feature MLP widths."""
    patch, dim = t.suggest_categorical("patch", [4, 7]), t.suggest_categorical("dim", [64, 96, 128])
    blocks = mixer_blocks((28 // patch) ** 2, dim, depth=t.suggest_int("depth", 2, 4),
                          token_hidden=t.suggest_categorical("token_hidden", [16, 32, 64]),
                          feature_hidden=dim * t.suggest_int("feature_ratio", 2, 4))
    return dict(patch=patch, dim=dim, blocks=[dict(tokens=b.tokens, features=b.features) for b in blocks],
                act=t.suggest_categorical("act", ["relu", "gelu"]),
                drop_path=t.suggest_float("drop_path", 0.0, 0.1), **optimiser(t, ["muon", "adamw"]),
                **augmentation(t))


def book_space(t: optuna.Trial) -> dict:
    """The d2l book's networks: their shape is fixed; the recipe is searched."""
    return dict(**optimiser(t, ["sgd", "adamw"]), **augmentation(t))


SPACES = {"cnn": cnn_space, "mixer": mixer_space, "lenet": book_space, "d2l-mlp": book_space,
          "softmax": book_space}


def configure(family: str, fields: dict, epochs: int):
    """The model config and recipe of a trial: the base preset with `fields`, `epochs` of them, the warm-up a
    share of them, and every view validated at the last epoch only (one view after each, for pruning)."""
    fields = dict(fields)
    warmup = fields.pop("warmup_share", 0.0) * epochs
    return get_preset(BASE[family], **fields, epochs=epochs, warmup_epochs=warmup, val_every=epochs, val_from=1)


# --- storage and studies ---------------------------------------------------------------------------------------

def study_name(family: str, budget: int) -> str:
    return f"{family}-{budget}"


def journal_path(folder: Path = results.HERE) -> Path:
    return Path(folder) / "studies" / "search.journal"


def storage(url: str | None, folder: Path = results.HERE):
    """The embedded journal (`journal_path`), or the database at `url` (with a heartbeat)."""
    if url:
        from sqlalchemy.exc import DBAPIError
        for attempt in range(5):  # workers that start together on a new database race to create its tables
            try:
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
            except DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(1 + attempt)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    path = journal_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def open_study(family: str, budget: int, url: str | None = None, folder: Path = results.HERE, seed=None):
    sampler = optuna.samplers.TPESampler(n_startup_trials=8, multivariate=True, group=True, constant_liar=True,
                                         seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=1)
    return optuna.create_study(study_name=study_name(family, budget), storage=storage(url, folder),
                               direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True)


def fail_dead(study: optuna.Study) -> list[int]:
    """Fail the running trials of this host's processes that no longer exist (a journal has no heartbeat)."""
    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") == host and "pid" in t.user_attrs and not records.alive(t.user_attrs["pid"]):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            failed.append(t.number)
    return failed


def counted(study: optuna.Study, before: int | None = None) -> int:
    """Trials that count against the cap (finished or running), of those numbered below `before`."""
    return sum(t.state in (*FINISHED, TrialState.RUNNING) and (before is None or t.number < before)
               for t in study.get_trials(deepcopy=False))


def best_trial(study: optuna.Study):
    """The complete trial best on validation (None before one completes)."""
    return max(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value, default=None)


def tally(study: optuna.Study) -> dict:
    """Trials per state; a trial failed for being over the cap counts apart ("over_cap"), not as failed."""
    trials = study.get_trials(deepcopy=False)
    n = {s: sum(t.state == s for t in trials) for s in TrialState}
    n["over_cap"] = sum(bool(t.user_attrs.get("over_cap")) for t in trials)
    n[TrialState.FAIL] -= n["over_cap"]
    return n


def saved_seconds(study: optuna.Study) -> tuple[float, float]:
    """(development-CPU seconds the study's trials trained, seconds pruning spared them)."""
    spent = spared = 0.0
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        per = t.user_attrs.get("epoch_seconds", 0.0)
        spent += per * t.user_attrs.get("epochs_trained", 0)
        spared += per * (t.user_attrs.get("epochs", 0) - t.user_attrs.get("epochs_trained", 0))
    return spent, spared


def warm_start(study: optuna.Study, source: optuna.Study, best: int = 4) -> int:
    """Queue the best complete trials of `source` (another budget's study) as this new study's first trials."""
    if study.trials:
        return 0
    done = sorted(source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    for t in done[:best]:
        study.enqueue_trial(t.params, user_attrs={"warm_start": f"{source.study_name} trial {t.number}"})
    return len(done[:best])


# --- the objective and a worker ----------------------------------------------------------------------------------

def fitting(family: str, fields: dict, row: dict, budget: float) -> int:
    """The most epochs of a trial whose cost by `row` (training and validation passes) fits the budget."""
    fit, most = 0, MAX_EPOCHS.get(family, 10_000)
    while fit < most and results.row_cost(row, configure(family, fields, fit + 1)[1].to_dict(), fit + 1)[0] <= budget:
        fit += 1
    return fit


class Objective:
    """One trial: its fields from the family's space, its network timed (or its row reused from an earlier
    trial of the study), its epochs from the budget, a run of train.py's kind with pruning, the record."""

    def __init__(self, family: str, budget: int, cap: int, folder: Path = results.HERE, runs: Path = Path("runs"),
                 train_limit=None, eval_limit=None, probe_seconds: float = 2.0, probe_rounds: int = 2, log=print):
        self.family, self.budget, self.cap, self.folder, self.runs = family, budget, cap, Path(folder), Path(runs)
        self.train_limit, self.eval_limit, self.log = train_limit, eval_limit, log
        self.probe = dict(seconds=probe_seconds, rounds=probe_rounds)

    def row(self, study: optuna.Study, model, recipe) -> dict:
        from mlp import speed
        fp = results.fingerprint(model.to_dict(), recipe.to_dict(), "fp32")
        dev = results.dev_table(results.speed_tables(self.folder)) or results.dev_table(results.speed_tables())
        if dev is None:
            raise RuntimeError("no speed table of the development CPU in results/speed/: a search costs its trials "
                               "from it (make speed on that CPU)")
        if fp in results.by_fingerprint(dev):
            return results.by_fingerprint(dev)[fp]
        for t in study.get_trials(deepcopy=False):
            row = t.user_attrs.get("speed_row")
            if row and row["fingerprint"] == fp and row["via"].get("train_limit") == self.train_limit:
                return row
        ref = REFERENCE[self.family]
        return speed.relative_row(model, recipe, get_preset(ref), ref, dev["networks"][ref],
                                  train_limit=self.train_limit, **self.probe)

    def __call__(self, trial: optuna.Trial) -> float:
        from mlp.runner import RunConfig, run
        study = trial.study
        fail_dead(study)
        if counted(study, before=trial.number) >= self.cap:
            trial.set_user_attr("over_cap", True)
            study.stop()
            raise OverCap(f"the study has its {self.cap} trials")
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        fields = SPACES[self.family](trial)
        share = trial.suggest_float("budget_share", 0.5, 1.0)
        row = self.row(study, *configure(self.family, fields, 1))
        trial.set_user_attr("speed_row", row)
        fit = fitting(self.family, fields, row, self.budget)
        if fit == 0:
            trial.set_user_attr("reason", "not one epoch fits the budget")
            raise optuna.TrialPruned("not one epoch fits the budget")
        epochs = max(1, round(share * fit))
        model, recipe = configure(self.family, fields, epochs)
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("epoch_seconds", results.row_cost(row, recipe.to_dict(), epochs)[0] / epochs)
        name = f"search-{study.study_name}-t{trial.number:04d}"
        out = self.runs / name
        if out.exists():  # a scratch directory of an earlier study of this name (the storage says: not this trial)
            shutil.rmtree(out)

        def until(r: dict) -> bool:  # pruned: stop here, without the run's closing validation and test pass
            trial.report(r["val_acc_1view"], r["epoch"])
            trial.set_user_attr("epochs_trained", r["epoch"])
            if r["epoch"] < epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {r['epoch']} of {epochs}")
            return False

        self.log(f"trial {trial.number}: {epochs} of {fit} fitting epochs, "
                 f"{results.row_cost(row, recipe.to_dict(), epochs)[0]:.0f} of {self.budget} s")
        cfg = RunConfig(preset=BASE[self.family], seed=0, out_dir=out, device="cpu", precision="fp32", live=False,
                        progress=False, train_limit=self.train_limit, eval_limit=self.eval_limit,
                        command=f"python -m tools.search search {self.family} {self.budget} (trial {trial.number})")
        try:
            done = run(model, recipe, cfg, until=until, log=lambda line: None)
        except (optuna.TrialPruned, FloatingPointError) as e:  # (a rate too high for the recipe: a result too)
            trial.set_user_attr("reason", str(e))
            shutil.rmtree(out, ignore_errors=True)  # nothing of a pruned run is kept but its trial
            raise optuna.TrialPruned(str(e)) from e
        if done.test_acc is None:  # Ctrl-C: the trial fails, and the search stops (run it again to go on)
            raise KeyboardInterrupt
        path = results.keep_run(out, self.folder, kind="trials", force=True, study=study.study_name,
                                trial=trial.number, params=trial.params, speed_row=row)
        trial.set_user_attr("record", f"trials/{path.name}")
        return done.metrics["val_acc"]


def work(family: str, budget: int, cap: int, url: str | None = None, folder: Path = results.HERE,
         warm_from: int | None = None, progress: bool = True, **objective) -> optuna.Study:
    """Run trials of the study FAMILY-BUDGET until it has `cap` finished ones (with every other worker)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # (a trial over the cap fails by design: no traceback)
    study = open_study(family, budget, url, folder)
    fail_dead(study)
    if warm_from is not None:
        queued = warm_start(study, open_study(family, warm_from, url, folder))
        if queued:
            print(f"{study.study_name}: starts from the {queued} best trials of {family}-{warm_from}")
    finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    if finished >= cap:
        print(f"{study.study_name}: {finished} trials finished, the cap is {cap}: nothing to do")
        return study
    from tqdm import tqdm
    bar = tqdm(total=cap, initial=finished, desc=study.study_name, unit="trial", disable=not progress)

    def tick(study: optuna.Study, trial):
        bar.n = min(cap, len(study.get_trials(deepcopy=False, states=FINISHED)))
        best = best_trial(study)
        if best is not None:
            bar.set_postfix_str(f"best {100 * best.value:.2f} % (trial {best.number})")
        bar.refresh()

    log = objective.pop("log", None) or (bar.write if progress else print)
    try:
        study.optimize(Objective(family, budget, cap, folder, log=log, **objective), callbacks=[tick],
                       catch=(OverCap,), gc_after_trial=True)
    finally:
        bar.close()
    return study
