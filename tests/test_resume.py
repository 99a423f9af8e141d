"""Checkpoints, resume after SIGKILL or Ctrl-C, bad input, and same-seed reproducibility (CPU)."""
import json
import signal
import subprocess

import pytest
import torch

from conftest import finished_run, start_train_py, train_cli, train_here, train_py, wait_for, without_timing
from mlp import checkpoint
from mlp.data import FastLoader
from mlp.loop import set_rng_state
from mlp.recipe import get_preset
from mlp.runner import RunConfig, quiet, run

load_checkpoint = checkpoint.load

SMALL = ["--preset", "sprint", "--batch-size", "64", "--train-limit", "1500", "--eval-limit", "500", "--quiet",
         "--device", "cpu"]
train = train_py
# The sprint preset validates a moving average (recipe.ema) and trains with Muon (recipe.optimizer); RAW runs
# do neither, so resume is tested with both optimisers' checkpoint states.
RAW = ["--set", "ema=0", "--set", "optimizer=adamw"]


def start_and_wait_for_epoch_1(out, *args):
    p = start_train_py(*SMALL, "--epochs", "2", "--out", str(out), *args)
    wait_for(out / "last.pt", p)
    return p


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return finished_run(tmp_path_factory, *SMALL, "--epochs", "2")


@pytest.fixture(scope="module")
def straight_raw(tmp_path_factory):
    return finished_run(tmp_path_factory, *SMALL, *RAW, "--epochs", "2")


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """`straight`'s run, stopped by a training-time budget after its first epoch of two."""
    out = finished_run(tmp_path_factory, *SMALL, "--epochs", "2", "--max-seconds", "0.001")
    assert json.loads((out / "metrics.json").read_text())["capped"] is True
    return out


@pytest.mark.parametrize("ema", [False, True], ids=["adamw-weights", "muon-ema"])
def test_sigkill_mid_epoch_then_resume_equals_a_straight_run(ema, request, tmp_path):
    """With recipe.ema the moving average is part of the checkpoint: resuming continues it exactly."""
    straight = request.getfixturevalue("straight" if ema else "straight_raw")
    out = tmp_path / "killed"
    p = start_and_wait_for_epoch_1(out, *([] if ema else RAW))
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1, "killed in epoch 2: the epoch-1 checkpoint is intact"
    assert not (out / "metrics.json").exists()
    r = train_here("--resume", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (straight, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights must be identical"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight, out))
    assert without_timing(ma["history"]) == without_timing(mb["history"])
    assert ma["test_acc"] == mb["test_acc"] and ma["val_acc"] == mb["val_acc"]


def test_ctrl_c_stops_saves_and_says_how_to_resume(tmp_path):
    out = tmp_path / "interrupted"
    p = start_and_wait_for_epoch_1(out)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130
    assert "interrupted during epoch 2" in stdout and f"--resume {out}" in stdout
    assert "Traceback" not in stderr
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and (out / "best.pt").exists()


def test_resuming_with_another_config_is_one_clear_error(straight):
    """The notebook resumes with its own preset: a different one is refused before anything is written."""
    def files():
        return {p.name: p.stat().st_mtime_ns for p in straight.iterdir() if p.name != ".lock"}
    before = files()
    with pytest.raises(checkpoint.CheckpointError, match="a resumed run keeps its own settings") as e:
        run(*get_preset("seed"), RunConfig(preset="sprint", train_limit=1500, eval_limit=500, out_dir=straight,
                                           resume=True, live=False), log=quiet)
    assert "optimizer='adam' (the run has 'muon')" in str(e.value) and "patch=4 (the run has 7)" in str(e.value)
    assert "preset=" not in str(e.value), "only what differs is named"
    assert files() == before, "nothing written"


def test_last_and_best_checkpoints_hold_everything_needed(straight):
    ckpt = load_checkpoint(straight / "last.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    assert {"weights", "optimizer", "scheduler", "rng", "best_val_acc", "model", "recipe", "seed", "run_id"} <= set(ckpt)
    assert ckpt["model"] == get_preset("sprint")[0].to_dict()
    assert ckpt["recipe"] == get_preset("sprint", batch_size=64, epochs=2)[1].to_dict()
    assert {"torch", "python", "numpy", "loader"} <= set(ckpt["rng"])
    best = load_checkpoint(straight / "best.pt")
    assert best["best_val_acc"] == max(r["val_acc"] for r in ckpt["history"])


def test_same_seed_gives_identical_metrics(straight, tmp_path):
    r = train(*SMALL, "--epochs", "2", "--out", str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight, tmp_path / "again"))
    assert without_timing(ma["history"]) == without_timing(mb["history"]) and ma["test_acc"] == mb["test_acc"]
    assert ma["seed"] == 0 and ma["git_commit"] is not None and ma["torch"] == torch.__version__


def test_non_finite_loss_stops_with_a_hint_and_keeps_no_bad_files(tmp_path):
    """A run that diverges in its first epoch leaves nothing worth keeping (run.json alone): the same command
    with a sane rate may start there again."""
    out = tmp_path / "nan"
    r = train_here(*SMALL, "--epochs", "2", "--lr", "1e12", "--out", str(out))
    assert r.returncode != 0 and "learning rate" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()
    assert not (out / "last.pt").exists() and (out / "run.json").exists()
    r = train_here(*SMALL, "--epochs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "metrics.json").read_text())["run_id"] == json.loads((out / "run.json").read_text())["run_id"]


def test_a_resume_cannot_cut_the_schedule_the_run_was_made_for(capped):
    """A 2-epoch run stopped after epoch 1: --epochs 1 would end its cosine half-way; refused, in one line."""
    before = files_of(capped)
    r = train_here("--resume", str(capped), "--epochs", "1", "--quiet")
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "epochs=1: the run was made for 2 epochs (1 done)" in r.stderr
    assert files_of(capped) == before


def test_a_capped_run_continues_with_a_new_budget(capped, straight, tmp_path):
    """--max-seconds on a resume is the whole run's new budget: the capped run goes on to its last epoch,
    bit for bit the uncapped run, and the record says the budget changed."""
    out = copy_run(capped, tmp_path / "more")
    r = train_here("--resume", str(out), "--max-seconds", "1e9", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "its training-time budget: 1000000000.0 s (was 0.001)" in r.stdout and "epochs 2-2" in r.stdout
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, out))
    assert b["capped"] is False and b["epochs"] == 2 and b["max_seconds"] == 1e9
    assert b["extended"] == [dict(at_epoch=1, max_seconds_from=0.001, max_seconds_to=1e9)]
    assert without_timing(a["history"]) == without_timing(b["history"]) and a["test_acc"] == b["test_acc"]


def test_a_rank_the_checkpoint_has_no_state_for_draws_a_stream_of_its_own(straight):
    """A single-process checkpoint resumed under torchrun: rank 0 continues the saved stream; every other
    rank takes its own, derived from it (the same each time), not rank 0's dropout masks."""
    state = load_checkpoint(straight / "last.pt")["rng"]
    assert "ranks" not in state
    loader = FastLoader(torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), 2)
    draws = []
    for rank in (0, 1, 2, 1):
        set_rng_state(state, loader, "cpu", rank)
        draws.append(torch.rand(8))
    torch.set_rng_state(state["torch"])
    assert torch.equal(draws[0], torch.rand(8)), "rank 0: the saved stream"
    assert not torch.equal(draws[1], draws[0]) and not torch.equal(draws[2], draws[0])
    assert not torch.equal(draws[1], draws[2]) and torch.equal(draws[1], draws[3])


def test_a_run_without_a_validation_split_is_refused_before_anything_is_written(tmp_path):
    """val_size=0 would leave every validation NaN and keep no epoch's weights."""
    out = tmp_path / "noval"
    r = train_here(*SMALL, "--epochs", "1", "--set", "val_size=0", "--out", str(out))
    assert r.returncode == 1 and "val_size=0 leaves nothing to validate on" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_unwritable_run_directory_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = train_here(*SMALL, "--epochs", "1", "--out", str(blocker / "run"))
    assert r.returncode != 0 and "is not writable" in r.stderr and "training on" not in r.stdout


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    r = train_here("--resume", str(tmp_path))
    assert r.returncode != 0 and "no checkpoint at" in r.stderr and "Traceback" not in r.stderr


def test_full_run_directory_fails_before_training(tmp_path):
    """A 512 KiB filesystem cannot take a checkpoint: train.py must say so before it trains."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        r = train_here(*SMALL, "--epochs", "1", "--out", str(mnt / "run"))
        assert r.returncode != 0 and "is not writable" in r.stderr and "training on" not in r.stdout
        assert list((mnt / "run").iterdir()) == [], "no probe or partial file left behind"
    finally:
        subprocess.run(["umount", str(mnt)])


def test_with_ema_the_moving_average_is_what_is_validated_and_saved(straight, straight_raw):
    assert get_preset("sprint")[1].ema > 0, "the sprint preset's recipe keeps a moving average"
    best, last = checkpoint.load(straight / "best.pt"), checkpoint.load(straight / "last.pt")
    saved = torch.load(straight / "model.pt", weights_only=True)["state_dict"]
    average, raw = best["ema"]["weights"], best["weights"]
    assert all(torch.equal(saved[k], average[k]) for k in saved), "model.pt holds the best epoch's average"
    assert not all(torch.equal(average[k], raw[k]) for k in raw), "the average is not the training weights"
    assert last["ema"]["n"] == 2 * -(-1500 // 64)  # one update per step: 24 batches x 2 epochs
    net = checkpoint.load_model(straight / "best.pt")
    assert all(torch.equal(net.state_dict()[k], average[k]) for k in average)
    raw_last = checkpoint.load(straight_raw / "last.pt")
    assert raw_last["ema"] is None
    assert set(last["optimizer"]) == {"muon", "adamw"} and "param_groups" in raw_last["optimizer"], \
        "the sprint preset's checkpoint holds MuonAdamW's two states; the RAW run's is AdamW's own"


def test_ema_decay_ramps_up_so_short_runs_are_not_stuck_near_initialisation():
    from mlp.loop import ema_update
    update = ema_update(0.998)
    for n, expected in ((0, 0.9), (8, 1 - 9 / 18), (10 ** 6, 0.002)):  # weight of the newest step: 1 - decay_n
        averaged, current = [torch.zeros(3)], [torch.ones(3)]
        update(averaged, current, torch.tensor(n))
        assert torch.allclose(averaged[0], torch.full((3,), expected)), (n, averaged[0])
    counts = [torch.tensor(3)]
    update(counts, [torch.tensor(7)], torch.tensor(5))
    assert counts[0].item() == 7, "integer buffers (BatchNorm's counter) are copied, not averaged"


def files_of(run_dir):
    return {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.name != ".lock"}


def copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


@pytest.mark.parametrize("args,named", [
    pytest.param(["--lr", "0.5"], "lr=0.5 (the run has 0.005)", marks=pytest.mark.process),
    (["--batch-size", "32"], "batch_size=32 (the run has 64)"),
    (["--set", "patch=4"], "patch=4 (the run has 7)"),
    (["--set", "ema=0"], "ema=0.0 (the run has 0.998)"),
    (["--preset", "quick"], "preset='quick' (the run has 'sprint')"),
    (["--seed", "3"], "seed=3 (the run has 0)"),
    (["--train-limit", "1000"], "train_limit=1000 (the run has 1500)"),
    (["--eval-limit", "100"], "eval_limit=100 (the run has 500)"),
    (["--precision", "OTHER"], "precision='OTHER' (the run has 'OWN')"),
    (["--epochs", "1"], "epochs=1: the run was made for 2 epochs (2 done)"),
])
def test_resume_refuses_every_changed_setting_by_name_and_writes_nothing(straight, args, named, request):
    """One case as a process of its own; the others through the same `train.main` in this process."""
    own = load_checkpoint(straight / "last.pt")["precision"]  # auto: bf16 or fp32, by the CPU
    other = "fp32" if own == "bf16" else "bf16"
    args, named = [other if a == "OTHER" else a for a in args], named.replace("OTHER", other).replace("OWN", own)
    before = files_of(straight)
    r = train_cli("--resume", str(straight), "--quiet", *args, request=request)
    code, stderr = r.returncode, r.stderr
    assert code == 1 and named in stderr and "Traceback" not in stderr, stderr
    assert stderr.count("\n") == 1, "one line"
    assert files_of(straight) == before


def test_resume_with_the_runs_own_settings_is_accepted(straight, tmp_path):
    out = copy_run(straight, tmp_path / "again")
    own = load_checkpoint(straight / "last.pt")["precision"]  # auto: bf16 or fp32, by the CPU
    r = train_here("--resume", str(out), "--quiet", "--preset", "sprint", "--seed", "0", "--train-limit", "1500",
                   "--eval-limit", "500", "--epochs", "2", "--precision", own)
    assert r.returncode == 0, r.stderr


def test_resume_with_more_epochs_extends_the_run_and_says_so(straight, tmp_path):
    """timm's and nanoGPT's --resume with a larger --epochs: the run goes on; the schedule is the new length's
    from the next step; the record lists the extension."""
    out = copy_run(straight, tmp_path / "extended")
    r = train_here("--resume", str(out), "--epochs", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "extending the run from 2 to 3 epochs" in r.stdout and "epochs 3-3" in r.stdout
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, out))
    assert b["epochs"] == 3 and b["recipe"]["epochs"] == 3
    assert b["extended"] == [dict(at_epoch=2, epochs_from=2, epochs_to=3)] and a["extended"] == []
    assert without_timing(b["history"])[:2] == without_timing(a["history"])
    last = load_checkpoint(out / "last.pt")
    steps = 3 * -(-1500 // 64)
    recipe = get_preset("sprint", batch_size=64, epochs=3)[1]
    assert last["scheduler"]["last_epoch"] == steps and last["extended"] == b["extended"]
    # epoch 3 ran at the 3-epoch cosine's rates: its first step's rate is the recorded one
    assert b["history"][2]["lr"] == pytest.approx(recipe.lr * recipe.lr_factor(2 * steps // 3, steps // 3))


@pytest.mark.parametrize("args,message", [
    (["--out", "OTHER", "--resume", "RUN"], "name two directories"),
    (["--out", "RUN", "--from", "best.pt"], "--from best.pt needs --resume DIR"),
])
def test_resume_flags_that_contradict_each_other_are_refused(straight, tmp_path, args, message):
    args = [str(straight) if a == "RUN" else str(tmp_path / "other") if a == "OTHER" else a for a in args]
    before = files_of(straight)
    r = train_here(*args, "--quiet")
    code, stderr = r.returncode, r.stderr
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert files_of(straight) == before and not (tmp_path / "other").exists()


def test_a_fresh_run_into_a_used_run_directory_is_refused_naming_what_is_there(straight):
    before = files_of(straight)
    r = train_here(*SMALL, "--epochs", "2", "--out", str(straight))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "training on" not in r.stdout
    assert f"run directory {straight} already holds a run (last.pt, best.pt, model.pt, metrics.json" in r.stderr
    assert f"--resume {straight}" in r.stderr and "another output directory" in r.stderr
    assert files_of(straight) == before


def test_resume_checks_best_pt_belongs_to_the_run(straight, straight_raw, tmp_path):
    """A best.pt of another run beside this run's last.pt is named, not loaded as this run's best weights."""
    out = copy_run(straight, tmp_path / "mixed")
    (out / "best.pt").write_bytes((straight_raw / "best.pt").read_bytes())
    r = train_here("--resume", str(out), "--quiet")
    assert r.returncode == 1 and f"{out / 'best.pt'} belongs to another run" in r.stderr
