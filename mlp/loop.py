"""The training loop: `Trainer` (a model, its optimiser and schedule, and what a checkpoint holds) and `fit`,
a short loop over `Trainer.fit_epoch`. mlp/runner.py's `run` drives it for the notebook, the CLI and the study.
"""
from __future__ import annotations

import math
import random
import signal
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from mlp import hardware, records
from mlp.evaluate import ONE, Views, evaluate_accuracy
from mlp.optim import make_optimizer, make_scheduler
from mlp.recipe import Recipe

# Live curves: ~5 points an epoch, the run's first within 10 s and then one at least every 30 s (each point the
# mean of the last ~1/PROGRESS_POINTS epoch of steps, across epoch boundaries). Each redraw renders a PNG
# (~0.25 s on the development CPU) inside the training time: no more of them than the curve needs.
PROGRESS_POINTS, FIRST_POINT_SECONDS, PROGRESS_SECONDS = 5, 10.0, 30.0


def seed_everything(seed: int, rank: int = 0):
    """Seed python, numpy and torch. Under torchrun, rank r > 0 takes a seed of its own derived from (seed, r),
    so that its dropout and stochastic depth differ from the other ranks'; rank 0 keeps the plain `seed`, so a
    single-process run draws what it always drew."""
    if rank:
        seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_rng_state(device) -> dict:
    """This process's torch random state: the CPU generator's, and the GPU's for a CUDA device."""
    device = torch.device(device)
    return dict(torch=torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state(device)}
                                               if device.type == "cuda" else {}))


def rng_state(loader, device) -> dict:
    np_state = np.random.get_state()
    return dict(device_rng_state(device), python=list(random.getstate()[1]),
                numpy=torch.from_numpy(np_state[1].astype(np.int64)), numpy_pos=int(np_state[2]),
                loader=loader.generator.get_state())


def set_rng_state(state: dict, loader, device, rank: int = 0):
    """Restore `rng_state`. A run of several processes keeps each rank's torch state in `state["ranks"]`; a rank
    the checkpoint has no state for (a single-process run resumed under torchrun) takes one derived from it."""
    ranks = state.get("ranks") or []
    own = ranks[rank] if rank < len(ranks) else state
    torch.set_rng_state(own["torch"])
    if "cuda" in own and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(own["cuda"], device)
    if rank and rank >= len(ranks):  # a checkpoint of fewer processes: a stream of this rank's own, derived from
        derived = np.random.SeedSequence([rank, *own["torch"].tolist()]).generate_state(1)[0]  # the saved one
        torch.manual_seed(int(derived))  # (else every new rank would draw rank 0's dropout masks)
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    loader.generator.set_state(state["loader"])


class StopOnInterrupt:
    """While active, Ctrl-C (SIGINT, also a Jupyter interrupt) only sets `requested`; a second one interrupts."""

    def __enter__(self):
        self.requested, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def ema_update(decay: float):
    """AveragedModel's update for an exponential moving average whose decay ramps up as (1 + n) / (10 + n)
    after n updates (TensorFlow's and timm's warm-up): early on it averages only the last ~n/9 steps, so a
    short run is not evaluated on weights still close to their initialisation."""
    @torch.no_grad()
    def update(averaged: list, current: list, n: torch.Tensor):
        if not averaged[0].is_floating_point():  # BatchNorm's batch counter
            return torch._foreach_copy_(averaged, current)
        n = float(n)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))
    return update


class Trainer:
    """A model with its optimiser, schedule and loaders; `history` and the best validation weights.
    `state_dict()` is everything a checkpoint needs to continue bit for bit."""

    def __init__(self, net, recipe: Recipe, loaders, device, precision, compile=False, test_curve=False):
        self.net, self.recipe, self.device, self.precision = net.to(device), recipe, device, precision
        self.train_iter, self.val_iter, self.test_iter = loaders
        # With recipe.ema, an exponential moving average of the weights (BatchNorm statistics too) is what is
        # validated, selected and saved: at a high learning rate it is better than the last step's weights
        # (copied before DDP wraps the network).
        self.ema = AveragedModel(net, multi_avg_fn=ema_update(recipe.ema), use_buffers=True) \
            if recipe.ema else None
        self.evaluated = self.ema.module if self.ema else net
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if self.world > 1 else net
        self.model = torch.compile(model) if compile else model  # off by default: a 2-core CPU never won it back
        self.opt = make_optimizer(net, recipe)
        self.sched = make_scheduler(self.opt, recipe, len(self.train_iter))
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.loss_f = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        self.test_curve = test_curve
        self.views = Views.of(net.cfg)  # what validation averages: the views the model config declares
        self.history, self.best_val, self.best_epoch, self.best_weights = [], -1.0, 0, None
        self.recent = torch.zeros(0, 3, device=device)  # the last steps' (loss sum, correct, count): the window

    def fit_epoch(self, epoch, stop, progress=False, on_progress=None) -> dict | None:
        """Train one epoch and validate. Returns its history record, or None if `stop` was requested.
        Sums stay on the device; `on_progress(x, loss, acc)` reads them ~5 times an epoch (live curves): the
        mean over the last ~1/5 epoch of steps, a window that runs on across epoch boundaries (no step where an
        epoch's running mean would restart)."""
        self.net.train()
        self.train_iter.plain = epoch > self.recipe.epochs - self.recipe.plain_epochs
        start, sums = time.perf_counter(), torch.zeros(3, device=self.device)  # loss sum, correct, count
        n, lr, points, last = len(self.train_iter), self.opt.param_groups[0]["lr"], [], time.monotonic()
        steps, width = torch.zeros(n, 3, device=self.device), max(1, round(n / PROGRESS_POINTS))
        batches = tqdm(self.train_iter, desc=f"epoch {epoch}/{self.recipe.epochs}", leave=False, disable=not progress)
        for i, (X, y) in enumerate(batches):
            X, y = X.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with hardware.autocast(self.device, self.precision):
                y_hat = self.model(X)
                loss = self.loss_f(y_hat, y)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            if self.ema is not None:
                self.ema.update_parameters(self.net)
            with torch.no_grad():  # no host sync: the sums stay on the device (no tensor is made from the host)
                steps[i, 0] = loss.detach().float() * len(y)
                steps[i, 1] = (y_hat.argmax(1) == y).sum()
                steps[i, 2] = len(y)
                sums += steps[i]
            if stop.requested:
                return None
            wait = FIRST_POINT_SECONDS if not (points or self.history) else PROGRESS_SECONDS
            due = (i + 1) * PROGRESS_POINTS // n > i * PROGRESS_POINTS // n or time.monotonic() - last > wait
            if on_progress is not None and self.world == 1 and due and i + 1 < n:  # (DDP: epoch ends only)
                points.append((epoch - 1 + (i + 1) / n, *self._window(steps[:i + 1], width)))
                on_progress(*points[-1])
                last = time.monotonic()
        loss_sum, correct, count = self._reduced(sums)
        end = self._window(steps, width)
        self.recent = torch.cat([self.recent, steps])[-width:]
        records.failpoint_delay(dist.get_rank() if self.world > 1 else 0)  # tests: one rank made slower
        seconds = self._slowest(time.perf_counter() - start)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"epoch {epoch}: the training loss is {loss_sum}; the learning rate "
                                     f"(lr={self.recipe.lr}) is probably too high. The last good checkpoint is kept.")
        points.append((float(epoch), *end))
        r = dict(epoch=epoch, train_loss=loss_sum / count, train_acc=correct / count, val_acc=None,
                 seconds=seconds, eval_seconds=0.0, lr=lr, images=int(count), points=points)  # training only
        if self.test_curve:  # learning curves only: nothing is chosen on it
            r["test_acc"] = evaluate_accuracy(self.evaluated, self.test_iter, self.device, self.precision, self.views)
        self.history.append(r)
        if self.recipe.validates(epoch):
            self.validate(r)
        self.validate_one_view(r)
        return r

    def _window(self, steps, width: int) -> tuple[float, float]:
        """(loss, accuracy) over the last `width` steps, reaching back into the previous epoch's."""
        s = self._reduced(torch.cat([self.recent, steps])[-width:].sum(0))
        return s[0] / s[2], s[1] / s[2]

    def _val_accuracy(self, r: dict, views: Views) -> float:
        """The validation accuracy of the current weights on `views`, its seconds added to the epoch record's
        evaluation time (apart from training)."""
        start = time.perf_counter()
        acc = evaluate_accuracy(self.evaluated, self.val_iter, self.device, self.precision, views) \
            if self.val_iter is not None and self.val_iter.num_examples else float("nan")
        r["eval_seconds"] += time.perf_counter() - start
        return acc

    def validate_one_view(self, r: dict):
        """Every epoch, the validation accuracy of one view per image (cheap: the live curve's point). Where the
        model declares more views, those are what `validate` measures for model selection."""
        one_already = self.views == ONE and r["val_acc"] is not None
        r["val_acc_1view"] = r["val_acc"] if one_already else self._val_accuracy(r, ONE)

    def validate(self, r: dict):
        """Validate the weights of the epoch just trained (its record `r`), timed apart from training; keep
        them if they are the best so far."""
        r["val_acc"] = self._val_accuracy(r, self.views)
        if r["val_acc"] > self.best_val:
            self.best_val, self.best_epoch = r["val_acc"], r["epoch"]
            self.best_weights = {k: v.detach().clone() for k, v in self.evaluated.state_dict().items()}

    def _reduced(self, sums) -> list[float]:
        if self.world > 1:
            sums = sums.clone()
            dist.all_reduce(sums)  # every rank's share of the epoch
        return sums.tolist()

    def _slowest(self, seconds: float) -> float:
        """An epoch of several processes lasts as long as its slowest: every rank records that time, so a
        time budget is one decision, the same on every rank."""
        if self.world == 1:
            return seconds
        t = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def state_dict(self) -> dict:
        return dict(weights=self.net.state_dict(), optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(),
                    scaler=self.scaler.state_dict(), history=self.history, best_val_acc=self.best_val,
                    rng=rng_state(self.train_iter, self.device), epoch=len(self.history), recent=self.recent.cpu(),
                    ema=dict(weights=self.ema.module.state_dict(), n=int(self.ema.n_averaged)) if self.ema else None)

    def load_state_dict(self, state: dict, best_weights=None):
        self.net.load_state_dict(state["weights"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        # the rate of the next step from this recipe's schedule: the same number for a plain resume, the new
        # length's cosine for an extended one
        for group, base, factor in zip(self.opt.param_groups, self.sched.base_lrs, self.sched.lr_lambdas):
            group["lr"] = base * factor(self.sched.last_epoch)
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"]["weights"])
            self.ema.n_averaged.fill_(state["ema"]["n"])
        set_rng_state(state["rng"], self.train_iter, self.device, dist.get_rank() if self.world > 1 else 0)
        self.history, self.best_val = list(state["history"]), state["best_val_acc"]
        self.recent = state.get("recent", torch.zeros(0, 3)).to(self.device)  # (older checkpoints: none)
        self.best_epoch = next((r["epoch"] for r in self.history if r["val_acc"] == self.best_val), 0)
        self.best_weights = best_weights

    def restore_best(self, log=print):
        """Model selection on validation: keep the weights of the best validation epoch (with recipe.ema, the
        moving average's), in the network itself."""
        if self.best_weights is not None:
            self.net.load_state_dict(self.best_weights)
            log(f"restored the weights of epoch {self.best_epoch} (best validation accuracy {self.best_val:.4f})")


def best_record(history: list[dict]) -> dict:
    """The history record of the model-selection epoch: the best validation accuracy (the first of equals),
    among the epochs that were validated (`Recipe.validates`)."""
    return max((r for r in history if r["val_acc"] is not None), key=lambda r: r["val_acc"])


def fit(trainer: Trainer, *, after_epoch=None, on_progress=None, log=print, progress=True, until=None) -> list[dict]:
    """Train from the trainer's next epoch to its recipe's last; Ctrl-C stops after the current batch and drops
    that partial epoch. `after_epoch(trainer)` runs after each epoch (checkpoints, curves); `until(record)`
    stops early when true. The best validation epoch's weights are restored at the end."""
    start, epochs = len(trainer.history) + 1, trainer.recipe.epochs
    log(f"training on {trainer.device} in {trainer.precision}: epochs {start}-{epochs} x "
        f"{len(trainer.train_iter)} batches of {trainer.recipe.batch_size}")
    trainer.interrupted = None
    with StopOnInterrupt() as stop:
        for epoch in range(start, epochs + 1):
            r = trainer.fit_epoch(epoch, stop, progress, on_progress)
            if r is None:
                trainer.interrupted = epoch
                log(f"interrupted during epoch {epoch}: stopped after the current batch and dropped that partial epoch")
                break
            stopping = until is not None and until(r)
            if stopping and r["val_acc"] is None:
                trainer.validate(r)  # the last epoch of a run is always a candidate
            if after_epoch is not None:
                after_epoch(trainer)
            val = "   -  " if r["val_acc"] is None else f"{r['val_acc']:.4f}"
            log(f"epoch {epoch:3d}  loss {r['train_loss']:.4f}  train acc {r['train_acc']:.4f}  "
                f"val acc {val}  {r['seconds']:.1f}s  "
                f"({trainer.train_iter.num_examples * trainer.world / r['seconds']:.0f} img/s)")
            if stopping:
                break
    trainer.restore_best(log)
    return trainer.history
