"""Run records without torch: atomic writes, the git commit, mean ± std, time to 90 %, the patch-study table."""
from __future__ import annotations

import errno
import functools
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

from mlp import cpu

ROOT = Path(__file__).resolve().parents[1]


def _failpoint(where: str, path: Path):
    """Fault injection for the tests: MLP_FAILPOINT=WHERE:NAME:N, at the N-th atomic write of a file named
    NAME, kills this process with SIGKILL at WHERE (mid-write | before-rename), or fails the write as a full
    disk does (WHERE = enospc). Unset: nothing happens."""
    spec = os.environ.get("MLP_FAILPOINT", "")
    if spec.count(":") != 2:
        return
    at, name, nth = spec.split(":")
    if at == where and name == path.name:
        _failpoint.counts[where] = _failpoint.counts.get(where, 0) + 1
        if _failpoint.counts[where] == int(nth):
            if where == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.kill(os.getpid(), signal.SIGKILL)


_failpoint.counts = {}


def failpoint_delay(rank: int):
    """Fault injection for the tests: MLP_FAILPOINT=slow-epoch:rankR:S makes rank R's epochs S seconds longer."""
    at, _, rest = os.environ.get("MLP_FAILPOINT", "").partition(":")
    if at == "slow-epoch" and rest.partition(":")[0] == f"rank{rank}":
        time.sleep(float(rest.partition(":")[2]))


def alive(pid: int) -> bool:
    """Whether a process of this host has this pid (one of another user's counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write(path, payload: bytes | str):
    """Write a temp file beside `path`, fsync, rename: readers never see half a file, and a crash (or a full
    disk) leaves the previous version in place. The temp name is fixed, so crashes cannot pile up temps."""
    path = Path(path)
    data = payload.encode() if isinstance(payload, str) else payload
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _failpoint("enospc", path)
        with open(tmp, "wb") as f:
            if os.environ.get("MLP_FAILPOINT", "").startswith("mid-write:"):
                f.write(data[:len(data) // 2])
                f.flush()
                _failpoint("mid-write", path)
            f.write(data[f.tell():])
            f.flush()
            os.fsync(f.fileno())
        _failpoint("before-rename", path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. ENOSPC: do not leave a partial temp file eating the space
        raise


@functools.cache
def git_commit() -> str | None:
    """HEAD (with "-dirty" if tracked files differ), read once per process: call it when a run starts, so a
    commit made while it trains is not credited with its results. Where there is no git repository (a copy
    of the tree on a GPU machine), $MLP_GIT_COMMIT, set by whoever copied it; it wins where set, since such a
    copy can carry a stale .git (the first H200 run read 9edd377-dirty from one, at 30590a4)."""
    if os.environ.get("MLP_GIT_COMMIT"):
        return os.environ["MLP_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def dev_cpu_ratio(hardware: str) -> float | None:
    """Development-CPU seconds per second of the CPU that `hardware` (hardware.describe) names, without
    measuring: 1 on the development CPU itself (mlp/cpu.py identifies it), None elsewhere."""
    return 1.0 if cpu.is_dev(hardware) else None


def dev_ratio_of(record: dict) -> float | None:
    """A record's development-CPU seconds per second: the ratio calibrated in its session where it carries one
    (mlp/budget.calibrate), else 1 on the development CPU. Only a provisional cost uses it (mlp/results.cost)."""
    cal = record.get("calibration")
    return cal["ratio"] if cal else dev_cpu_ratio(record["hardware"])



def dev_seconds(record: dict) -> float | None:
    """A record's training seconds in development-CPU seconds, at dev_ratio_of's ratio (None where it has none)."""
    ratio = dev_ratio_of(record)
    return None if ratio is None else ratio * record["train_seconds"]


def mean_std(xs) -> tuple[float, float]:
    xs = list(xs)
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def time_to_accuracy(history, acc: float = 0.90) -> tuple[float, int] | tuple[None, None]:
    """bench.py's time to 90 %: (training + validation seconds, epoch) up to the first epoch whose validation
    accuracy reaches `acc`, from a run's history; (None, None) if none does. Where a recipe skips epochs
    (`Recipe.validates`), only the validated ones can count, so the time is an upper bound."""
    elapsed = 0.0
    for h in history:
        elapsed += h["seconds"] + h.get("eval_seconds", 0.0)
        if h["val_acc"] is not None and h["val_acc"] >= acc:  # None: not validated (Recipe.validates)
            return elapsed, h["epoch"]
    return None, None


def timed(r: dict) -> str:
    """Where fewer of a study row's runs were timed than trained (its seconds are from one CPU): how many."""
    n = r.get("sec_runs", r["runs"])
    return "" if n == r["runs"] else f" (n={n})"


def study_table(summary) -> str:
    """The patch study's summary as a Markdown table (the study notebook and README show the same)."""
    lines = ["| arm | K (patches) | params | MFLOP per training image | s/epoch | epochs | n | validation | test |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in summary:
        lines.append(f"| `{r.get('arm', r['preset'])}` | {r['patch']} ({r['patches']}) | {r['params']:,} | "
                     f"{1e3 * r['gflops']:.1f} | {r['sec_per_epoch']:.1f} ± {r.get('sec_std', 0.0):.1f}{timed(r)} | "
                     f"{r['epochs']}{' (capped)' if r.get('capped') else ''} | {r['runs']} | "
                     f"{100 * r['val_acc']:.2f} ± {100 * r['val_std']:.2f} % | {100 * r['test_acc']:.2f} ± "
                     f"{100 * r['test_std']:.2f} % |")
    return "\n".join(lines)
