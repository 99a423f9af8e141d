"""The recipe search (mlp/search.py, tools/search.py): its spaces build valid networks, its trials fit their
budget, and several workers share one study without duplicating or losing a trial: two processes on the embedded
journal, and two on a throwaway PostgreSQL server, where a worker killed mid-trial leaves its trial failed (by
the heartbeat) and another worker finishes the study."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from mlp import results, search
from mlp.nets import build_net

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--train-limit", "256", "--eval-limit", "128", "--probe-seconds", "0.2", "--probe-rounds", "1", "--quiet"]


@pytest.mark.parametrize("family", search.FAMILIES)
def test_spaces_build_valid_networks(family):
    """Every draw of a family's space is a valid model config and recipe, whose network takes a batch."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12 if family in ("cnn", "mixer") else 4):
        trial = study.ask()
        fields = search.SPACES[family](trial)
        model, recipe = search.configure(family, fields, epochs=3)
        assert recipe.epochs == 3 and recipe.val_every == 3 and 0 <= recipe.warmup_epochs <= 0.9
        assert recipe.validates(3) and not recipe.validates(2)  # every view at the end only: one view for pruning
        assert build_net(model)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        study.tell(trial, 0.5)


def test_trial_epochs_fit_the_budget():
    """The epochs a trial gets are the most whose cost by its row fits; one more would not."""
    dev = results.dev_table(results.speed_tables())
    row = dev["networks"]["cnn-600"]
    fields = dict(width=16, augment=False, flip_tta=False, shift_tta=0)
    for budget in (60, 600, 1800):
        fit = search.fitting("cnn", fields, row, budget)
        cost = [results.row_cost(row, search.configure("cnn", fields, e)[1].to_dict(), e)[0] for e in (fit, fit + 1)]
        assert fit >= 1 and cost[0] <= budget < cost[1]


def test_onecycle_schedule():
    """One-cycle: up from lr/25 over the warm-up to the peak, then down to about zero."""
    from mlp.recipe import Recipe
    r = Recipe(epochs=4, schedule="onecycle", warmup_epochs=1)
    f = [r.lr_factor(s, 10) for s in range(40)]
    assert f[0] < 0.1 and max(f) == pytest.approx(1.0) and f.index(max(f)) == 9 and f[-1] < 0.01
    assert all(a <= b for a, b in zip(f[:10], f[1:10])) and all(a >= b for a, b in zip(f[10:], f[11:]))


def test_a_strided_stem_keeps_old_rows():
    """The CNN's stem_stride=2 quarters its operations; at its default the speed table's rows still match."""
    from baselines import BaselineConfig
    from mlp.recipe import get_preset
    model, recipe = get_preset("cnn-600")
    dev = results.dev_table(results.speed_tables())
    assert results.fingerprint(model.to_dict(), recipe.to_dict(), "fp32") in results.by_fingerprint(dev)
    net = build_net(BaselineConfig(width=8, stem_stride=2))
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="stem_stride=3"):
        BaselineConfig(stem_stride=3)


def test_a_pruned_trial_stops_at_once_and_says_what_it_spared(tmp_path):
    """A trial the pruner stops ends after that epoch (no closing validation, no test pass), keeps no run
    directory and no record, and the study counts the epochs it was spared."""
    folder = results_folder(tmp_path)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # prunes all
    study.enqueue_trial(dict(width=8, depth=1, stem_stride=2, optimizer="adamw", lr_adamw=3e-3, weight_decay_adamw=0.01,
                             schedule="cosine", warmup_share=0.1, batch_size=256, label_smoothing=0.1, ema=0.0,
                             augment="none", flip_tta=False, budget_share=1.0))
    objective = search.Objective("cnn", 1800, cap=1, folder=folder, runs=tmp_path / "runs", train_limit=256,
                                 eval_limit=128, probe_seconds=0.2, probe_rounds=1, log=lambda *_: None)
    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.PRUNED and t.user_attrs["epochs_trained"] == 1 < t.user_attrs["epochs"]
    assert t.intermediate_values.keys() == {1} and "pruned after epoch 1" in t.user_attrs["reason"]
    assert not list(tmp_path.glob("runs/*")) and not (folder / "trials").exists()
    spent, spared = search.saved_seconds(study)
    assert spared == pytest.approx(spent * (t.user_attrs["epochs"] - 1)) and spent > 0


def worker(folder: Path, trials: int, *extra, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tools.search", "--results", str(folder), *extra, "search", "cnn",
                             "60", "--trials", str(trials), "--runs", str(folder / "runs"), *SMOKE], cwd=ROOT,
                            env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def results_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    shutil.copytree(ROOT / "results" / "speed", folder / "speed")
    return folder


def check_study(study: optuna.Study, folder: Path, cap: int):
    """`cap` trials finished, none twice, each complete one recorded once; failures only over the cap or killed."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in search.FINISHED]
    assert len(finished) == cap, [(t.number, t.state) for t in trials]
    assert len({t.number for t in trials}) == len(trials)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    records = sorted((folder / "trials").glob("search-cnn-60-t*.json"))
    assert sorted(f.stem for f in records) == sorted(f"search-cnn-60-t{t.number:04d}" for t in complete)
    for t in complete:
        r = json.loads((folder / t.user_attrs["record"]).read_text())
        assert r["trial"] == t.number and r["study"] == "cnn-60" and r["val_acc"] == pytest.approx(t.value)
        assert r["epochs"] == t.user_attrs["epochs"] and results.cost(r, results.speed_tables(folder)).seconds <= 60
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    return [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("over_cap")]


def two_workers(folder: Path, cap: int, *extra, env=None):
    procs = [worker(folder, cap, *extra, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs


def kill_mid_trial(folder: Path, cap: int, *extra, env=None) -> int:
    """Start a worker, kill it while a trial trains, and return that trial's number."""
    p = worker(folder, cap, *extra, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="cnn-60", storage=search.storage(extra[1] if extra else None, folder))
        except KeyError:
            continue
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if "epochs" in t.user_attrs]
        if running:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return running[0].number
    os.killpg(p.pid, signal.SIGKILL)
    pytest.fail(f"no trial started training within 300 s: {p.communicate()[0]}")


def test_two_workers_share_the_embedded_journal(tmp_path):
    folder = results_folder(tmp_path)
    two_workers(folder, 4)
    study = search.open_study("cnn", 60, None, folder)
    assert check_study(study, folder, 4) == []
    killed = kill_mid_trial(folder, 6)  # a third worker, killed mid-trial: the next one fails its trial, goes on
    worker(folder, 6).communicate(timeout=600)
    study = search.open_study("cnn", 60, None, folder)
    assert [t.number for t in check_study(study, folder, 6)] == [killed]
    out = subprocess.run([sys.executable, "-m", "tools.search", "--results", str(folder), "status"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "cnn-60: " in out and "1 failed" in out and "mlp/recipe.py CHOSEN: \"cnn-60\"" in out
    from tools import studies  # the page's table and figures of the study
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    table = studies.render_studies(folder)
    assert f"| `cnn-60` | {len(done)} | {6 - len(done)} | 1 |" in table
    studies.plot_studies(folder)
    assert (folder / "studies" / "cnn-60-history.png").stat().st_size > 5000
    assert (folder / "studies" / "cnn-60-cost.png").stat().st_size > 5000
    assert (folder / "studies" / "cnn-60-importances.png").exists() == (len(done) >= 4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on loopback (initdb refuses root: run as the `postgres` user)."""
    how = "install Debian's postgresql (apt-get install postgresql) and run the tests as root, or as a user with it"
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL test: {how}")
        pytest.skip(f"no PostgreSQL to start here: {how}")
    bin_dir, base = bins[-1].parent, Path(tempfile.mkdtemp(prefix="search-pg-"))  # (pytest's tmp dirs are 0700)
    os.chmod(base, 0o755)
    shutil.chown(base, "postgres")

    def as_pg(*cmd, **kw):
        return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], check=True, capture_output=True,
                              text=True, **kw)
    port = free_port()
    as_pg(bin_dir / "initdb", "-D", base / "data", "-A", "trust", "-U", "postgres")
    as_pg(bin_dir / "pg_ctl", "-D", base / "data", "-l", base / "log", "-w", "-o",
          f"-h 127.0.0.1 -p {port} -k {base}", "start")
    try:
        as_pg(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "search")
        yield f"postgresql://postgres@127.0.0.1:{port}/search"
    finally:
        as_pg(bin_dir / "pg_ctl", "-D", base / "data", "-m", "immediate", "stop")
        shutil.rmtree(base)


def test_two_machines_share_a_postgresql_study(tmp_path, postgres):
    folder = results_folder(tmp_path)
    fast = {"MLP_SEARCH_HEARTBEAT": "1,4"}
    two_workers(folder, 4, "--storage", postgres, env=fast)
    study = optuna.load_study(study_name="cnn-60", storage=postgres)
    assert check_study(study, folder, 4) == []
    killed = kill_mid_trial(folder, 6, "--storage", postgres, env=fast)
    time.sleep(5)  # past the grace period: the next worker's first trial fails the silent one
    worker(folder, 6, "--storage", postgres, env=fast).communicate(timeout=600)
    study = optuna.load_study(study_name="cnn-60", storage=postgres)
    assert [t.number for t in check_study(study, folder, 6)] == [killed]


def test_make_search_passes_its_settings():
    made = subprocess.run(["make", "-n", "search", "FAMILY=mixer", "AT=60", "TRIALS=3", "FROM=600",
                           "STORAGE=postgresql://u@h/db"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.replace("\\\n", " ")
    line = next(x for x in made.splitlines() if "tools.search" in x)
    assert "--storage postgresql://u@h/db search mixer 60 --trials 3" in line and "--from 600" in line


def test_the_dashboard_serves_the_studies(tmp_path):
    """`make dashboard`'s command (optuna-dashboard over the journal) serves the studies it holds."""
    import urllib.request
    study = search.open_study("cnn", 60, None, tmp_path)
    t = study.ask()
    t.suggest_int("width", 8, 32)
    study.tell(t, 0.9)
    made = subprocess.run(["make", "-n", "dashboard", "PORT=8765"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.replace("\\\n", " ")
    line = next(x for x in made.splitlines() if "optuna-dashboard" in x)
    assert "--port 8765" in line and "JournalFileStorage results/studies/search.journal" in line
    port = free_port()
    p = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), "--host", "127.0.0.1", "--port",
                          str(port), "--storage-class", "JournalFileStorage", str(search.journal_path(tmp_path))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "cnn-60" not in body:
            time.sleep(0.5)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5).read().decode()
            except OSError:
                pass
        assert '"study_name": "cnn-60"' in body.replace('":"', '": "'), body[:300]
    finally:
        p.terminate()
        p.wait()
