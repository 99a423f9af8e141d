"""The recorded results and what decides with them, in one place for the pages (tools/render.py), the searches,
the study and the budget: loading records, "a record of its preset as the preset is now", a run's cost from the
speed tables, which runs an equal-cost cell takes, and the verdict between two cells.

- **Cost** is computed, not read off a wall clock: a run's epochs x its network's seconds per epoch, plus its
  validation passes x their seconds, from the development CPU's speed table (results/speed/, `make speed`).
  A network not timed there is costed from another CPU's table at the ratio measured for its own family
  (marked provisional), else from its own wall clock and its session's calibration (provisional too).
- **Verdicts** are Welch's t-test, two-sided, at alpha = 0.05, on the per-seed values.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from mlp import cpu, records

ROOT = records.ROOT
HERE = ROOT / "results"
SCHEMA = 2  # records written from now on say so (`schema`); older records have none and read the same
ALPHA = 0.05
BASELINES = ("softmax", "d2l-mlp", "lenet", "cnn")
BUDGETS = (60, 600, 1800)
SPEED_FIELDS = ("batch_size", "augment", "shift", "erase", "optimizer", "ema", "val_size")
# Model fields added after rows were timed: at their default they stay out of the hash, so those rows still match.
LATER_DEFAULTS = {"stem_stride": 1}
RUN_KEYS = ("preset", "seed", "test_acc", "val_acc", "best_epoch", "epochs", "train_seconds", "hardware",
            "precision", "git_commit", "command", "history")


class ResultsError(ValueError):
    pass


def load(path: Path, required: tuple[str, ...] = ()) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path} is missing; re-create it with the command named in README.md")
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not valid JSON ({e}); re-create it with the command that wrote it")
    missing = [k for k in required if k not in data]
    if missing:
        raise ResultsError(f"{path} lacks {missing}; it was not written by this repo's train.py/make run/bench.py")
    return data


def load_runs(folder: Path = HERE, kind: str = "runs") -> list[dict]:
    return [dict(load(f, RUN_KEYS), file=f.name) for f in sorted((Path(folder) / kind).glob("*.json"))]


def keep_run(run: Path, folder: Path = HERE, kind: str = "runs", force: bool = False, **extra) -> Path:
    """Keep a train.py run's metrics.json as results/<kind>/<run name>.json (no checkpoints), with `extra`
    fields. An existing record is a result a table may cite: it is replaced only with `force`, saying so."""
    metrics = load(Path(run) / "metrics.json", RUN_KEYS)
    target = Path(folder) / kind / f"{Path(run).name}.json"
    if target.exists() and not force:
        raise ResultsError(f"{target} already holds a record; give the run another name, or replace the record with "
                           f"--force (make: FORCE=1)")
    if target.exists():
        print(f"replacing {target}")
    target.parent.mkdir(exist_ok=True)
    records.atomic_write(target, json.dumps(dict(metrics, schema=SCHEMA, **extra), indent=2))
    return target


def frontier_points(folder: Path = HERE) -> list[dict]:
    """Every full-data run and trial in results/runs/ and results/trials/ (subset and curve-only runs aside)."""
    points = []
    for kind in ("runs", "trials"):
        for f in sorted((folder / kind).glob("*.json")):
            r = load(f, RUN_KEYS)
            if not full_data(r):
                continue
            points.append(dict(r, file=f"{kind}/{f.name}", kind=kind))
    return sorted(points, key=lambda r: r["train_seconds"])


def full_data(r: dict) -> bool:
    """A run trained on every training image and evaluated on every validation and test image, without a test
    curve: subset, smoke (eval_limit) and learning-curve runs are reported elsewhere, never as results."""
    return not (r.get("train_limit") or r.get("eval_limit") or any("test_acc" in h for h in r["history"]))


def current_presets() -> dict[str, dict]:
    """Each preset's model config and recipe as the code defines them now."""
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


def is_current(r: dict, presets: dict[str, dict] | None = None) -> bool:
    """A run of its preset as the preset is now: the model config and recipe it recorded equal the preset's
    current ones, on all the data, its whole schedule, neither capped nor extended. Its file name decides
    nothing: a run with --set, other --epochs, a cap or an extension is a trial, whatever it is called."""
    now = (presets or current_presets()).get(r["preset"])
    return (now is not None and full_data(r) and not r.get("capped") and not r.get("extended")
            and as_now(r) == now)


# --- cost ------------------------------------------------------------------------------------------------------

def fingerprint(model: dict, recipe: dict, precision: str) -> str:
    """What sets a network's speed, as a short hash: its model config (as the code reads it now), the recipe's
    speed fields (batch, augmentation, optimiser, averaging) and the precision; not its learning rate,
    schedule or epochs."""
    speed = {k: recipe.get(k) for k in SPEED_FIELDS}
    model = {k: v for k, v in model.items() if LATER_DEFAULTS.get(k, object()) != v}
    if not speed["augment"]:
        speed["shift"] = None  # the shift is only drawn where augment is on
    text = json.dumps([model, speed, precision], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def record_fingerprint(r: dict) -> str | None:
    now = as_now(r)
    return None if now is None else fingerprint(now["model"], now["recipe"], r.get("precision", "fp32"))


def speed_tables(folder: Path = HERE) -> list[dict]:
    return [load(f, ("schema", "cpu", "networks")) for f in sorted((Path(folder) / "speed").glob("*.json"))]


def dev_table(tables: list[dict]) -> dict | None:
    return next((t for t in tables if cpu.is_dev(t["cpu"])), None)


def family(model: dict) -> str:
    """Networks whose speed scales alike between CPUs: the all-MLPs, the dense baselines, the convolutions."""
    arch = model.get("arch")
    return "mlp" if arch is None else "conv" if arch in ("lenet", "cnn") else "dense"


def by_fingerprint(table: dict) -> dict[str, dict]:
    return {row["fingerprint"]: row for row in table["networks"].values()}


def family_ratio(dev: dict, other: dict, fam: str) -> float | None:
    """The development CPU's seconds per second of `other`'s, the median over the networks of `fam` both timed."""
    mine, theirs = by_fingerprint(dev), by_fingerprint(other)
    ratios = [mine[f]["train_epoch_s"]["median"] / row["train_epoch_s"]["median"] for f, row in theirs.items()
              if f in mine and family(row["model"]) == fam]
    return statistics.median(ratios) if ratios else None


@dataclass
class Cost:
    seconds: float          # development-CPU seconds: training, and validation passes
    train: float            # of which training
    test: float = 0.0       # one test pass with every view (not in `seconds`: the budget buys training)
    provisional: str = ""   # why not from the development CPU's own table ("" where it is)

    @property
    def mark(self) -> str:
        return "≈ " if self.provisional else ""


def passes(recipe: dict, epochs: int, views: int) -> tuple[int, int]:
    """(validations with every view, one-view validations) a run of `epochs` epochs makes (mlp/loop.py: every
    epoch one view, where the model has more, plus every view at the epochs `Recipe.validates`)."""
    from mlp.recipe import Recipe
    rec = Recipe(**recipe)
    multi = sum(rec.validates(e) or e == epochs for e in range(1, epochs + 1))
    return multi, epochs if views > 1 else epochs - multi


def row_cost(row: dict, recipe: dict, epochs: int, scale: float = 1.0) -> tuple[float, float, float]:
    """(training and validation, training, one test pass) seconds of `epochs` epochs of a speed table's row."""
    multi, one = passes(recipe, epochs, row["views"])
    train, val = epochs * row["train_epoch_s"]["median"], row["eval_s"]["median"]
    test = val * 10_000 / max(1, recipe.get("val_size") or 5000)  # the test split is 10,000 images
    return scale * (train + multi * val + one * row["eval_one_s"]["median"]), scale * train, scale * test


def epochs_within(row: dict, recipe: dict, budget: float, most: int | None = None) -> int:
    """The most whole epochs of a speed table's row whose cost (training and validation passes) fits `budget`."""
    fit = 0
    while (most is None or fit < most) and row_cost(row, recipe, fit + 1)[0] <= budget:
        fit += 1
    return fit


def cost(r: dict, tables: list[dict]) -> Cost | None:
    """A run's cost in development-CPU seconds (see the module's docstring); None where nothing can cost it."""
    now, dev = as_now(r), dev_table(tables)
    fp = None if now is None else fingerprint(now["model"], now["recipe"], r.get("precision", "fp32"))
    row = dev and by_fingerprint(dev).get(fp)
    if row:
        return Cost(*row_cost(row, now["recipe"], r["epochs"]))
    for other in tables:
        row = dev and other is not dev and by_fingerprint(other).get(fp)
        ratio = row and family_ratio(dev, other, family(now["model"]))
        if ratio:
            return Cost(*row_cost(row, now["recipe"], r["epochs"], ratio), f"timed on {other['cpu']['model']} "
                        f"({other['cpu']['isa']}) only, × {ratio:.2f} (its family's ratio)")
    probe = r.get("speed_row")
    if probe and probe.get("fingerprint") == fp:
        return Cost(*row_cost(probe, now["recipe"], r["epochs"]), f"timed by its search beside {probe['via']['ref_name']} "
                    f"on {probe['via']['cpu']}, scaled to that network's row (`make speed SPEED_ARGS=--candidates` "
                    f"times it in the table's rounds)")
    secs = records.dev_seconds(r)
    if secs is None:
        return None
    evals = sum(h.get("eval_seconds", 0.0) for h in r["history"]) * secs / r["train_seconds"]
    return Cost(secs + evals, secs, 0.0, "not in a speed table: its own wall clock at its session's calibration")


def measured_over_predicted(r: dict, tables: list[dict]) -> float | None:
    """A run's training seconds on its wall clock over those its own CPU's speed table predicts (a check of the
    table, and of the host's load while the run trained); None where its CPU has no table that timed it."""
    ident, fp = cpu.from_hardware(r["hardware"]), record_fingerprint(r)
    for t in tables:
        row = by_fingerprint(t).get(fp)
        if row and cpu.same(ident, t["cpu"]):
            return r["train_seconds"] / (r["epochs"] * row["train_epoch_s"]["median"])
    return None


def time_to(r: dict, acc: float, tables: list[dict]) -> Cost | None:
    """The cost of a run up to the first epoch whose validation reaches `acc` (None where none does)."""
    _, first = records.time_to_accuracy(r["history"], acc)
    return None if first is None else cost(dict(r, epochs=first, train_seconds=sum(
        h["seconds"] for h in r["history"][:first]), history=r["history"][:first]), tables)


# --- cells and verdicts ---------------------------------------------------------------------------------------

def pooled(rs: list[dict]) -> list[dict]:
    """One run per seed (a seed trained on two CPUs in fp32 gives the same run: the development CPU's, else
    the first by file name)."""
    out = {}
    for r in sorted(rs, key=lambda r: (not cpu.is_dev(r["hardware"]), r["file"])):
        out.setdefault(r["seed"], r)
    return sorted(out.values(), key=lambda r: r["seed"])


MIN_SEEDS = 3  # a candidate cell needs this many seeds: one seed's validation cannot tell a few tenths apart


def study_runs(folder: Path = HERE, name: str = "patch_study.json") -> list[dict]:
    """The patch study's runs as records (its arms are candidates too): each row with the study's precision,
    commit and command; none where the study is not recorded."""
    path = Path(folder) / name
    if not path.exists():
        return []
    st = load(path, ("rows", "precision", "command", "git_commit"))
    return [dict(r, precision=st["precision"], command=st["command"], git_commit=st["git_commit"],
                 device=st.get("device", "cpu"), label=f"{r['arm']} K={r['patch']}",
                 file=f"{name}: {r['arm']} K={r['patch']} seed {r['seed']}")
            for r in st["rows"] if "model" in r and "history" in r and not r.get("train_limit")]


def candidate_runs(folder: Path = HERE) -> list[dict]:
    """Every full fp32 CPU run recorded (results/runs/, results/trials/, the patch study), whichever CPU."""
    every = load_runs(folder) + load_runs(folder, "trials") + study_runs(folder)
    return [r for r in every if r.get("precision") == "fp32" and str(r.get("device", "cpu")).startswith("cpu")
            and full_data(r) and not r.get("capped") and not r.get("extended")]


def family_of(r: dict) -> str:
    return (r.get("model") or {}).get("arch") or "all-MLP"


def configuration(now: dict) -> str:
    return json.dumps(now, sort_keys=True)


@dataclass
class Cell:
    name: str               # the preset it is, else the study arm, else its first record
    runs: list[dict]        # one per seed
    cost: Cost | None       # the most any of its runs cost

    @property
    def val(self) -> float:
        return statistics.mean(r["val_acc"] for r in self.runs)

    def fits(self, budget: float) -> bool:
        return self.cost is not None and self.cost.seconds <= budget


def cells(runs: list[dict], presets: dict, tables: list[dict]) -> dict[str, list[Cell]]:
    """Per family, every configuration (model config and recipe as the code reads them now) with at least
    MIN_SEEDS seeds among `runs`: a preset's runs, a study arm's, a trial's repeated seeds. Runs of one
    configuration pool across CPUs, one per seed (`pooled`)."""
    groups = {}
    for r in runs:
        now = as_now(r)
        if now is not None:
            groups.setdefault((family_of(r), configuration(now)), []).append(r)
    named = {}
    for name, p in presets.items():
        named.setdefault(configuration(p), name)  # the first preset of that configuration ("default" aliases)
    out = {}
    for (fam, key), rs in groups.items():
        rs = pooled(rs)
        if len(rs) < MIN_SEEDS:
            continue
        name = named.get(key) or variant(rs[0], presets)
        costs = [cost(r, tables) for r in rs]
        worst = None if None in costs else max(costs, key=lambda c: c.seconds)
        out.setdefault(fam, []).append(Cell(name, rs, worst))
    return out


def variant(r: dict, presets: dict) -> str:
    """A configuration that is no preset, named by its preset and the fields it changed: "long with val_from=1"."""
    base, now = presets.get(r["preset"]), as_now(r)
    if base is None:
        return f"{r['preset']} ({r['file']})"
    changed = [f"{k}={json.dumps(v, separators=(',', ':'))}" for part in ("model", "recipe")
               for k, v in now[part].items() if v != base[part].get(k)]
    text = ", ".join(changed)
    return f"{r['preset']} with {text if len(text) <= 60 else text[:57] + '…'}"


def choose(found: list[Cell], budget: float) -> tuple[Cell | None, list[Cell]]:
    """A family's cell at a budget: of its configurations whose cost fits, the best on mean validation accuracy
    (the test set is not read). Also those better on validation that did not fit (their cost, or none)."""
    fit = [c for c in found if c.fits(budget)]
    best = max(fit, key=lambda c: c.val, default=None)
    over = sorted((c for c in found if not c.fits(budget) and (best is None or c.val > best.val)),
                  key=lambda c: -c.val)
    return best, over[:3]


def fits(r: dict, budget: float, tables: list[dict]) -> bool:
    """Whether a run's cost fits a budget: no margin."""
    c = cost(r, tables)
    return c is not None and c.seconds <= budget


def choose_trial(trials: dict[str, dict], budget: float | None, tables: list[dict]) -> str | None:
    """The trial validation chooses (its best epoch's validation accuracy) among those whose cost fits the
    budget; the test set is not read."""
    fair = {n: t for n, t in trials.items() if budget is None or fits(t, budget, tables)}
    return max(fair, key=lambda n: fair[n]["val_acc"]) if fair else None


def searched_trials(arch: str, budget: int, folder: Path = HERE, kinds=("search", "bl")) -> dict[str, dict]:
    """The recorded trials of a family's searches at a budget, by name: the engine's ("search": tNNNN, from
    search-ARCH-BUDGET-tNNNN.json, mlp/search.py) and the hand-named candidates before it ("bl": NAME, with
    refits NAME@Nep, from bl-ARCH-BUDGET-NAME.json)."""
    out = {}
    for kind in kinds:
        prefix = f"search-{arch}-{budget}-t" if kind == "search" else f"bl-{arch}-{budget}-"
        for f in sorted((Path(folder) / "trials").glob(f"{prefix}*.json")):
            name = f.stem.removeprefix(prefix)
            if kind == "bl" and not name[:1].isalpha():
                continue  # bl-cnn-600-w12 is not one of bl-cnn-60-'s
            out[f"t{name}" if kind == "search" else name] = load(f, RUN_KEYS)
    return out


def table_cells(folder: Path = HERE, presets: dict | None = None):
    """Per budget: {family: (cell or None, better cells over budget)} for the baselines and the all-MLP."""
    found = cells(candidate_runs(folder), presets or current_presets(), speed_tables(folder))
    for budget in BUDGETS:
        yield budget, {f: choose(found.get(f, []), budget) for f in (*BASELINES, "all-MLP")}


def budget_verdict(found: dict) -> tuple[Cell | None, Cell | None, Verdict | None]:
    """A budget's verdict (`table_cells`' cells of one budget): the all-MLP cell, the baseline cell best on mean
    validation accuracy, and Welch's test between them on test accuracy (None where either is missing)."""
    mlp = found["all-MLP"][0]
    best = max((c for f, (c, _) in found.items() if f != "all-MLP" and c is not None), key=lambda c: c.val,
               default=None)
    v = None if mlp is None or best is None else compare(
        mlp.name, [r["test_acc"] for r in mlp.runs], best.name, [r["test_acc"] for r in best.runs])
    return mlp, best, v


def preset_runs(preset: str, runs: list[dict], presets: dict) -> list[dict]:
    """A preset's current full fp32 runs on any CPU, one per seed: accuracy in fp32 hardly depends on the CPU
    (the 1,800-s LeNet reproduced across two to the digit), and cost comes from the speed table."""
    return pooled([r for r in runs if r["preset"] == preset and r["precision"] == "fp32" and is_current(r, presets)
                   and str(r.get("device", "cpu")) == "cpu"])


@dataclass
class Verdict:
    a: str
    b: str
    n_a: int
    n_b: int
    diff: float             # mean of a - mean of b
    p: float | None         # Welch's two-sided p; None with fewer than two values a side
    higher_is_better: bool = True

    @property
    def winner(self) -> str | None:
        """a, b, or None (no significant difference, or no test)."""
        if self.p is None or self.p >= ALPHA or self.diff == 0:
            return None
        return self.a if (self.diff > 0) == self.higher_is_better else self.b

    def words(self, unit: str = " points", scale: float = 100.0) -> str:
        stat = f"{scale * self.diff:+.2f}{unit}, n = {self.n_a} and {self.n_b}"
        if self.p is None:
            return f"{stat}: no test (fewer than two seeds a side)"
        said = f"`{self.winner}` is ahead" if self.winner else "no significant difference"
        return f"{stat}, Welch {p_text(self.p)}: {said}"


def p_text(p: float | None) -> str:
    """"p = 0.137", "p < 0.001", or "p: no test" (n < 2)."""
    return "p: no test" if p is None else "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def welch(a: tuple[float, float, int], b: tuple[float, float, int]) -> float | None:
    """Welch's two-sided p for two (mean, sd, n); None where either n < 2. Two samples without spread are
    equal (p = 1) or apart (p = 0)."""
    (ma, sa, na), (mb, sb, nb) = a, b
    if min(na, nb) < 2:
        return None
    if sa == 0 and sb == 0:
        return 1.0 if ma == mb else 0.0
    from scipy import stats
    return float(stats.ttest_ind_from_stats(ma, sa, na, mb, sb, nb, equal_var=False).pvalue)


def compare(name_a: str, xs: list[float], name_b: str, ys: list[float], higher_is_better: bool = True) -> Verdict:
    """The one comparison of the pages: Welch's t-test on two sets of per-seed (or per-round) values."""
    a, b = (records.mean_std(v) + (len(v),) for v in (xs, ys))
    return Verdict(name_a, name_b, len(xs), len(ys), a[0] - b[0], welch(a, b), higher_is_better)


def compare_stats(name_a: str, a: tuple[float, float, int], name_b: str, b: tuple[float, float, int],
                  higher_is_better: bool = True) -> Verdict:
    """`compare` from (mean, sd, n) summaries."""
    return Verdict(name_a, name_b, a[2], b[2], a[0] - b[0], welch(a, b), higher_is_better)


def seconds_per_epoch(name: str, table: dict) -> list[float]:
    """A network's seconds per training epoch in each round of a speed table that timed it (for `compare`)."""
    return [r["networks"][name]["train_epoch_s"] for r in table.get("rounds", [])
            if name in r["networks"] and r["index"] in table["rounds_used"]]

