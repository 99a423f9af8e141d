"""The optimisers of recipe.py: which parameters Muon takes, what its step is, and its checkpoint state."""
import io

import pytest
import torch

from mlp.optim import Muon, MuonAdamW, make_optimizer, make_scheduler, orthogonalise
from mlp.recipe import get_preset
from model import MLPNet


def _net_and_recipe(optimizer="muon", **overrides):
    torch.manual_seed(0)
    model, recipe = get_preset("long", optimizer=optimizer, **overrides)
    return MLPNet(model), recipe


def _step(net, opt, sched=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    if sched is not None:
        sched.step()


def test_muon_takes_the_backbones_matrices_and_adamw_the_rest():
    net, recipe = _net_and_recipe()
    opt = make_optimizer(net, recipe)
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in net.named_parameters()}
    muon = sorted(names[id(p)] for g in opt.muon.param_groups for p in g["params"])
    adamw = sorted(names[id(p)] for g in opt.adamw.param_groups for p in g["params"])
    assert muon == sorted(n for n, p in net.named_parameters() if n.startswith("backbone.") and p.dim() == 2)
    assert len(net.cfg.blocks) >= 2 and len(muon) == 4 * len(net.cfg.blocks), \
        "each block's token and feature MLPs' two Linear layers"
    assert "stem.embed.weight" in adamw and "classifier.head.weight" in adamw
    assert sorted(muon + adamw) == sorted(names.values()), "every parameter exactly once"
    assert [g["weight_decay"] for g in opt.adamw.param_groups] == [recipe.weight_decay, 0.0]


def test_the_schedule_sets_every_groups_rate():
    net, recipe = _net_and_recipe(warmup_epochs=1.0)
    opt = make_optimizer(net, recipe)
    sched = make_scheduler(opt, recipe, steps_per_epoch=4)
    _step(net, opt, sched)
    rates = [g["lr"] for o in (opt.muon, opt.adamw) for g in o.param_groups]
    assert rates == [pytest.approx(recipe.lr * 2 / 4)] * 3, "warm-up step 2 of 4, in both optimisers"


def _first_step_singular_values(optimizer: str):
    """A first step of the first feature-MLP matrix (`long`: 256 x 64), without weight decay, divided by the size
    Muon gives it, lr * 0.2 * sqrt(max(A, B)): its singular values."""
    net, recipe = _net_and_recipe(weight_decay=0.0, optimizer=optimizer)
    opt = make_optimizer(net, recipe)
    w = net.backbone[0].feature_mlp[0].weight
    before = w.detach().clone()
    _step(net, opt)
    return torch.linalg.svdvals((before - w.detach()) / (recipe.lr * 0.2 * max(w.shape) ** 0.5))


def test_a_muon_step_is_orthogonalised_and_scaled_to_adamws_rms():
    """Muon's step is the orthogonalised momentum: Newton-Schulz's quintic takes the singular values to about
    0.5-1.5 (all but the gradient's near-null directions). AdamW's first step, sign(g), is nothing like it
    (singular values up to ~17 here): the check can fail."""
    s = _first_step_singular_values("muon")
    assert s.max() < 1.6 and s.median() > 0.7 and (s > 0.5).float().mean() > 0.9, s
    s = _first_step_singular_values("adamw")
    assert not s.max() < 1.6, s


def test_state_dict_round_trip_continues_bit_for_bit():
    """Optimiser and schedule restored from their state dicts (as a resume does) continue exactly: the
    schedule still reaches both optimisers' rates (loading replaces their param-group dicts)."""
    net, recipe = _net_and_recipe(warmup_epochs=4.0)
    opt = make_optimizer(net, recipe)
    sched = make_scheduler(opt, recipe, steps_per_epoch=2)
    for seed in (1, 2):
        _step(net, opt, sched, seed=seed)
    twin, _ = _net_and_recipe()
    twin.load_state_dict(net.state_dict())
    twin_opt = make_optimizer(twin, recipe)
    twin_sched = make_scheduler(twin_opt, recipe, steps_per_epoch=2)
    saved = io.BytesIO()  # through bytes, as a checkpoint: loading would otherwise share the state's tensors
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    twin_opt.load_state_dict(state["optimizer"])
    twin_sched.load_state_dict(state["scheduler"])
    assert set(opt.state_dict()) == {"muon", "adamw"}
    for seed in (3, 4):
        _step(net, opt, sched, seed=seed)
        _step(twin, twin_opt, twin_sched, seed=seed)
    rates = [g["lr"] for o in (twin_opt.muon, twin_opt.adamw) for g in o.param_groups]
    assert rates == [pytest.approx(recipe.lr * 5 / 8)] * 3, "warm-up step 5 of 8 in both restored optimisers"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), twin.state_dict().values()))


def test_our_muon_in_bf16_is_torchs_muon_bit_for_bit():
    """recipe.Muon exists only to choose the Newton-Schulz dtype; in bf16 it is torch.optim.Muon exactly (wide,
    tall and square matrices, weight decay, momentum over steps), so runs recorded with torch's reproduce."""
    torch.manual_seed(0)
    shapes = [(16, 64), (64, 16), (128, 128), (16, 64), (64, 16), (16, 64)]  # (repeated shapes: batched)
    ours = [torch.nn.Parameter(torch.randn(*s) * 0.1) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=0.01, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
    opts = Muon(ours, ns_dtype=torch.bfloat16, **kw), torch.optim.Muon(theirs, **kw)
    for _ in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        for opt in opts:
            opt.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
    # a checkpoint written by torch's Muon (before this class) resumes in ours and continues identically
    twin = [torch.nn.Parameter(q.detach().clone()) for q in theirs]
    resumed = Muon(twin, ns_dtype=torch.bfloat16, **kw)
    saved = io.BytesIO()
    torch.save(opts[1].state_dict(), saved)  # through bytes, as a checkpoint: no buffer shared with `theirs`
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved))
    for p, q in zip(twin, theirs):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    resumed.step()
    opts[1].step()
    assert all(torch.equal(p, q) for p, q in zip(twin, theirs))


def test_a_stack_of_matrices_is_orthogonalised_as_each_alone():
    """In fp32 Muon orthogonalises its matrices of one shape as one stack."""
    g = torch.randn(3, 64, 16, generator=torch.Generator().manual_seed(4))
    stacked = orthogonalise(g, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
    alone = torch.stack([orthogonalise(m, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32) for m in g])
    assert stacked.shape == g.shape and torch.allclose(stacked, alone, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 16), (16, 64)])
def test_newton_schulz_in_fp32_orthogonalises_like_bf16(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    x32, x16 = (orthogonalise(g, (3.4445, -4.775, 2.0315), 5, 1e-7, d) for d in (torch.float32, torch.bfloat16))
    assert x32.dtype == torch.float32 and x32.shape == g.shape
    s = torch.linalg.svdvals(x32)
    assert s.min() > 0.5 and s.max() < 1.6, s
    assert (x32 - x16.float()).abs().max() < 0.05, "the same iteration; bf16 only rounds"


