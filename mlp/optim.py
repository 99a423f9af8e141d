"""The optimisers (AdamW without decay on biases and norms; MuonAdamW) and the per-step schedule of a Recipe."""
from __future__ import annotations

import math

import torch

from mlp import hardware
from mlp.recipe import Recipe


def decay_groups(params, recipe: Recipe) -> list[dict]:
    """Weight decay on weights, none on biases and norm parameters (1-D tensors)."""
    return [{"params": [p for p in params if p.dim() > 1], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]


def _adamw(params, recipe: Recipe):
    return torch.optim.AdamW(decay_groups(params, recipe), lr=recipe.lr)


def orthogonalise(g: torch.Tensor, coefficients, steps: int, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration: takes the singular values of `g` to about 1 (0.5-1.5), in `dtype`.
    `g` is one matrix, or a stack of matrices of one shape ([n, rows, cols]: one call for many small ones)."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    x = x.mT if tall else x
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    mm = torch.addmm if x.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = mm(x, mm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon's update, with Newton-Schulz in `ns_dtype`. torch's own runs it in bf16 always, which a
    CPU without bf16 instructions (the AVX2 development CPU) emulates many times slower than fp32
    (docs/speed.md: Muon on a CPU without bf16). Same parameter groups and state, so checkpoints carry over."""

    def __init__(self, params, ns_dtype=torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            assert group["nesterov"] and group["adjust_lr_fn"] == "match_rms_adamw", "the variant MuonAdamW asks for"
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad)) for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
            nesterov = torch._foreach_lerp(grads, bufs, group["momentum"])
            # In fp32, matrices of one shape are orthogonalised together (a Mixer's blocks repeat theirs): one
            # batched iteration instead of one per matrix. In bf16 each alone, torch.optim.Muon's arithmetic
            # exactly (a batched bf16 matmul may round otherwise on CPUs with bf16 units).
            together = {}
            for i, p in enumerate(params):
                together.setdefault(tuple(p.shape) if self.ns_dtype == torch.float32 else i, []).append(i)
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            for idx in together.values():
                updates = orthogonalise(torch.stack([nesterov[i] for i in idx]), group["ns_coefficients"],
                                        group["ns_steps"], group["eps"], self.ns_dtype)
                rows, cols = params[idx[0]].shape[:2]
                torch._foreach_add_([params[i] for i in idx], list(updates.unbind()),
                                    alpha=-group["lr"] * 0.2 * math.sqrt(max(rows, cols)))  # AdamW's RMS


class MuonAdamW(torch.optim.Optimizer):
    """Muon (momentum orthogonalised by Newton-Schulz iterations) for the backbone's weight matrices, AdamW for
    the rest (stem, head, biases, norms), as Muon's authors prescribe. Muon's step is scaled to AdamW's RMS
    ("match_rms_adamw"), so one `lr` and `weight_decay` serve both; its Newton-Schulz runs in bf16 where the
    device has native bf16, in fp32 elsewhere. To the loop, the schedule and checkpoints it is one optimiser:
    `param_groups` are the two optimisers' own groups."""

    def __init__(self, net, recipe: Recipe):
        matrices = [p for name, p in net.named_parameters() if name.startswith("backbone.") and p.dim() == 2]
        if not matrices:
            raise ValueError(f"optimizer='muon' needs a network with a backbone of weight matrices (the MLP "
                             f"family); {type(net).__name__} has none: use adamw, nesterov or sgd")
        rest = [p for p in net.parameters() if all(p is not m for m in matrices)]
        ns_dtype = torch.bfloat16 if hardware.native_bf16(matrices[0].device) else torch.float32
        self.muon = Muon(matrices, ns_dtype=ns_dtype, lr=recipe.lr, weight_decay=recipe.weight_decay,
                         adjust_lr_fn="match_rms_adamw")
        self.adamw = _adamw(rest, recipe)
        super().__init__(list(net.parameters()), {"lr": recipe.lr})
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        self.muon.step()
        self.adamw.step()

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict):
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups  # loading made new group dicts


def make_optimizer(net, recipe: Recipe):
    if recipe.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer in ("sgd", "nesterov"):
        nesterov = recipe.optimizer == "nesterov"
        return torch.optim.SGD(decay_groups(list(net.parameters()), recipe), lr=recipe.lr,
                               momentum=0.9 if nesterov else 0.0, nesterov=nesterov)
    return MuonAdamW(net, recipe) if recipe.optimizer == "muon" else _adamw(list(net.parameters()), recipe)


def make_scheduler(opt, recipe: Recipe, steps_per_epoch: int):
    """Stepped once per training step, following `Recipe.lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: recipe.lr_factor(step, steps_per_epoch))
