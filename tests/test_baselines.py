"""The baselines (baselines.py): the book's networks as the book builds them, trained by the same harness,
loaded by predict.py, and chosen on validation by tools/baseline_search.py."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from baselines import BaselineConfig, BaselineNet
from conftest import ROOT, train_here
from mlp.checkpoint import load_model
from mlp.evaluate import Views, logits
from mlp.recipe import PRESETS, get_preset
from model import count_params
from tools import baseline_search as programme
from tools import render


@pytest.mark.parametrize("arch,params", [("softmax", 784 * 10 + 10), ("d2l-mlp", 784 * 256 + 256 + 256 * 10 + 10),
                                         ("lenet", 61_706)])
def test_the_book_networks_have_the_books_shapes(arch, params):
    net = BaselineNet(BaselineConfig(arch=arch))
    assert count_params(net) == params
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10) and net(torch.rand(3, 28, 28)).shape == (3, 10)
    if arch == "lenet":  # d2l ch. 7: sigmoids and average pooling, 6 and 16 channels of 5x5
        kinds = [type(m).__name__ for m in net.net]
        assert kinds.count("Sigmoid") == 4 and kinds.count("AvgPool2d") == 2 and kinds.count("Conv2d") == 2


def test_the_cnn_is_a_fair_opponent_at_quicks_size():
    """Three residual stages with BatchNorm (28, 14, 7 px), 100-200 k parameters at its default width, as `quick`."""
    from mlp.nets import build_net
    cnn = BaselineNet(PRESETS["cnn"].model).eval()
    assert 100_000 <= count_params(cnn) <= 200_000
    assert 0.5 < count_params(cnn) / count_params(build_net(PRESETS["quick"].model)) < 2
    x, sides = torch.rand(2, 1, 28, 28), []
    for layer in cnn.net:
        x = layer(x)
        if type(layer).__name__ == "ResidualBlock":
            sides.append(x.shape[-1])
    assert sides == [28, 14, 7] and any(isinstance(m, torch.nn.BatchNorm2d) for m in cnn.modules())
    widths = [count_params(BaselineNet(BaselineConfig(arch="cnn", width=w))) for w in (8, 16, 24)]
    assert widths == [19_810, 77_754, 173_842], "as docs/baselines.md says"


@pytest.mark.parametrize("cfg,message", [(dict(arch="resnet"), "arch='resnet' is not one of"),
                                         (dict(arch="lenet", width=8), "lenet has a fixed shape"),
                                         (dict(arch="softmax", depth=2), "only cnn takes a depth"),
                                         (dict(arch="cnn", shift_tta=20), "shift_tta=20 must be 0")])
def test_a_bad_baseline_config_names_the_field(cfg, message):
    with pytest.raises(ValueError, match=message):
        BaselineConfig(**cfg)


def test_overrides_are_checked_against_the_baselines_own_fields():
    model, recipe = get_preset("cnn", width=16, optimizer="nesterov")
    assert model.width == 16 and recipe.optimizer == "nesterov" and PRESETS["cnn"].model.width != 16
    with pytest.raises(ValueError, match=r"unknown config fields \['patch'\] for this BaselineConfig"):
        get_preset("cnn", patch=7)


def test_muon_on_a_cnn_is_refused_naming_what_to_use():
    r = train_here("--preset", "cnn", "--set", "optimizer=muon", "--epochs", "1", "--train-limit", "256",
                   "--eval-limit", "256", "--quiet", "--out", "/tmp/never-written-muon-cnn")
    assert r.returncode == 1 and "optimizer='muon' needs a network with a backbone of weight matrices" in r.stderr
    assert "use adamw, nesterov or sgd" in r.stderr


@pytest.mark.parametrize("preset,sets", [("cnn", ["width=8"]), ("lenet", [])])
def test_a_baseline_trains_by_train_py_and_predict_py_answers_with_its_views(preset, sets, arrays, tmp_path):
    out = tmp_path / preset
    args = ["--preset", preset, "--epochs", "1", "--train-limit", "2048", "--eval-limit", "512", "--quiet",
            "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    r = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["preset"] == preset and m["model"]["arch"] == preset and m["eval_views"] == PRESETS[preset].model.views
    images = arrays["test_x"][:4]
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img.numpy(), mode="L").save(paths[-1])
    r = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(out / "model.pt"), "--json",
                        *map(str, paths)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    net = load_model(out / "model.pt")
    assert isinstance(net, BaselineNet) and net.cfg.arch == preset
    with torch.no_grad():
        probs = torch.softmax(logits(net, images.unsqueeze(1).float() / 255, Views.of(net.cfg)), dim=1)
    assert [a["top"][0]["prob"] for a in json.loads(r.stdout)] == pytest.approx(probs.max(1).values.tolist(),
                                                                                abs=1e-5)


def test_the_search_chooses_on_validation_within_the_budget_and_never_reads_the_test_set():
    avx512 = "AMD EPYC (2 cores, 2 threads, AVX-512+BF16)"
    trials = {"a": dict(val_acc=0.90, test_acc=0.95, train_seconds=180.0, hardware=avx512),
              "b": dict(val_acc=0.91, test_acc=0.80, train_seconds=180.0, hardware=avx512),
              "c": dict(val_acc=0.95, test_acc=0.95, train_seconds=248.0, hardware=avx512)}  # 794 s of 600
    assert programme.choice(trials, 600) == "b" and programme.choice({}, 600) is None
    assert not programme.within(trials["c"], 600) and programme.within(dict(trials["c"], train_seconds=200.0), 600)
    slow_day = dict(trials["b"], calibration=dict(ratio=1.9))  # its session measured 1.9x: 342 s of 600
    assert programme.within(dict(slow_day, train_seconds=340.0), 600)
    assert not programme.within(dict(slow_day, train_seconds=350.0), 600), "at 3.2x it would fit; at 1.9x it does not"


def test_a_refit_converts_its_trials_epoch_through_development_cpu_seconds():
    """A trial over its budget is refitted from its own seconds per epoch, which may come from another CPU."""
    xeon = dict(train_seconds=1100.0, epochs=100, hardware="Intel(R) Xeon(R) Processor (2 cores, 2 threads, AMX)",
                calibration=dict(ratio=2.0))  # 11 s an epoch there = 22 development-CPU seconds
    assert programme.epoch_here(xeon, dict(ratio=2.0)) == pytest.approx(11.0)
    assert programme.epoch_here(xeon, dict(ratio=4.0)) == pytest.approx(5.5), "a CPU twice as fast: half the time"


def test_a_budget_is_converted_at_the_ratio_measured_now():
    """The reference epoch (quick, fp32) timed here against its recorded seconds on the development CPU."""
    from mlp import budget, hardware, records
    there = budget.reference_epoch()
    epochs = [e["seconds"] for f in budget.REFERENCE_RUNS for e in json.loads((ROOT / f).read_text())["history"]]
    assert there == pytest.approx(sum(epochs) / len(epochs)) and len(epochs) == 30
    cal = budget.calibrate(log=lambda *_: None)
    assert cal["hardware"] == hardware.describe(torch.device("cpu")) and cal["epoch_dev_cpu"] == there
    if cal["hardware"].endswith(records.DEV_CPU):
        assert cal["ratio"] == 1.0 and cal["epoch_here"] is None
    else:
        assert cal["epoch_here"] > 0 and cal["ratio"] == pytest.approx(there / cal["epoch_here"])
    assert records.dev_ratio_of(dict(hardware="AMD EPYC (2 cores, 2 threads, AVX-512+BF16)", calibration=cal)) == \
        cal["ratio"]


def test_a_reference_run_of_another_quick_is_refused(tmp_path):
    from mlp import budget
    for f in budget.REFERENCE_RUNS:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        r = json.loads((ROOT / f).read_text())
        (tmp_path / f).write_text(json.dumps(dict(r, recipe=dict(r["recipe"], batch_size=64))))
    with pytest.raises(ValueError, match="quick-avx2-seed0.json is not a whole fp32 run of today's 'quick'"):
        budget.reference_epoch(tmp_path)


def test_every_budget_preset_is_its_chosen_trial():
    """A preset NAME-SECONDS is what its search chose, so that its adopted seed 0 is that trial."""
    for arch, budgets in programme.BUDGETS.items():
        for budget in budgets:
            preset, trials = f"{arch}-{budget}", programme.load_trials(arch, budget)
            if preset in PRESETS:
                best = programme.choice(trials, budget)
                assert best is not None, f"{preset} exists without its search's trials"
                assert render.as_now(trials[best]) == render.current_presets()[preset], preset


def test_the_baselines_table_is_per_budget_mean_and_std_over_seeds(tmp_path):
    from test_results import run_json
    runs = tmp_path / "runs"
    runs.mkdir()
    avx512 = "AMD EPYC (2 cores, 2 threads, AVX-512+BF16)"
    for s, acc in enumerate((0.90, 0.91, 0.92)):
        (runs / f"cnn-{s}.json").write_text(json.dumps(dict(run_json("cnn", s, acc, hardware=avx512),
                                                            preset="cnn-600")))
    presets = dict(render.current_presets(), **{"cnn-600": render.current_presets()["cnn"]})
    row = next(line for line in render.render_baselines(tmp_path, presets).splitlines() if line.startswith("| 600 s |"))
    assert "**91.00** ± 1.00 % (n=3); val 90.00 %; ≈ 384–384 s, 2 ep." in row, "AVX-512 seconds x 3.2"
    assert row.endswith("| `quick`: not run yet |")
    for s, ratio in enumerate((2.0, 2.5, 3.0)):  # calibrated in their sessions: each at its own ratio, no "≈"
        r = json.loads((runs / f"cnn-{s}.json").read_text())
        (runs / f"cnn-{s}.json").write_text(json.dumps(dict(r, calibration=dict(ratio=ratio))))
    row = next(line for line in render.render_baselines(tmp_path, presets).splitlines() if line.startswith("| 600 s |"))
    assert "val 90.00 %; 240–360 s, 2 ep." in row
    for s in (1, 2):
        (runs / f"cnn-{s}.json").unlink()
    row = next(line for line in render.render_baselines(tmp_path, presets).splitlines() if line.startswith("| 600 s |"))
    assert "**90.00** % (n=1)" in row and "±" not in row, "one seed has no spread to print"


def test_the_equal_time_plot_draws_the_tables_runs_at_their_own_ratios(tmp_path):
    from test_results import run_json
    runs = tmp_path / "runs"
    runs.mkdir()
    xeon = "Intel(R) Xeon(R) Processor (2 cores, 2 threads, AMX)"
    for s, (acc, ratio) in enumerate(((0.90, 2.0), (0.91, 2.5), (0.92, 3.0))):
        r = dict(run_json("cnn", s, acc, hardware=xeon), preset="cnn-600", calibration=dict(ratio=ratio))
        (runs / f"cnn-{s}.json").write_text(json.dumps(r))
    other_cpu = dict(run_json("cnn", 3, 0.50, hardware="AMD EPYC (2 cores, 2 threads, AVX-512+BF16)"), preset="cnn-600")
    (runs / "cnn-elsewhere.json").write_text(json.dumps(other_cpu))  # one seed on another CPU: not the cell's
    presets = dict(render.current_presets(), **{"cnn-600": render.current_presets()["cnn"]})
    series = render.baseline_series(tmp_path, presets)
    assert list(series) == ["cnn"], "a column without runs draws nothing"
    assert series["cnn"] == [(600, [(240.0, 0.90), (300.0, 0.91), (360.0, 0.92)])]
    render.plot_baselines(tmp_path, tmp_path / "baselines.png", presets)
    assert (tmp_path / "baselines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_baseline_run_resumes_from_its_checkpoint_and_extends(tmp_path):
    out = tmp_path / "lenet"
    common = ["--train-limit", "512", "--eval-limit", "256", "--quiet"]
    r = train_here("--preset", "lenet", "--epochs", "1", "--out", str(out), *common)
    assert r.returncode == 0, r.stderr
    r = train_here("--resume", str(out), "--epochs", "2", *common)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["model"]["arch"] == "lenet" and m["extended"][0]["epochs_to"] == 2


def test_the_baselines_table_judges_the_all_mlp_against_the_best_baseline_by_the_2se_rule(tmp_path):
    from test_results import run_json
    runs = tmp_path / "runs"
    runs.mkdir()
    avx512, dev = "AMD EPYC (2 cores, 2 threads, AVX-512+BF16)", "AMD EPYC (2 cores, 2 threads, AVX2)"
    presets = dict(render.current_presets(), **{"cnn-600": render.current_presets()["cnn"]})
    for s, acc in enumerate((0.910, 0.915, 0.920)):  # 91.5 ± 0.5
        (runs / f"cnn-{s}.json").write_text(json.dumps(dict(run_json("cnn", s, acc, hardware=avx512),
                                                            preset="cnn-600")))
    for s, acc in enumerate((0.916, 0.917, 0.918)):  # 91.7 ± 0.1: +0.2 points, SE of the difference 0.29
        (runs / f"quick-{s}.json").write_text(json.dumps(run_json("quick", s, acc, hardware=dev)))
    verdict = render.render_baselines(tmp_path, presets).splitlines()[-1]
    assert verdict == ("At 600 s, `quick` against the most accurate baseline, `cnn`: +0.20 points of test accuracy: "
                       "no significant difference (within twice its standard error).")
    for s, acc in enumerate((0.926, 0.927, 0.928)):  # 92.7: +1.2 points
        (runs / f"quick-{s}.json").write_text(json.dumps(run_json("quick", s, acc, hardware=dev)))
    assert "`quick` is more accurate (the difference exceeds" in render.render_baselines(tmp_path, presets)
