"""How a run is made, beside its model and recipe: `RunConfig`, and which of its settings a resume keeps."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KEPT_ON_RESUME = ("preset", "seed", "train_limit", "eval_limit", "max_seconds", "test_curve")


@dataclass
class RunConfig:
    """How a run is made, beside its model and recipe. The first six are the run's own: its checkpoint keeps
    them, and a resume keeps them too (`resumed_settings`)."""
    preset: str = "custom"              # the preset's name, for the record
    seed: int = 0                       # initial weights, data order, augmentation, dropout
    train_limit: int | None = None      # train on the first N training images only (smoke runs)
    eval_limit: int | None = None       # validate and test on the first N images only (recorded: no result)
    max_seconds: float | None = None    # stop after the epoch that reaches this much training (marked capped)
    test_curve: bool = False            # also test after every epoch (a learning curve; nothing is chosen on it)
    out_dir: str | Path | None = None   # the run directory: checkpoints every epoch, then the run's files
    resume: bool = False                # continue the run in out_dir from its checkpoint, with its settings
    resume_from: str = "last.pt"        # or best.pt, where last.pt is damaged
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False               # torch.compile (pays on GPUs)
    live: bool = True                   # draw the curves (in Jupyter: in place, several times an epoch)
    progress: bool = True               # a progress bar per epoch
    command: str = "run()"              # what started the run, for the record
    data_root: str | None = None

    def kept(self) -> dict:
        return {k: getattr(self, k) for k in KEPT_ON_RESUME}
