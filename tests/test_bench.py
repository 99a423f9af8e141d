"""tools/bench.py --quick runs end to end and writes a complete bench.json. No test asserts a speed."""
import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

KEYS = ("reference_img_s", "ours_img_s", "speedup", "peak_gflops", "model_gflops", "mfu", "time_to_90_s",
        "peak_rss_mb", "device", "precision", "torch")


def test_bench_quick_writes_valid_json(gpu_dry_run):
    """The GPU dry run ran `tools/bench.py --quick --device cpu --precision auto --out bench_gpu.json`."""
    out, r = gpu_dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    b = json.loads((out / "bench_gpu.json").read_text())
    assert all(k in b for k in KEYS), [k for k in KEYS if k not in b]
    for k in ("reference_img_s", "ours_img_s", "speedup", "peak_gflops", "model_gflops", "mfu", "peak_rss_mb"):
        assert isinstance(b[k], float) and math.isfinite(b[k]) and b[k] > 0, k
    # the FLOP counts against their hand count (test_flops_are_the_hand_counted_matmuls)
    assert b["presets"]["seed"]["model_gflops"] == pytest.approx(hand_counted_train_flops("seed") / 1e9)
    assert b["model_gflops"] == pytest.approx(hand_counted_train_flops("default") / 1e9)
    assert b["device"] == "cpu" and b["quick"] is True and b["time_to_90_s"] is None
    d = b["presets"]["default"]  # the default preset trains with Muon: also timed with AdamW, for its cost
    assert isinstance(d["ours_adamw_img_s"], float) and d["ours_adamw_img_s"] > 0


@pytest.mark.parametrize("cap", [{}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}])
def test_bench_muon_ns_times_both_dtypes_and_names_the_one_used(tmp_path, cap):
    """Under an AVX2 cap (ONEDNN_MAX_CPU_ISA=AVX2 forbids bf16 instructions) torch emulates bf16 matmuls ~25x
    slower than fp32: there MuonAdamW must orthogonalise in fp32, natively in bf16, and the record's hardware
    names the cap. (Each case is a fresh process: the cap is read when torch loads.)"""
    import os

    from mlp import hardware
    out = tmp_path / "muon.json"
    r = subprocess.run([sys.executable, "tools/bench.py", "--muon-ns", "--device", "cpu", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, **cap})
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(out.read_text())
    assert all(isinstance(m["step_ms"][d], float) and m["step_ms"][d] > 0 for d in ("bf16", "fp32"))
    assert m["matrices"] == 12 and m["steps_per_epoch"] == 430, "quick: 3 blocks x 4 matrices; 55,000 / 128"
    native = hardware.native_bf16(torch.device("cpu")) and not cap
    assert m["used"] == ("bf16" if native else "fp32") and ("ONEDNN_MAX_CPU_ISA=AVX2" in m["hardware"]) == bool(cap)


def test_reference_network_uses_torch_dropout():
    from mlp.recipe import get_preset
    from model import Dropout, MLPNet
    from tools.bench import with_torch_dropout
    net = with_torch_dropout(MLPNet(get_preset("seed")[0]))
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 4 and not any(isinstance(m, Dropout) for m in drops) and all(m.p == 0.1 for m in drops)


def hand_counted_train_flops(preset):
    """Training FLOPs per image from the widths alone: every Linear layer's multiply-adds over its rows (patches
    for the stem and the feature MLPs, features for the token MLPs, one for the head), x2 FLOPs per
    multiply-add, x3 for forward, input-gradient and weight-gradient products (the stem has no input gradient)."""
    from mlp.recipe import get_preset
    m = get_preset(preset)[0]
    n, macs = m.num_patches, m.patch ** 2 * m.dim * m.num_patches * 2  # the stem: forward + weight gradient
    rows = n
    for b in m.blocks:
        (t_in, t_hid, t_out), (f_in, f_hid, f_out) = b.tokens, b.features
        macs += 3 * f_in * (t_in * t_hid + t_hid * t_out)      # token MLP: over each feature
        rows = t_out
        macs += 3 * rows * (f_in * f_hid + f_hid * f_out)      # feature MLP: over each patch
    macs += 3 * m.blocks[-1].features[2] * 10
    return 2 * macs


@pytest.mark.parametrize("preset", ["seed", "default", "sprint"])
def test_flops_are_the_hand_counted_matmuls(preset):
    from mlp.recipe import get_preset
    from model import train_flops_per_image
    assert train_flops_per_image(get_preset(preset)[0]) == pytest.approx(hand_counted_train_flops(preset), rel=1e-3)


def test_speedup_and_mfu_from_known_speeds():
    """300 img/s against 100 img/s is 3x; 1,000 img/s x 0.05 GFLOP per image on a 100 GFLOP/s peak is 50 %."""
    from tools.bench import mfu, speedup
    assert speedup(300.0, 100.0) == 3.0 and speedup(10.0, None) is None
    assert mfu(1000.0, 0.05, 100.0) == 0.5 and mfu(300.0, 0.05, 30.0) == 0.5
