"""Faults people cause or meet: two runs in one directory, crashes during a checkpoint write, a damaged
last.pt, a full disk mid-run. Each is injected for real (processes, SIGKILL, a small tmpfs) on small data."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, finished_run, start_train_py, train_here, train_py, wait_for, without_timing
from mlp import checkpoint

# One view per image at evaluation (the default evaluates ten): the faults are in training and checkpoints.
SMALL = ["--preset", "default", "--batch-size", "64", "--train-limit", "1500", "--eval-limit", "200", "--quiet",
         "--set", "flip_tta=false", "--set", "shift_tta=0",
         "--device", "cpu", "--precision", "fp32"]
train, start = train_py, start_train_py


def history(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    return without_timing(m["history"]), m["test_acc"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return finished_run(tmp_path_factory, *SMALL, "--epochs", "3")


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    return finished_run(tmp_path_factory, *SMALL, "--epochs", "2")


def copy_of(run_dir, dst):
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_a_second_run_into_a_live_run_directory_stops_at_once_naming_it(tmp_path, straight):
    out = tmp_path / "shared"
    first = start(*SMALL, "--epochs", "3", "--out", str(out))
    wait_for(out / "run.json", first)
    t0 = time.time()
    second = train_here(*SMALL, "--epochs", "3", "--out", str(out))
    assert second.returncode == 1 and time.time() - t0 < 60
    assert f"is in use by PID {first.pid}" in second.stderr and "started 20" in second.stderr
    assert "Traceback" not in second.stderr and "training on" not in second.stdout
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert history(out) == history(straight), "the first run was not disturbed"


def test_a_killed_runs_lock_does_not_block_the_next_run(tmp_path, straight):
    out = tmp_path / "killed"
    p = start(*SMALL, "--epochs", "3", "--out", str(out))
    wait_for(out / "last.pt", p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert json.loads((out / ".lock").read_text())["pid"] == p.pid, "the dead run's lock file is still there"
    r = train_here("--resume", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert history(out) == history(straight)


def test_the_lock_in_one_process(tmp_path):
    """The notebook run twice at once in one kernel (two threads) is refused the same way."""
    with checkpoint.RunLock(tmp_path, "notebook"):
        with pytest.raises(checkpoint.RunInUse, match=f"in use by PID {os.getpid()}.*notebook"):
            checkpoint.RunLock(tmp_path).__enter__()
    with checkpoint.RunLock(tmp_path):  # released: free again
        pass


@pytest.mark.parametrize("where", ["before-rename", "mid-write"])
def test_sigkill_during_checkpoint_writes_keeps_the_previous_and_resumes(tmp_path, straight, where):
    """SIGKILL inside the write of epoch 2's last.pt, twice in a row (the resumed run dies the same way):
    last.pt stays epoch 1 and loadable, at most one temp file exists, and the final resume equals a straight run."""
    out = tmp_path / "crash"
    r = train(*SMALL, "--epochs", "3", "--out", str(out), env={"MLP_FAILPOINT": f"{where}:last.pt:2"})
    assert r.returncode == -signal.SIGKILL
    assert checkpoint.load(out / "last.pt")["epoch"] == 1
    assert [p.name for p in out.glob(".*.tmp")] == [".last.pt.tmp"], "the crash left its temp file"
    r = train("--resume", str(out), "--quiet", env={"MLP_FAILPOINT": f"{where}:last.pt:1"})
    assert r.returncode == -signal.SIGKILL and checkpoint.load(out / "last.pt")["epoch"] == 1
    assert len(list(out.glob(".*.tmp"))) == 1, "temp files do not pile up"
    r = train_here("--resume", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert history(out) == history(straight)
    assert not list(out.glob(".*.tmp")), "no temp file is left behind"


@pytest.mark.parametrize("damage", ["truncated", "empty", "another run's"])
def test_a_damaged_last_pt_names_the_file_and_offers_best_pt(tmp_path, straight, two_epochs, damage):
    out = copy_of(two_epochs, tmp_path / "damaged")
    last = out / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        last.write_bytes((straight / "last.pt").read_bytes())
    r = train_here("--resume", str(out), "--quiet")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    expected = "belongs to another run" if damage == "another run's" else "last.pt is damaged"
    assert expected in r.stderr and str(last) in r.stderr
    best = checkpoint.load(out / "best.pt")
    assert f"best.pt (epoch {best['epoch']}" in r.stderr and f"--resume {out} --from best.pt" in r.stderr
    assert "start afresh" in r.stderr


def test_resume_from_best_pt_continues_from_its_epoch(tmp_path, two_epochs):
    out = copy_of(two_epochs, tmp_path / "frombest")
    (out / "last.pt").write_bytes(b"")
    epoch = checkpoint.load(out / "best.pt")["epoch"]
    r = train_here("--resume", str(out), "--from", "best.pt", "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"epochs {epoch + 1}-2" in r.stdout or epoch == 2
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2


def test_disk_full_mid_run_stops_cleanly_and_resumes_once_space_is_freed(tmp_path, straight):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        if os.environ.get("CI"):
            pytest.fail("cannot mount a tmpfs (needs root), and CI must run this test")
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out = mnt / "run"
        # each epoch made 2 s longer (a fault point): the disk is filled while epoch 2 trains, before its write
        p = subprocess.Popen([sys.executable, "train.py", *SMALL, "--epochs", "3", "--out", str(out)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, MLP_FAILPOINT="slow-epoch:rank0:2"))
        wait_for(out / "last.pt", p)
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        filler = mnt / "filler"
        with open(filler, "wb") as f:  # leave less than a checkpoint needs
            f.write(b"\0" * (free - 256 * 1024))
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 1 and "Traceback" not in stderr
        assert "No space left on device" in stderr and "the checkpoint of epoch 1 is intact" in stderr
        assert checkpoint.load(out / "last.pt")["epoch"] == 1 and not list(out.glob(".*.tmp"))
        filler.unlink()
        r = train_here("--resume", str(out), "--quiet")
        assert r.returncode == 0, r.stderr
        assert history(out) == history(straight)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
