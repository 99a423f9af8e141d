"""The training loop, the d2l helpers, train.py as a process and the notebook under papermill."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nbformat
import pytest
import torch
from torch import nn

import my_utils as mu
from conftest import ROOT, check_live_curves, train_cli, train_here, without_timing
from mlp import checkpoint, data, notebook
from mlp.checkpoint import load_model
from mlp.evaluate import Views
from mlp.loop import Trainer, best_record, fit
from mlp.recipe import get_preset
from model import MLPNet, count_params

CPU = torch.device("cpu")


def trainer(model, recipe, train_limit, precision="fp32", eval_limit=None):
    return Trainer(MLPNet(model), recipe, data.loaders(recipe, train_limit=train_limit, eval_limit=eval_limit), CPU,
                   precision)


def test_short_real_training_run_learns(tmp_path):
    torch.manual_seed(0)
    model, recipe = get_preset("sprint", epochs=3, batch_size=64)
    t = trainer(model, recipe, 6000, eval_limit=2000)
    net, te = t.net, t.test_iter
    logs = []
    history = fit(t, log=logs.append, progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[2]["train_loss"] < history[1]["train_loss"] < history[0]["train_loss"]
    # 6,000 images, 3 epochs (282 steps): a learning model clears 80 % on 2,000 held-out images (chance: 10 %).
    assert best_record(history)["val_acc"] > 0.80
    assert mu.evaluate_accuracy(net, te) > 0.80
    assert sum("val acc" in line for line in logs) == 3


def test_bf16_autocast_trains_like_fp32():
    """bf16 autocast (native on AVX512-BF16/AMX CPUs and GPUs, emulated elsewhere) on a subset: within 3 points."""
    accs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        history = fit(trainer(*get_preset("sprint", epochs=1, batch_size=64), 3000, precision, eval_limit=1000),
                      log=lambda s: None, progress=False)
        accs[precision] = history[-1]["val_acc"]
    assert accs["fp32"] > 0.5 and abs(accs["bf16"] - accs["fp32"]) < 0.03, accs


def test_best_validation_epoch_is_restored():
    """Force an earlier best: after epoch 1 the weights are scrambled, so epoch 2 ends worse; the net that fit
    returns must be epoch 1's, not the last."""
    torch.manual_seed(0)
    t = trainer(*get_preset("sprint", epochs=2, batch_size=64), 2000)

    def scramble(tr):
        if len(tr.history) == 1:
            with torch.no_grad():
                for p in tr.net.parameters():
                    p.normal_(0, 3.0)
    history = fit(t, after_epoch=scramble, log=lambda s: None, progress=False)
    assert history[1]["val_acc"] < history[0]["val_acc"] - 0.1, "the scramble made epoch 2 worse"
    assert mu.evaluate_accuracy(t.net, t.val_iter, views=t.views) == pytest.approx(history[0]["val_acc"])


def test_val_every_validates_every_nth_epoch_the_last_and_where_a_run_stops():
    model, recipe = get_preset("sprint", epochs=5, batch_size=64, val_every=2)
    t = trainer(model, recipe, 1000, eval_limit=500)
    history = fit(t, log=lambda s: None, progress=False)
    assert [r["epoch"] for r in history if r["val_acc"] is not None] == [2, 4, 5], "every 2nd, and the last"
    # every epoch has its one-view validation point (sprint averages two views: the image and its mirror)
    assert all(0 < r["val_acc_1view"] <= 1 and r["eval_seconds"] > 0 for r in history)
    best = best_record(history)
    assert t.best_epoch == best["epoch"] and mu.evaluate_accuracy(t.net, t.val_iter, views=t.views) == pytest.approx(best["val_acc"])
    # a run stopped early (a time budget, bench's target) is validated at the epoch where it stops
    t = trainer(model, recipe, 1000, eval_limit=500)
    history = fit(t, log=lambda s: None, progress=False, until=lambda r: r["epoch"] == 3)
    assert [r["val_acc"] is not None for r in history] == [False, True, True] and t.best_epoch in (2, 3)
    with pytest.raises(ValueError, match="val_every=0 must be positive"):
        get_preset("sprint", val_every=0)


def test_val_from_validates_only_the_late_epochs_and_trains_the_same_weights():
    """`long` validates its ten views from epoch 21 only: the skipped validations must not change training."""
    model, recipe = get_preset("sprint", epochs=5, batch_size=64)
    runs = {}
    for val_from in (1, 4):
        torch.manual_seed(0)
        t = trainer(model, dataclasses.replace(recipe, val_from=val_from), 1000, eval_limit=500)
        runs[val_from] = fit(t, log=lambda s: None, progress=False)
    assert [r["epoch"] for r in runs[4] if r["val_acc"] is not None] == [4, 5]
    assert [r["val_acc"] for r in runs[1]][3:] == [r["val_acc"] for r in runs[4]][3:]
    assert [r["train_loss"] for r in runs[1]] == [r["train_loss"] for r in runs[4]]
    late = dataclasses.replace(recipe, epochs=10, val_every=3, val_from=4)
    assert [late.validates(e) for e in range(1, 11)] == [False] * 5 + [True, False, False, True, True], \
        "6 and 9 (every 3rd), and 10"
    with pytest.raises(ValueError, match="val_from=0 must be positive"):
        get_preset("long", val_from=0)


def test_plain_epochs_are_the_last_ones():
    model, recipe = get_preset("quick", epochs=3, batch_size=64, plain_epochs=1)
    t, plain = trainer(model, recipe, 256, eval_limit=64), []
    fit(t, after_epoch=lambda tr: plain.append(tr.train_iter.plain), log=lambda s: None, progress=False)
    assert plain == [False, False, True]
    with pytest.raises(ValueError, match="plain_epochs=4 must be 0 to epochs=3"):
        get_preset("quick", epochs=3, plain_epochs=4)


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    """Epoch 1 is checkpointed; a NaN weight then makes epoch 2's loss NaN: the run stops with the hint and
    last.pt still holds epoch 1, loadable and finite."""
    from mlp.distributed import Checkpointer
    torch.manual_seed(0)
    model, recipe = get_preset("default", epochs=3, batch_size=64)
    t = trainer(model, recipe, 1000, eval_limit=500)
    saver = Checkpointer(tmp_path, dict(model=model.to_dict(), recipe=recipe.to_dict()), writer=True)

    def save_then_poison(tr):
        saver(tr)
        if len(tr.history) == 1:
            with torch.no_grad():
                tr.net.classifier.head.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="epoch 2: the training loss is nan.*last good checkpoint is kept"):
        fit(t, after_epoch=save_then_poison, log=lambda s: None, progress=False)
    last = checkpoint.load(tmp_path / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["weights"].values())


def test_accumulator_timer_accuracy():
    acc = mu.Accumulator(2)
    acc.add(1, 2.5)
    acc.add(torch.tensor(2), 0.5)
    assert acc[0] == 3 and acc[1] == 3.0
    acc.reset()
    assert acc.data == [0.0, 0.0]
    t = mu.Timer()
    time.sleep(0.01)
    t.stop()
    t.start()
    t.stop()
    assert len(t.times) == 2 and t.sum() >= 0.01 and t.cumsum()[-1] == pytest.approx(t.sum())
    assert t.avg() == pytest.approx(t.sum() / 2)
    y_hat = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert mu.accuracy(y_hat, torch.tensor([1, 0, 0])) == 2.0


def test_evaluate_accuracy_on_real_test_data():
    class Always(nn.Module):  # predicts one class: accuracy = that class's share = exactly 10 %
        def forward(self, X):
            return torch.nn.functional.one_hot(torch.full((len(X),), 3), 10).float()
    _, test_iter = mu.load_data_fashion_mnist(1000, num_workers=0)
    assert mu.evaluate_accuracy(Always(), test_iter) == pytest.approx(0.1)


def test_labels_and_devices():
    assert mu.get_fashion_mnist_labels([0, 9, 3]) == ["t-shirt", "ankle boot", "dress"]
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert mu.try_gpu() == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' was requested but is not available"):
            mu.resolve_device("cuda")
    assert mu.resolve_precision(torch.device("cpu"), "fp32") == "fp32"


def test_animator_plots_series_on_their_axes_and_saves_png(tmp_path):
    an = mu.training_animator(3)
    for epoch in (1, 2, 3):
        an.add(epoch, (1.0 / epoch, 0.5 + 0.1 * epoch, 0.45 + 0.1 * epoch))
    assert an.X[0] == [1, 2, 3] and an.Y[2] == pytest.approx([0.55, 0.65, 0.75])
    an.save(tmp_path / "c.png")  # (outside Jupyter the figure is drawn when saved)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [len(ax.lines) for ax in an.axes] == [1, 2], "loss left, accuracies right"
    assert an.axes[1].get_ylabel() == "accuracy" and an.axes[0].get_ylabel() == "loss"
    d2l = mu.Animator(xlabel="epoch", legend=["a"], xlim=[1, 5])  # the plain d2l form
    d2l.add(1, 0.5)
    assert d2l.axes[0].get_xlim() == (1.0, 5.0)


def run_train(*args, **kw):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def test_train_py_writes_metrics_model_and_curves(tmp_path):
    out = tmp_path / "run"
    r = run_train("--preset", "default", "--epochs", "1", "--batch-size", "64", "--train-limit", "4000",
                  "--eval-limit", "500", "--out", str(out), "--quiet", "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    for key in ("preset", "model", "recipe", "params", "device", "epochs", "history", "val_acc", "test_acc", "train_seconds"):
        assert key in m
    assert m["preset"] == "default" and m["params"] == count_params(MLPNet(get_preset("default")[0]))
    assert m["epochs"] == 1 and m["train_limit"] == 4000 and m["precision"] == "fp32"
    assert m["eval_limit"] == 500 and m["val_images"] == m["test_images"] == 500 and m["eval_views"] == 10
    assert set(m["history"][0]) >= {"epoch", "train_loss", "train_acc", "val_acc", "seconds"}
    assert 0 < m["test_seconds"] < m["history"][0]["eval_seconds"] * 10, "10 views of 500 test images are timed"
    assert 0.5 < m["test_acc"] <= 1  # 63 steps; chance is 0.1
    net = load_model(out / "model.pt")  # torch.load(..., weights_only=True) of model config + weights
    assert set(torch.load(out / "model.pt", weights_only=True)) == {"format", "model", "preset", "state_dict"}
    _, _, te = mu.fashion_mnist_loaders(500, eval_limit=500)
    assert mu.evaluate_accuracy(net, te, precision=m["precision"], views=Views.of(net.cfg)) == m["test_acc"]
    assert (out / "curves.png").stat().st_size > 1000


def test_a_bf16_run_resumes_and_is_reevaluated_in_its_own_precision(tmp_path):
    """bf16 (native on AVX512-BF16/AMX CPUs and GPUs, emulated elsewhere: the same path, so kept small): a run
    killed while writing epoch 2's checkpoint resumes in bf16 without being told (auto would pick fp32 on a
    CPU without native bf16) and ends bit for bit as the straight run; model.pt re-evaluated in bf16 gives
    the recorded test accuracy (bf16 and fp32 logits can rank a borderline image differently)."""
    args = ["--preset", "sprint", "--epochs", "2", "--batch-size", "64", "--train-limit", "320", "--eval-limit",
            "128", "--quiet", "--precision", "bf16"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train_here(*args, "--out", str(straight)).returncode == 0
    r = run_train(*args, "--out", str(killed), env={**os.environ, "MLP_FAILPOINT": "before-rename:last.pt:2"})
    assert r.returncode == -signal.SIGKILL and checkpoint.load(killed / "last.pt")["epoch"] == 1
    r = train_here("--resume", str(killed), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "training on cpu in bf16: epochs 2-2" in r.stdout
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, killed))
    assert b["precision"] == "bf16" and without_timing(a["history"]) == without_timing(b["history"])
    assert 0.1 < b["test_acc"] == a["test_acc"] <= 1
    _, _, te = mu.fashion_mnist_loaders(64, eval_limit=128)
    net = load_model(killed / "model.pt")
    assert mu.evaluate_accuracy(net, te, precision="bf16", views=Views.of(net.cfg)) == b["test_acc"]


def test_train_py_set_overrides_and_test_curve(tmp_path):
    out = tmp_path / "run"
    r = run_train("--preset", "quick", "--epochs", "2", "--set", "epochs=9", "--train-limit", "1000", "--set", "patch=7",
                  "--set", "erase=0.25", "--test-curve", "--eval-limit", "500", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"]["patch"] == 7 and m["recipe"]["erase"] == 0.25 and m["epochs"] == 2, "--epochs wins"
    assert m["model"]["blocks"][0]["tokens"] == [16, 16, 16], "the patch axis (49 for K=4) follows K"
    assert m["command"].startswith("python train.py --preset quick") and "--test-curve" in m["command"]
    assert all(0 < h["test_acc"] <= 1 for h in m["history"]), "a test accuracy after every epoch"
    assert m["test_acc"] == next(h["test_acc"] for h in m["history"] if h["epoch"] == m["best_epoch"])


@pytest.mark.parametrize("args,message", [
    pytest.param(["--epochs", "0"], "epochs=0 must be positive", marks=pytest.mark.process),
    (["--lr", "-1"], "lr=-1.0 must be positive"),
    (["--train-limit", "0"], "--train-limit=0 must be positive"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--set", "dropout=lots"], "dropout='lots' should be a float"),
    (["--set", "patch"], "write FIELD=VALUE"),
    (["--set", "widht=3"], "unknown config fields ['widht']"),
    pytest.param(["--device", "cuda"], "'cuda' was requested but is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_train_py_bad_input_fails_cleanly_before_writing(tmp_path, args, message, request):
    """One case as a process of its own (exit code and stderr as a shell sees them); the others in this process,
    through the same `train.main`."""
    out = tmp_path / "run"
    r = train_cli(*args, "--out", str(out), request=request)
    code, stderr = r.returncode, r.stderr
    assert code != 0 and message in stderr and "Traceback" not in stderr
    assert not out.exists()


def execute_notebook(executed, **parameters):
    notebook.execute(str(ROOT / "notebooks" / "fashion_mnist_mlp.ipynb"), str(executed),
                     parameters={**dict(epochs=2, batch_size=64, train_limit=3000, eval_limit=500), **parameters},
                     cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    return nb


@pytest.fixture
def notebook_runs():
    """The run directories the notebook makes under runs/ with its default out_dir: removed afterwards."""
    before = set((ROOT / "runs").glob("notebook-*"))
    yield
    for d in set((ROOT / "runs").glob("notebook-*")) - before:
        shutil.rmtree(d)


def test_notebook_runs_top_to_bottom_with_papermill_twice_then_resumes(tmp_path, capfd, notebook_runs):
    """Executed twice with its defaults (make lab's Run All, twice): two runs in two new directories, nothing
    refused or overwritten. Then `resume = True, epochs = 3` continues the latest of them, with its own
    settings, to 3 epochs."""
    before = set((ROOT / "runs").glob("notebook-*"))
    nb = execute_notebook(tmp_path / "first.ipynb")
    execute_notebook(tmp_path / "second.ipynb")
    runs = sorted(set((ROOT / "runs").glob("notebook-*")) - before)
    assert len(runs) == 2 and all((d / "metrics.json").exists() for d in runs), runs
    out = runs[0]
    train_cell = next(c for c in nb.cells if "run(model_cfg" in c.source)
    assert "net=net" in train_cell.source and "result.net is net" in train_cell.source, "it trains the net it built"
    streams = [o.text for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "stream"]
    assert not [s for s in streams if "warn" in s.lower()], "no warning the user did not cause"
    kernel_log = capfd.readouterr().err  # the kernel's own stderr (over TCP it warned of plain-text messages)
    assert not [ln for ln in kernel_log.splitlines() if "warn" in ln.lower()], kernel_log[-2000:]
    images = [o for o in train_cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, "the live curves update one figure in place, not a pile of figures"
    logs = [o for o in train_cell.outputs if o.output_type == "display_data" and set(o.data) == {"text/plain"}]
    assert len(logs) == 1 and "epoch   2" in logs[0].data["text/plain"], "the log is one output under the figure"
    assert not [o for o in train_cell.outputs if o.output_type == "stream" and "epoch" in o.text]
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["train_limit"] == 3000 and 0.5 < m["test_acc"] <= 1
    check_live_curves(m)
    assert m["eval_limit"] == 500 and m["val_images"] == m["test_images"] == 500 and m["eval_views"] == 10
    assert (out / "model.pt").exists() and (out / "curves.png").exists()
    assert list(out.glob("events.out.tfevents.*")), "TensorBoard's event files"
    own_images = next(c for c in nb.cells if "predict_files(" in c.source)
    assert f"classifying with {out / 'model.pt'}" in own_images.outputs[0].text
    resumed = execute_notebook(tmp_path / "resumed.ipynb", resume=True, epochs=3, train_limit=None, preset="seed")
    setup = next(c for c in resumed.cells if "resumable(" in c.source)
    assert f"resuming {runs[1]}" in "".join(o.text for o in setup.outputs if o.output_type == "stream")
    m = json.loads((runs[1] / "metrics.json").read_text())
    assert m["preset"] == "quick" and m["train_limit"] == 3000, "the run's own settings, not the parameters'"
    assert m["epochs"] == 3 and m["extended"] == [dict(at_epoch=2, epochs_from=2, epochs_to=3)]
    assert sorted(set((ROOT / "runs").glob("notebook-*")) - before) == runs, "no new directory"


def test_no_warnings_the_user_did_not_cause(recwarn):
    """DataLoader workers follow this machine's CPUs (4 on 2 cores made torch warn every epoch), and a 1-epoch
    run's x axis is not singular (matplotlib warned)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_iter, _ = mu.load_data_fashion_mnist(256)
        assert train_iter.num_workers == min(4, mu.cpu_workers())
        next(iter(train_iter))
        an = mu.Animator(xlabel="epoch", legend=["a"], xlim=[1, 1])
        an.add(1, 0.5)
        an.png()
    assert len(an.axes[0].lines) == 1 and an.axes[0].lines[0].get_marker() == "o", "one point is drawn, as a marker"
