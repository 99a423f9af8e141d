"""Training over several processes (torchrun): joining the group, and a checkpoint that every rank waits for."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from mlp import checkpoint
from mlp.loop import Trainer, device_rng_state


class PeerFailed(RuntimeError):
    """Under torchrun: another rank (rank 0, which writes) failed; it reports why, this rank only exits."""


class CheckpointWriteError(OSError):
    """Rank 0 could not write a checkpoint (under torchrun the other ranks stop too: PeerFailed)."""


class Checkpointer:
    """After every epoch: DIR/last.pt, and DIR/best.pt when validation improved (rank 0 writes, all wait; if
    rank 0 cannot write, every rank stops)."""

    def __init__(self, run_dir: Path, meta: dict, writer: bool):
        self.run_dir, self.meta, self.writer, self.saved = run_dir, meta, writer, 0

    def __call__(self, trainer: Trainer):
        ranks = None
        if trainer.world > 1:  # every rank's own torch random state (dropout), so that a resume replays each
            ranks = [None] * trainer.world
            dist.all_gather_object(ranks, device_rng_state(trainer.device))
        error = None
        if self.writer:
            state = dict(trainer.state_dict(), **self.meta)
            if ranks:
                state["rng"]["ranks"] = ranks
            try:
                if trainer.best_epoch == len(trainer.history):  # this epoch is the new best
                    checkpoint.save(self.run_dir / "best.pt", state)
                checkpoint.save(self.run_dir / "last.pt", state)
                self.saved = len(trainer.history)
            except OSError as e:
                error = CheckpointWriteError(e.errno, f"cannot write a checkpoint into {self.run_dir} ({e.strerror}). "
                                + self.where() + "; free space, then continue with --resume")
        if trainer.world > 1:  # one collective for all: nobody races ahead of rank 0's checkpoint, or waits
            failed = torch.tensor([float(error is not None)], device=trainer.device)  # forever when it failed
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() and error is None:
                raise PeerFailed("rank 0 could not write a checkpoint")
        if error is not None:
            raise error

    def where(self) -> str:
        return (f"the checkpoint of epoch {self.saved} is intact in {self.run_dir}" if self.saved else
                "no complete epoch was saved")


def setup_distributed(device):
    """Under torchrun (WORLD_SIZE > 1): join the process group (nccl on CUDA, gloo on CPU) and take this
    process's GPU. Returns (rank, world_size, device); (0, 1, device) for a plain `python train.py`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device
