import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import my_utils as mu  # noqa: E402


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


def train_cli(*args, request, capsys):
    """train.py's command line, as a process for a case marked `process`, else in this process (`train_main`).
    Returns (exit code, stderr)."""
    if request.node.get_closest_marker("process"):
        r = train_py(*args)
        return r.returncode, r.stderr
    code, _, err = train_main(*args, capsys=capsys)
    return code, err


def train_main(*args, capsys):
    """train.py's command line in this process (`train.main`): for checks that end before training, where a
    new process would spend its seconds importing torch. Returns (exit code, stdout, stderr)."""
    import train
    capsys.readouterr()
    try:
        train.main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


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


def finished_run(tmp_path_factory, *args):
    out = tmp_path_factory.mktemp("straight")
    r = train_py(*args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out
