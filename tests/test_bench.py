"""bench.py --quick runs end to end and writes a complete bench.json. No test asserts a speed."""
import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

KEYS = ("reference_img_s", "ours_img_s", "speedup", "peak_gflops", "model_gflops", "mfu", "time_to_90_s",
        "peak_rss_mb", "device", "precision", "torch")


def test_bench_quick_writes_valid_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "bench.py", "--quick", "--device", "cpu", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    b = json.loads(out.read_text())
    assert all(k in b for k in KEYS), [k for k in KEYS if k not in b]
    for k in ("reference_img_s", "ours_img_s", "speedup", "peak_gflops", "model_gflops", "mfu", "peak_rss_mb"):
        assert isinstance(b[k], float) and math.isfinite(b[k]) and b[k] > 0, k
    assert b["speedup"] == b["ours_img_s"] / b["reference_img_s"]
    # the seed network's training step: ~3x its forward MACs x 2 FLOPs (forward 18.5 M multiply-adds)
    assert 0.08 < b["presets"]["seed"]["model_gflops"] < 0.15
    # MFU is the default preset's achieved FLOP/s over the measured matmul peak
    assert b["mfu"] == pytest.approx(b["presets"]["default"]["ours_img_s"] * b["model_gflops"] / b["peak_gflops"])
    assert b["device"] == "cpu" and b["quick"] is True and b["time_to_90_s"] is None
    d = b["presets"]["default"]  # the default preset trains with Muon: also timed with AdamW, for its cost
    assert isinstance(d["ours_adamw_img_s"], float) and d["ours_adamw_img_s"] > 0


@pytest.mark.parametrize("cap", [{}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}])
def test_bench_muon_ns_times_both_dtypes_and_names_the_one_used(tmp_path, cap):
    """Under an AVX2 cap torch emulates bf16 matmuls: there MuonAdamW must take fp32 (and the record says so)."""
    import os
    import hardware
    out = tmp_path / "muon.json"
    r = subprocess.run([sys.executable, "bench.py", "--muon-ns", "--device", "cpu", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, **cap})
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(out.read_text())
    assert all(isinstance(m["step_ms"][d], float) and m["step_ms"][d] > 0 for d in ("bf16", "fp32"))
    assert m["matrices"] == 12 and m["steps_per_epoch"] == 430, "quick: 3 blocks x 4 matrices; 55,000 / 128"
    native = hardware.native_bf16(torch.device("cpu")) and not cap
    assert m["used"] == ("bf16" if native else "fp32") and ("ONEDNN_MAX_CPU_ISA=AVX2" in m["hardware"]) == bool(cap)


def test_reference_network_uses_torch_dropout():
    from bench import with_torch_dropout
    from model import Dropout, MLPNet
    from recipe import get_preset
    net = with_torch_dropout(MLPNet(get_preset("seed")[0]))
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 4 and not any(isinstance(m, Dropout) for m in drops) and all(m.p == 0.1 for m in drops)
