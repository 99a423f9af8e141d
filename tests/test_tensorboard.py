"""Every run writes TensorBoard event files: read back, they are its metrics.json; a real TensorBoard serves them."""
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, train_here

SMALL = ["--preset", "sprint", "--batch-size", "64", "--train-limit", "1500", "--eval-limit", "500", "--quiet",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs side by side, as `make tensorboard` shows runs/: a 3-epoch run made of a 2-epoch run extended
    by a resume (two event files, one history), and a 1-epoch run of another learning rate."""
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "extended", root / "other"
    for args in ([*SMALL, "--epochs", "2", "--out", str(a)], ["--resume", str(a), "--epochs", "3", "--quiet"],
                 [*SMALL, "--epochs", "1", "--lr", "0.002", "--out", str(b)]):
        r = train_here(*args)
        assert r.returncode == 0, r.stderr
    return a, b


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})  # 0: keep every event
    acc.Reload()
    return acc


def scalars(acc, tag) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_event_files_hold_the_runs_history(runs):
    """train/loss and train/acc at the figure's points (step = optimiser steps: epoch x is x * steps per epoch),
    val/acc_1view every epoch, val/acc where the views were validated, hparam/* one step after the last epoch:
    equal to metrics.json (to float32, TensorBoard's precision), across the resume's two event files (the first
    session's results, written before the extension, are hidden by it)."""
    for run_dir in runs:
        m = json.loads((run_dir / "metrics.json").read_text())
        n = -(-m["train_limit"] // m["recipe"]["batch_size"])
        acc = events(run_dir)
        points = [p for r in m["history"] for p in r["points"]]
        assert len(points) >= 3 * len(m["history"])
        for tag, i in (("train/loss", 1), ("train/acc", 2)):
            assert scalars(acc, tag) == [(round(p[0] * n), pytest.approx(p[i], rel=1e-6)) for p in points], tag
        assert scalars(acc, "val/acc_1view") == [(r["epoch"] * n, pytest.approx(r["val_acc_1view"], rel=1e-6))
                                                 for r in m["history"]]
        assert scalars(acc, "val/acc") == [(r["epoch"] * n, pytest.approx(r["val_acc"], rel=1e-6))
                                           for r in m["history"] if r["val_acc"] is not None]
        for key in ("val_acc", "test_acc", "train_seconds"):
            assert scalars(acc, f"hparam/{key}") == [(m["epochs"] * n + 1, pytest.approx(m[key], rel=1e-6))]
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 2, "the resume wrote a second event file"
    assert json.loads((runs[0] / "metrics.json").read_text())["epochs"] == 3


def test_the_runs_settings_are_hparams(runs):
    from tensorboard.plugins.hparams import plugin_data_pb2
    acc = events(runs[1])
    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hp = {k: v.string_value or v.number_value for k, v in info.hparams.items()}
    assert hp["preset"] == "sprint" and hp["recipe.lr"] == 0.002 and hp["model.patch"] == 7
    assert hp["precision"] in ("fp32", "bf16") and json.loads(hp["model.blocks"])[0]["tokens"] == [16, 16, 16]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tensorboard_server_serves_the_runs_scalars(runs):
    """`tensorboard --logdir` over the two runs' folder, on a loopback port: its scalars route answers each
    run's training loss, as the event files hold it."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(runs[0].parent),
                               "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline, listed = time.time() + 90, {}
        while time.time() < deadline and len(listed) < 2:  # it loads the event files in the background
            assert server.poll() is None, server.communicate()[0]
            try:
                listed = json.loads(urllib.request.urlopen(f"{base}/plugin/scalars/tags", timeout=5).read())
            except OSError:
                pass
            time.sleep(0.5)
        names = {d.name: d for d in runs}
        assert set(listed) == set(names), listed
        for name, run_dir in names.items():
            assert {"train/loss", "train/acc", "val/acc_1view", "val/acc"} <= set(listed[name])
            url = f"{base}/plugin/scalars/scalars?run={urllib.request.quote(name)}&tag=train%2Floss"
            served = [(step, value) for _, step, value in json.loads(urllib.request.urlopen(url, timeout=10).read())]
            assert served == scalars(events(run_dir), "train/loss")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_without_the_tensorboard_package_a_run_trains_and_says_so(tmp_path):
    """The GPU programme runs on a machine's own python with torch alone: there a run writes no event files and
    says so in one line, and trains as anywhere."""
    out = tmp_path / "plain"
    code = ("import sys; sys.modules['tensorboard'] = None; import train; "
            f"train.main({[*SMALL, '--epochs', '1', '--out', str(out)]!r})")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "no TensorBoard event files: the tensorboard package is not installed" in r.stdout
    assert (out / "metrics.json").exists() and not list(out.glob("events.out.tfevents.*"))
