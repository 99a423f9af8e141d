"""Evaluation apart from the model: `net(x)` in eval mode is one view; `Views` averages the logits of several
(test-time augmentation). Validation, the test pass, the benchmark and predict.py all evaluate through here,
with the views the run's model config declares (`ModelConfig.flip_tta`, `shift_tta`: `Views.of`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlp.hardware import autocast


@dataclass(frozen=True)
class Views:
    """The image; with `shift`, also the image moved that many px up, down, left and right (zero fill, as
    training's shifts are); with `flip`, the mirror image of each of those."""
    shift: int = 0
    flip: bool = False

    @classmethod
    def of(cls, cfg) -> Views:  # a model.ModelConfig or baselines.BaselineConfig
        return cls(cfg.shift_tta, cfg.flip_tta)

    @property
    def count(self) -> int:
        return (5 if self.shift else 1) * (2 if self.flip else 1)

    def of_batch(self, x: torch.Tensor) -> list[torch.Tensor]:
        s = self.shift
        views = [x] + ([shift(x, dy, dx) for dy, dx in ((s, 0), (-s, 0), (0, s), (0, -s))] if s else [])
        return views + [v.flip(-1) for v in views] if self.flip else views


ONE = Views()


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images ([..., H, W]) moved dy px down and dx px right, zero-filled."""
    h, w = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    return nn.functional.pad(x, (p,) * 4)[..., p - dy:p - dy + h, p - dx:p - dx + w]


def logits(net, x: torch.Tensor, views: Views = ONE) -> torch.Tensor:
    """The mean of `net`'s logits over the views of the batch `x`."""
    if views == ONE:
        return net(x)
    return sum(net(v) for v in views.of_batch(x)) / views.count


def model_device(net) -> torch.device:
    """Where the model's parameters live (CPU for a parameter-free or non-Module callable)."""
    params = net.parameters() if isinstance(net, nn.Module) else iter(())
    return next((p.device for p in params), torch.device("cpu"))


@torch.no_grad()
def evaluate_accuracy(net, data_iter, device=None, precision="fp32", views: Views = ONE) -> float:
    """Fraction correct over `data_iter`, averaging `views`; counts stay on the device until the end (one host
    sync)."""
    if isinstance(net, nn.Module):
        net.eval()
    device = torch.device(device or model_device(net))
    correct, total = torch.zeros((), device=device), 0
    for X, y in data_iter:
        X, y = X.to(device), y.to(device)
        with autocast(device, precision):
            correct += (logits(net, X, views).argmax(dim=1) == y).sum()
        total += len(y)
    return float(correct) / total


@torch.no_grad()
def predict(net, data_iter, device=None, precision="fp32", views: Views = ONE):
    """(predictions, labels) over a loader, on the CPU, averaging `views`."""
    net.eval()
    device = torch.device(device or model_device(net))
    preds, labels = [], []
    for X, y in data_iter:
        with autocast(device, precision):
            preds.append(logits(net, X.to(device), views).argmax(dim=1).cpu())
        labels.append(y.cpu())
    return torch.cat(preds), torch.cat(labels)


def confusion_matrix(preds, labels, n=10) -> torch.Tensor:
    """[n, n] counts: row the true class, column the prediction."""
    return torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n)
