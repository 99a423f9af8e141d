"""The baselines (baselines.py): the book's networks as the book builds them, trained by the same harness,
loaded by predict.py, and chosen on validation by tools/baseline_search.py."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from baselines import BaselineConfig, BaselineNet
from conftest import DEV_HARDWARE, ROOT, train_here, write_speed_table
from mlp import cpu, results
from mlp.checkpoint import load_model
from mlp.evaluate import Views, logits
from mlp.recipe import PRESETS, get_preset
from model import count_params
from tools import equal_cost, figures


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


def cnn_trial(epochs, val_acc, test_acc, **kw):
    from test_results import as_recorded
    return {**as_recorded("cnn", epochs=epochs, val_every=epochs), "epochs": epochs, "val_acc": val_acc,
            "test_acc": test_acc, "precision": "fp32", "train_seconds": 1.0, "hardware": DEV_HARDWARE,
            "history": [dict(epoch=e, seconds=1.0, eval_seconds=0.0) for e in range(1, epochs + 1)], **kw}


def test_the_search_chooses_on_validation_by_cost_and_never_reads_the_test_set(tmp_path):
    """A trial's cost is its epochs at the development CPU's seconds per epoch, plus its validation passes (one
    view every epoch, every view at the last), whatever its wall clock said; no margin over the budget."""
    tables = [write_speed_table(tmp_path, {"cnn": ("cnn", 80.0, 30.0, 4.0)})]
    trials = {"a": cnn_trial(5, 0.90, 0.95), "b": cnn_trial(6, 0.91, 0.80),
              "c": cnn_trial(7, 0.95, 0.95, train_seconds=10.0)}  # 7 x 84 + 30 = 618 s of 600: over
    assert [results.cost(t, tables).seconds for t in trials.values()] == [450.0, 534.0, 618.0]
    assert results.choose_trial(trials, 600, tables) == "b" and results.choose_trial({}, 600, tables) is None
    assert not results.fits(trials["c"], 600, tables) and results.fits(trials["c"], 618, tables)


def test_a_network_missing_from_the_development_cpus_table_is_costed_provisionally(tmp_path):
    """Timed on another CPU only: its seconds there x the ratio its family (here the convolutions) measured
    on both; timed nowhere: its own wall clock at its session's calibration. Either is marked provisional."""
    from mlp import cpu
    xeon = dict(model="Intel(R) Xeon(R) Processor", cores=2, isa="AMX", caps=[], flags=["avx2", "amx_bf16"])
    dev = write_speed_table(tmp_path, {"lenet": ("lenet", 6.0, 1.0)})
    other = write_speed_table(tmp_path, {"lenet": ("lenet", 3.0, 0.5), "cnn": ("cnn", 40.0, 0.0, 0.0)}, xeon)
    c = results.cost(cnn_trial(5, 0.9, 0.9), [dev, other])
    assert c.seconds == pytest.approx(400.0) and c.provisional.startswith("timed on Intel") and c.mark == "≈ "
    assert not cpu.is_dev(other["cpu"]) and cpu.is_dev(dev["cpu"])
    untimed = dict(cnn_trial(5, 0.9, 0.9, calibration=dict(ratio=2.0)), train_seconds=100.0)
    c = results.cost(untimed, [dev])
    assert c.seconds == pytest.approx(200.0) and "wall clock" in c.provisional


def test_the_epochs_that_fit_a_budget_come_from_the_table(tmp_path):
    from mlp import budget
    write_speed_table(tmp_path, {"cnn": ("cnn", 80.0, 30.0, 4.0)})
    model, recipe = get_preset("cnn", val_every=100)
    assert budget.fitting_epochs(model, recipe, 600, folder=tmp_path) == 6  # 6 x 84 + 30 = 534; 7: 618
    assert budget.fitting_epochs(model, recipe, 600, most=3, folder=tmp_path) == 3
    assert budget.fitting_epochs(*get_preset("lenet"), 600, folder=tmp_path) is None, "not timed: probe it"


def test_a_budget_is_converted_at_the_ratio_measured_now():
    """The reference epoch (quick, fp32) timed here against its recorded seconds on the development CPU."""
    from mlp import budget, cpu, hardware, records
    there = budget.reference_epoch()
    epochs = [e["seconds"] for f in budget.REFERENCE_RUNS for e in json.loads((ROOT / f).read_text())["history"]]
    assert there == pytest.approx(sum(epochs) / len(epochs)) and len(epochs) == 30
    cal = budget.calibrate(log=lambda *_: None)
    assert cal["hardware"] == hardware.describe(torch.device("cpu")) and cal["epoch_dev_cpu"] == there
    if cpu.is_dev(cal["hardware"]):
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
    """A preset NAME-SECONDS is what one of its searches chose (the engine's study, or the hand-named search
    before it; a study still running may not be adopted yet), so that its adopted seed 0 is that trial."""
    from mlp.recipe import CHOSEN
    tables = results.speed_tables()
    for preset in CHOSEN:
        arch, budget = preset.rsplit("-", 1)
        choices = []
        for kinds in (("search",), ("bl",)):
            trials = results.searched_trials(arch, int(budget), kinds=kinds)
            best = results.choose_trial(trials, int(budget), tables)
            choices += [results.as_now(trials[best])] if best else []
        assert choices, f"{preset} exists without its search's trials"
        assert results.current_presets()[preset] in choices, preset


def put_runs(folder, preset, accs, hardware=DEV_HARDWARE, name=None, **kw):
    from test_results import run_json
    (folder / "runs").mkdir(exist_ok=True)
    base = name or preset.split("-")[0]
    for s, acc in enumerate(accs):
        r = dict(run_json(base, s, acc, hardware=hardware, **kw), preset=preset)
        (folder / "runs" / f"{preset}-{s}.json").write_text(json.dumps(r))


def cnn_presets(**budgets):
    """The presets now, with cnn-SECONDS as `cnn` at the given epochs."""
    now = results.current_presets()
    return dict(now, **{f"cnn-{b}": dict(model=now["cnn"]["model"], recipe=dict(now["cnn"]["recipe"], epochs=e))
                        for b, e in budgets.items()})


def test_the_baselines_table_takes_per_budget_the_best_on_validation_that_fits(tmp_path):
    """A cell is its family's preset best on validation among those whose cost fits; its runs pool CPUs (one
    per seed) and its cost comes from the development CPU's table, measured ÷ predicted beside it."""
    from test_results import as_recorded
    presets = cnn_presets(**{"600": 2, "1800": 2})
    write_speed_table(tmp_path, {"cnn": ("cnn", 250.0, 10.0, 1.0)})  # 2 epochs: 500 + 10 + 2 x 1 = 512 s
    xeon = "Intel(R) Xeon(R) Processor (2 cores, 2 threads, AMX)"
    put_runs(tmp_path, "cnn-600", (0.90, 0.91, 0.92), hardware=xeon, **as_recorded("cnn", epochs=2))
    rows = {line.split(" | ")[0]: line for line in equal_cost.render_baselines(tmp_path, presets).splitlines()}
    assert "`cnn-600`: **91.00** ± 1.00 % (n=3); val 90.00 %; 512 s, 2 ep." in rows["| 600 s"]
    assert rows["| 600 s"].endswith("| — |") and "| 60 s | — | — | — | none fits; over budget: `cnn-600` (512 s)" \
        in rows["| 60 s"]
    assert "`cnn-600`: **91.00**" in rows["| 1,800 s"], "a cheaper preset that fits is a candidate too"
    (tmp_path / "runs" / "cnn-600-2.json").unlink()
    row = next(line for line in equal_cost.render_baselines(tmp_path, presets).splitlines() if line.startswith("| 600 s |"))
    assert "| — | — | — | — | — |" in row, "two seeds are no candidate: a cell needs three"
    put_runs(tmp_path, "cnn-600", (0.90, 0.91, 0.92), hardware=xeon, **as_recorded("cnn", epochs=2))
    write_speed_table(tmp_path, {"cnn": ("cnn", 100.0, 10.0, 1.0)}, dict(cpu.identity(cpu_info(xeon)), cores=2))
    row = next(line for line in equal_cost.render_baselines(tmp_path, presets).splitlines() if line.startswith("| 600 s |"))
    assert "measured ÷ predicted 0.60–0.60" in row, "120 s on the Xeon, which its own table puts at 200"


def test_the_all_mlp_cell_is_the_configuration_best_on_validation_among_presets_trials_and_study_arms(tmp_path):
    """Any configuration with three seeds is a candidate: a preset's runs, a trial repeated over seeds, a patch
    study's arm; it is named by its preset and the fields it changed."""
    from test_results import as_recorded, run_json
    write_speed_table(tmp_path, {"quick": ("quick", 50.0, 15.0, 1.5)})
    put_runs(tmp_path, "quick", (0.916, 0.917, 0.918))  # validation 0.9 (run_json's)
    (tmp_path / "trials").mkdir()
    for s in range(3):  # the same network at a lower learning rate: validation 0.91
        t = dict(run_json("quick", s, 0.93, **as_recorded("quick", lr=0.002)), val_acc=0.91)
        (tmp_path / "trials" / f"quick-lr2e-3-seed{s}.json").write_text(json.dumps(t))
    rows = {line.split(" | ")[0]: line for line in equal_cost.render_baselines(tmp_path).splitlines()}
    assert "`quick with lr=0.002`: **93.00** ± 0.00 % (n=3); val 91.00 %" in rows["| 600 s"]
    rows = [dict(r, arm="quick@600s", patch=4, history=r["history"]) for r in
            (dict(run_json("quick", s, 0.95, **as_recorded("quick", epochs=3)), val_acc=0.92) for s in range(3))]
    (tmp_path / "patch_study.json").write_text(json.dumps(dict(rows=rows, precision="fp32", command="make study",
                                                                git_commit="abc1234")))
    rows = {line.split(" | ")[0]: line for line in equal_cost.render_baselines(tmp_path).splitlines()}
    assert "`quick with epochs=3`: **95.00** ± 0.00 % (n=3); val 92.00 %" in rows["| 600 s"]
    (tmp_path / "trials" / "quick-lr2e-3-seed2.json").unlink()
    (tmp_path / "patch_study.json").unlink()
    rows = {line.split(" | ")[0]: line for line in equal_cost.render_baselines(tmp_path).splitlines()}
    assert "`quick`: **91.70**" in rows["| 600 s"], "two seeds of the trial: no candidate"


def cpu_info(hardware: str) -> str:
    name = hardware.split(" (")[0]
    return f"model name\t: {name}\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16\n"


def test_the_equal_cost_plot_draws_the_tables_runs_at_their_cost(tmp_path):
    from test_results import as_recorded
    presets = cnn_presets(**{"600": 2})
    write_speed_table(tmp_path, {"cnn": ("cnn", 250.0, 10.0, 1.0)})
    put_runs(tmp_path, "cnn-600", (0.90, 0.91, 0.92), **as_recorded("cnn", epochs=2))
    series = figures.baseline_series(tmp_path, presets)
    assert list(series) == ["cnn"], "a column without runs draws nothing"
    assert series["cnn"] == [(600, [(512.0, 0.90), (512.0, 0.91), (512.0, 0.92)]),
                             (1800, [(512.0, 0.90), (512.0, 0.91), (512.0, 0.92)])]
    figures.plot_baselines(tmp_path, tmp_path / "baselines.png", presets)
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


def test_the_verdict_is_welchs_t_test_with_n_and_p():
    v = results.compare("quick", [0.916, 0.917, 0.918], "cnn", [0.910, 0.915, 0.920])  # +0.2 points
    assert v.winner is None and v.p == pytest.approx(0.562, abs=1e-3)
    assert v.words() == "+0.20 points, n = 3 and 3, Welch p = 0.562: no significant difference"
    v = results.compare("quick", [0.926, 0.927, 0.928], "cnn", [0.910, 0.915, 0.920])
    assert v.winner == "quick" and v.p < 0.05
    # sprint against d2l-mlp at 60 s as recorded on 2026-12-05: 2 SE apart, yet p = 0.14 (not a 5 % test)
    v = results.compare_stats("sprint", (0.8935, 0.0009, 3), "d2l-mlp", (0.8966, 0.0023, 3))
    assert v.winner is None and 0.10 < v.p < 0.20
    assert results.compare("a", [0.9], "b", [0.8, 0.85]).words().endswith("no test (fewer than two seeds a side)")
    faster = results.compare("k4", [25.0, 25.2, 24.9, 25.1, 25.0], "k2", [90.0, 91.0, 89.5, 90.2, 90.4], False)
    assert faster.winner == "k4", "seconds: lower is better"


def test_the_baselines_table_judges_the_all_mlp_against_the_baseline_validation_chooses(tmp_path):
    from test_results import as_recorded
    presets = cnn_presets(**{"600": 2})
    write_speed_table(tmp_path, {"cnn": ("cnn", 250.0, 10.0, 1.0), "quick": ("quick", 50.0, 15.0, 1.5)})
    put_runs(tmp_path, "cnn-600", (0.910, 0.915, 0.920), **as_recorded("cnn", epochs=2))  # 91.5 ± 0.5
    put_runs(tmp_path, "quick", (0.916, 0.917, 0.918))  # 91.7 ± 0.1: +0.2 points; quick's 10 epochs: 530 s
    verdict = next(line for line in equal_cost.render_baselines(tmp_path, presets).splitlines()
                   if line.startswith("At 600 s"))
    assert verdict == ("At 600 s, `quick` against the baseline validation chooses, `cnn-600`: test accuracy +0.20 "
                       "points, n = 3 and 3, Welch p = 0.562: no significant difference.")
    put_runs(tmp_path, "quick", (0.926, 0.927, 0.928))
    assert "Welch p = 0.048: `quick` is ahead" in equal_cost.render_baselines(tmp_path, presets)
    summary = equal_cost.render_summary(tmp_path, presets)
    assert "| 600 s | `quick` 92.70 ± 0.10 % (n=3) | `cnn-600` 91.50 ± 0.50 % (n=3) | +1.20 points, p = 0.048 | " \
           "`quick` more accurate |" in summary
