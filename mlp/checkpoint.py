"""A run directory's files: checkpoints and saved models (atomic writes, weights-only loading, one clear error
for a bad file), and the lock that keeps two runs out of one directory.

last.pt / best.pt (written by train.py after every epoch) hold everything a resume needs; model.pt holds
what inference needs: the model config and the weights.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import time
from pathlib import Path

import torch

from mlp.nets import build_net, config_class, config_from
from mlp.records import atomic_write

FORMAT = 2  # 1: the layout before model config and recipe were separated (a single "config")


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, of an older layout or of another run; the message says what to do."""


def save(path, state: dict):
    buf = io.BytesIO()
    torch.save(dict(state, format=FORMAT), buf)
    atomic_write(path, buf.getvalue())  # a crash mid-write leaves the previous file intact


def load(path) -> dict:
    """torch.load(weights_only=True), with one clear error for a missing, damaged or old-layout file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: was the run started with this output directory, and "
                              f"did it finish at least one epoch?")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        size = path.stat().st_size
        raise CheckpointError(f"{path} is damaged: not a readable checkpoint ({size:,} bytes; "
                              f"{type(e).__name__}), probably truncated") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint written by this repo (it holds a {type(ckpt).__name__})")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} was written by an older version of this repo (one `config` mixing model "
                              f"and recipe); retrain it with this version, or use it from commit 007c26a")
    return ckpt


def evaluated_weights(ckpt: dict):
    """The weights that were validated: a model.pt's, or a last.pt/best.pt's moving average when its recipe
    kept one (recipe.ema), else its training weights."""
    return ckpt.get("state_dict") or (ckpt.get("ema") or {}).get("weights") or ckpt.get("weights")


def load_model(path) -> torch.nn.Module:
    """A model.pt (or last.pt/best.pt) as its network (an MLPNet or a baseline) in eval mode. The config and
    every tensor's shape are checked before the network is built (a file of a few bytes may declare a
    terabyte-sized network); each problem is one line of the error."""
    ckpt = load(path)
    weights = evaluated_weights(ckpt)
    if not isinstance(ckpt.get("model"), dict) or not isinstance(weights, dict):
        raise CheckpointError(f"{path} is not a model.pt written by this repo (it has no model config and weights)")
    problems = []
    unknown = sorted(set(ckpt["model"]) - {f.name for f in dataclasses.fields(config_class(ckpt["model"]))})
    if unknown:
        problems.append(f"unknown model config fields {unknown}")
    try:
        cfg = config_from({k: v for k, v in ckpt["model"].items() if k not in unknown})
        with torch.device("meta"):  # shapes only: nothing is allocated
            expected = {k: tuple(v.shape) for k, v in build_net(cfg).state_dict().items()}
    except (TypeError, ValueError) as e:
        problems.append(str(e))
        expected = None
    if expected is not None:
        held = {k: tuple(v.shape) for k, v in weights.items() if torch.is_tensor(v)}
        problems += [f"{k}: missing from the file" for k in expected if k not in held]
        problems += [f"{k}: the file holds {list(held[k])}, the config makes {list(s)}"
                     for k, s in expected.items() if k in held and held[k] != s]
        problems += [f"{k}: in the file, not in the network the config makes" for k in held if k not in expected]
    if problems:
        raise CheckpointError(f"{path} holds a model config or weights this repo cannot build:\n  "
                              + "\n  ".join(problems))
    net = build_net(cfg)
    net.load_state_dict(weights)
    return net.eval()


class RunInUse(RuntimeError):
    """Another live process is writing into the same run directory."""


class RunLock:
    """An exclusive `fcntl.flock` on DIR/.lock for as long as a run writes into DIR.

    flock (Linux and macOS) is released by the kernel when the holder dies, even by SIGKILL, so a killed
    run never leaves a stale lock; the file's content (PID, start time, command) only names the holder."""

    def __init__(self, run_dir, command: str = ""):
        self.path, self.command, self.fd = Path(run_dir) / ".lock", command, None

    def __enter__(self):
        import fcntl  # here, not at the top: predict.py loads models where there is no fcntl (Windows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                who = json.loads(self.path.read_text())
                holder = f"PID {who['pid']} on {who['host']}, started {who['started']} ({who['command']})"
            except (OSError, ValueError, KeyError):
                holder = "another process"
            raise RunInUse(f"run directory {self.path.parent} is in use by {holder}. Wait for that run to end "
                           f"(or stop it), or choose another output directory.") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), command=self.command,
                                     started=time.strftime("%Y-%m-%d %H:%M:%S %Z"))).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock; the file stays, harmless
            self.fd = None
