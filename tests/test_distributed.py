"""torchrun with DDP on CPU (gloo): two processes match one process at the same global batch size."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

ARGS = ["--preset", "default", "--epochs", "2", "--batch-size", "64", "--train-limit", "3000", "--quiet",
        "--device", "cpu"]


def test_torchrun_two_processes_match_one_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    r = subprocess.run([sys.executable, "train.py", *ARGS, "--out", str(single)], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", *ARGS, "--out", str(ddp)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("best val acc") == 1, "only rank 0 reports"
    assert "in 2 shards of 1,500" in r.stdout
    assert sorted(p.name for p in ddp.iterdir()) == [".lock", "best.pt", "curves.png", "last.pt", "metrics.json",
                                                     "model.pt", "run.json"]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (single, ddp))
    assert b["world_size"] == 2 and a["world_size"] == 1
    # The metrics are all-reduced over both processes: every epoch counts all 3,000 images, not one shard's.
    for r1, r2 in zip(a["history"], b["history"]):
        assert r1["images"] == r2["images"] == 3000
        assert r2["train_acc"] * 3000 == pytest.approx(round(r2["train_acc"] * 3000), abs=1e-6), "a count of 3,000"
    # Same samples in every global batch and averaged gradients; only BatchNorm's batch statistics differ
    # (each process normalises its 32 images). Stated tolerance: 2 points of accuracy.
    # (The default preset validates at its last epoch, and every 5th: None where it did not.)
    for r1, r2 in zip(a["history"], b["history"]):
        assert abs(r1["train_acc"] - r2["train_acc"]) < 0.02 and (r1["val_acc"] is None) == (r2["val_acc"] is None)
        assert r1["val_acc"] is None or abs(r1["val_acc"] - r2["val_acc"]) < 0.02
    assert a["history"][-1]["val_acc"] is not None
    assert abs(a["test_acc"] - b["test_acc"]) < 0.02
