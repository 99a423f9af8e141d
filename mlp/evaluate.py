"""Evaluation: accuracy and predictions over a loader, apart from the training loop."""
from __future__ import annotations

import torch
from torch import nn

from mlp.hardware import autocast


def model_device(net) -> torch.device:
    """Where the model's parameters live (CPU for a parameter-free or non-Module callable)."""
    params = net.parameters() if isinstance(net, nn.Module) else iter(())
    return next((p.device for p in params), torch.device("cpu"))


@torch.no_grad()
def evaluate_accuracy(net, data_iter, device=None, precision="fp32"):
    """Fraction correct over `data_iter`; counts stay on the device until the end (one host sync)."""
    if isinstance(net, nn.Module):
        net.eval()
    device = torch.device(device or model_device(net))
    correct, total = torch.zeros((), device=device), 0
    for X, y in data_iter:
        X, y = X.to(device), y.to(device)
        with autocast(device, precision):
            correct += (net(X).argmax(dim=1) == y).sum()
        total += len(y)
    return float(correct) / total


@torch.no_grad()
def predict(net, data_iter, device=None, precision="fp32"):
    """(predictions, labels) over a loader, on the CPU."""
    net.eval()
    device = torch.device(device or model_device(net))
    preds, labels = [], []
    for X, y in data_iter:
        with autocast(device, precision):
            preds.append(net(X.to(device)).argmax(dim=1).cpu())
        labels.append(y.cpu())
    return torch.cat(preds), torch.cat(labels)
