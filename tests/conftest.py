import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import my_utils as mu

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def arrays():
    """The real Fashion-MNIST (fetched by `make data` before the tests run)."""
    return mu.load_arrays()


@pytest.fixture(scope="session")
def raw_dir():
    return mu.fetch_fashion_mnist()


TIMING = {"seconds", "eval_seconds"}


def train_py(*args, env=None, timeout=600):
    """train.py as a real process, from the repository root."""
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=timeout)


def train_cli(*args, request):
    """train.py's command line, as a process for a case marked `process`, else in this process (`train_here`)."""
    return train_py(*args) if request.node.get_closest_marker("process") else train_here(*args)


def train_here(*args) -> subprocess.CompletedProcess:
    """train.py's command line in this process (`train.main`), answered as `train_py` answers: for runs whose
    process boundary is not what a test checks (a refusal, a run to compare with, a resume after a kill),
    where a new process would spend ~7 s importing torch. Deterministic on a CPU, as a process is."""
    return main_here("train", *args)


def main_here(script: str, *args) -> subprocess.CompletedProcess:
    """`python SCRIPT.py ARGS` as `SCRIPT.main(ARGS)` in this process: its exit code (main's int, or SystemExit's),
    stdout and stderr."""
    main = importlib.import_module(script).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = main(list(args))
            code = result if isinstance(result, int) else 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
    return subprocess.CompletedProcess([f"{script}.py", *args], code, out.getvalue(), err.getvalue())


def start_train_py(*args):
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path, p, timeout=300):
    """Wait until `path` exists while process `p` runs (fail if it exits first)."""
    deadline = time.time() + timeout
    while not path.exists():
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


@pytest.fixture(scope="session")
def gpu_dry_run(tmp_path_factory):
    """tools/gpu_results.py --dry-run: the whole GPU programme on the CPU with tiny sizes. Its last part is
    `tools/bench.py --quick --device cpu`, whose bench_gpu.json test_bench reads too (one run of it, not two).
    Returns (its output folder, the finished process)."""
    out = tmp_path_factory.mktemp("gpu") / "gpu"
    r = subprocess.run([sys.executable, "-m", "tools.gpu_results", "--dry-run", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    return out, r


def check_live_curves(metrics: dict):
    """What the notebook's curves show, read from the run's record (curves.png is drawn from it): a validation
    point every epoch; several training points inside every epoch; and no step at an epoch boundary larger than
    the curve's own noise, taken as its largest step within an epoch after the first: at most 3 times that (a
    running mean restarting each epoch drew a cliff ten times as large)."""
    history = metrics["history"]
    assert all(r["val_acc_1view"] is not None for r in history), "a validation point every epoch"
    points = [p for r in history for p in r["points"]]
    for r in history:
        assert sum(r["epoch"] - 1 < x < r["epoch"] for x, _, _ in r["points"]) >= 2, "training points inside each epoch"
    for i in (1, 2):  # loss, accuracy
        steps = [(a[0], abs(b[i] - a[i])) for a, b in zip(points, points[1:])]
        across = [s for x, s in steps if x == int(x) and x >= 1]  # from an epoch's last point to the next epoch's first
        within = [s for x, s in steps if x != int(x) and x >= 1]
        assert across and within and max(across) <= 3 * max(within), (i, across, within)


def finished_run(tmp_path_factory, *args):
    out = tmp_path_factory.mktemp("straight")
    r = train_here(*args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


DEV_HARDWARE = "AMD EPYC (2 cores, 2 threads, AVX2)"  # the development CPU, as hardware.describe names it


def write_speed_table(folder, rows: dict, cpu_id: dict | None = None, rounds: list[dict] | None = None):
    """A speed table (mlp/speed.py's schema) in folder/speed/: name -> (preset, seconds per epoch, seconds per
    validation with every view[, one view]), each timed alike in every round; the development CPU's unless
    `cpu_id` names another."""
    from mlp import cpu, results
    from mlp.recipe import get_preset
    cpu_id = cpu_id or dict(cpu.DEV_CPU, flags=["avx2"])
    networks = {}
    for name, (preset, train, val, *one) in rows.items():
        model, recipe = get_preset(preset) if isinstance(preset, str) else preset
        stat = lambda x: dict(median=x, min=x, max=x, n=5)  # noqa: E731
        networks[name] = dict(fingerprint=results.fingerprint(model.to_dict(), recipe.to_dict(), "fp32"),
                              model=model.to_dict(), recipe={}, precision="fp32", steps=430,
                              views=model.views, train_epoch_s=stat(train), eval_s=stat(val),
                              eval_one_s=stat(one[0] if one else val))
    rounds = rounds or [dict(index=i, steal=0.0, others=0.0, under_load=False,
                             networks={n: dict(train_epoch_s=r["train_epoch_s"]["median"]) for n, r in networks.items()})
                        for i in range(5)]
    table = dict(schema=1, cpu=cpu_id, key=cpu.key(cpu_id), torch="2.x", git_commit="abc1234", date="2026-12-07",
                 rounds_used=[r["index"] for r in rounds], rounds=rounds, under_load=False, networks=networks)
    (Path(folder) / "speed").mkdir(parents=True, exist_ok=True)
    (Path(folder) / "speed" / f"{table['key']}.json").write_text(json.dumps(table))
    return table
