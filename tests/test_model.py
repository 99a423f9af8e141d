"""Model: patches, shapes for K in {2,4,7}, the seed preset layer by layer, and clear errors."""
import json

import pytest
import torch
from torch import nn

import my_utils as mu
from conftest import ROOT
from mlp.evaluate import Views, logits, shift
from mlp.recipe import PRESETS, Recipe, get_preset
from model import Dropout, MixerBlock, MLPNet, ModelConfig, SeedBlock, count_params, patchify, unpatchify, windows


def get_config(preset, **overrides):
    return get_preset(preset, **overrides)[0]


@pytest.mark.parametrize("k", [1, 2, 4, 7, 14, 28])
def test_patchify_reassembles_the_image(arrays, k):
    X = arrays["train_x"][:8].float()
    P = patchify(X.unsqueeze(1), k)
    assert P.shape == (8, (28 // k) ** 2, k * k)
    assert torch.equal(P[:, 0].reshape(8, k, k), X[:, :k, :k]), "first patch must be the top-left block"
    assert torch.equal(P[:, 1].reshape(8, k, k), X[:, :k, k:2 * k]) if k < 28 else True
    assert torch.equal(unpatchify(P, k), X)


def test_patch_size_that_does_not_divide_28_is_a_value_error():
    with pytest.raises(ValueError, match="K=5 must divide 28"):
        get_config("seed", patch=5)
    with pytest.raises(ValueError, match="must divide"):
        patchify(torch.zeros(1, 1, 28, 28), 5)


def test_overlapping_windows_are_the_image_at_a_stride(arrays):
    X = arrays["train_x"][:4].float().unsqueeze(1)
    assert torch.equal(windows(X, 4, 4), patchify(X, 4)), "stride K is the non-overlapping patches"
    W = windows(X, 10, 6)                                    # 4 x 4 windows of 10 x 10, overlapping by 4 pixels
    assert W.shape == (4, 16, 100)
    assert torch.equal(W[:, 1].reshape(4, 10, 10), X[:, 0, :10, 6:16])
    assert torch.equal(W[:, 15].reshape(4, 10, 10), X[:, 0, 18:, 18:])
    model = get_config("quick", patch=10, stride=6)
    assert model.num_patches == 16 and model.blocks[0].tokens[0] == 16, "token widths follow the window count"
    assert MLPNet(model).eval()(X).shape == (4, 10)
    with pytest.raises(ValueError, match=r"stride=5 with K=10: .* strides that fit: \[1, 2, 3, 6, 9\]"):
        get_config("quick", patch=10, stride=5, blocks=model.to_dict()["blocks"])


def test_the_network_in_eval_mode_computes_one_view_and_evaluation_averages_the_declared_views():
    """net(x) is the network on x, whatever views its config declares; evaluate.logits averages them."""
    torch.manual_seed(0)
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(shift(x, 1, 0)[..., 1:, :], x[..., :-1, :]) and not shift(x, 1, 0)[..., 0, :].any()
    assert torch.equal(shift(x, 0, -2)[..., :-2], x[..., 2:]) and not shift(x, 0, -2)[..., -2:].any()
    net = MLPNet(get_config("quick", flip_tta=True, shift_tta=1)).eval()
    views = Views.of(net.cfg)
    assert views == Views(shift=1, flip=True) and views.count == net.cfg.views == 10
    with torch.no_grad():
        one = net(x)
        assert torch.equal(one, net.classifier(net.backbone(net.stem(x)))), "eval mode: one view"
        moved = [x, shift(x, 1, 0), shift(x, -1, 0), shift(x, 0, 1), shift(x, 0, -1)]
        ten = logits(net, x, views)
        assert torch.allclose(ten, sum(net(v) + net(v.flip(-1)) for v in moved) / 10, atol=1e-6)
        assert not torch.allclose(ten, (net(x) + net(x.flip(-1))) / 2, atol=1e-3)
        assert torch.allclose(logits(net, x, Views(flip=True)), (one + net(x.flip(-1))) / 2, atol=1e-6)
        assert torch.equal(logits(net, x), one)
    labels = logits(net, x, views).argmax(1)
    loader = [(x[:3], labels[:3]), (x[3:], labels[3:])]
    assert mu.evaluate_accuracy(net, loader, views=views) == 1.0, "the accuracy of the averaged logits"
    assert mu.evaluate_accuracy(net, loader) == pytest.approx((one.argmax(1) == labels).float().mean().item())
    for bad in (-1, 14):
        with pytest.raises(ValueError, match=rf"shift_tta={bad} must be an integer number of pixels, 0 \(off\) to 13"):
            get_config("quick", shift_tta=bad)


@pytest.mark.parametrize("preset", sorted(n for n, p in PRESETS.items() if isinstance(p.model, ModelConfig)))
@pytest.mark.parametrize("k", [2, 4, 7])
def test_shapes_for_each_patch_size(preset, k):
    cfg = get_config(preset, patch=k)
    net = MLPNet(cfg).eval()
    n = (28 // k) ** 2
    x = net.stem(torch.rand(3, 1, 28, 28))
    assert x.shape == (3, n, cfg.dim)
    x = net.backbone(x)
    assert x.shape == (3, cfg.blocks[-1].tokens[2], cfg.blocks[-1].features[2])
    assert net(torch.rand(3, 28, 28)).shape == (3, 10), "[B,28,28] input is accepted too"


def test_seed_preset_is_the_original_network_layer_by_layer():
    net = MLPNet(get_config("seed"))
    linears = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, nn.Linear)]
    assert linears == [(256, 16),                          # stem 16 -> 256
                       (256, 49), (128, 256),              # block 1, MLP 1 over patches 49 -> 256 -> 128
                       (128, 256), (64, 128),              # block 1, MLP 2 over features 256 -> 128 -> 64
                       (64, 128), (128, 64),               # block 2, MLP 1 over patches 128 -> 64 -> 128
                       (32, 64), (16, 32),                 # block 2, MLP 2 over features 64 -> 32 -> 16
                       (10, 16)]                           # classifier 16 -> 10
    bns = [m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns == [49, 128, 128]
    assert all(isinstance(b, SeedBlock) for b in net.backbone)
    assert net.backbone[0].norm is not net.backbone[1].norm, "block 2 has its own BatchNorm"
    assert not any(isinstance(m, (nn.LayerNorm, nn.GELU)) for m in net.modules())
    assert all(m.p == 0.1 for m in net.modules() if isinstance(m, nn.Dropout))
    expected = sum(o * i + o for o, i in linears) + 2 * sum(bns)
    assert count_params(net) == expected == 111164
    r = PRESETS["seed"].recipe
    assert (r.optimizer, r.lr, r.weight_decay, r.batch_size, r.epochs) == ("adam", 1e-3, 5e-4, 256, 200)


def test_seed_init_is_kaiming_normal():
    torch.manual_seed(0)
    w = MLPNet(get_config("seed")).backbone[0].token_mlp[0].weight  # fan_in 49
    assert abs(w.std().item() - (2 / 49) ** 0.5) < 0.01


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 784), (2, 1, 32, 32), (28, 28)])
def test_wrong_input_shape_is_a_clear_error(shape):
    with pytest.raises(ValueError, match=r"expects images of shape \[B,1,28,28\] or \[B,28,28\]"):
        MLPNet(get_config("default"))(torch.zeros(shape))


@pytest.mark.parametrize("field,value,message", [
    ("dropout", 1.0, "dropout=1.0 must be in"), ("lr", 0.0, "lr=0.0 must be positive"),
    ("epochs", 0, "epochs=0 must be positive"), ("batch_size", -1, "batch_size=-1 must be positive"),
    ("dim", 0, "dim=0 must be positive"), ("act", "tanh", "act='tanh' is not one of"),
    ("block", "resnet", "block='resnet' is not one of"), ("schedule", "linear", "schedule='linear' is not one of"),
    ("lr_drops", [5, 3], "must be increasing"), ("label_smoothing", 1.0, "label_smoothing=1.0 must be in")])
def test_bad_config_values_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        get_preset("default", **{field: value})


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown preset 'big'"):
        get_config("big")
    with pytest.raises(ValueError, match=r"unknown config fields \['widht'\]"):
        get_config("default", widht=3)


def test_mismatched_block_widths_are_named():
    with pytest.raises(ValueError, match="block 0 expects 50 patches"):
        ModelConfig(blocks=[{"tokens": (50, 8, 50), "features": (128, 8, 128)}])


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_at_rate_p_independently_and_rescales(p):
    torch.manual_seed(0)
    x = torch.ones(400, 1000, requires_grad=True)
    y = Dropout(p)(x)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - p) < 0.005
    # the four 16-bit pieces of one 64-bit draw must not move together: neighbours both dropped ~ p^2
    both = (dropped[:, :-1] & dropped[:, 1:]).float().mean().item()
    assert abs(both - p * p) < 0.005
    assert torch.allclose(y[~dropped], torch.full_like(y[~dropped], 1 / (1 - p)))
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad, 2 * y.detach()), "gradient is masked and scaled like the forward pass"
    torch.manual_seed(0)
    assert torch.equal(Dropout(p)(x), y), "same seed, same mask"
    assert torch.equal(Dropout(p).eval()(x), x), "identity in eval mode"


def test_config_overrides_are_type_checked():
    assert get_preset("default", lr=1)[1].lr == 1.0
    with pytest.raises(ValueError, match="dropout='high' should be a float"):
        get_config("default", dropout="high")
    with pytest.raises(ValueError, match="augment=1 should be a bool"):
        get_preset("default", augment=1)
    # what a shell makes of unquoted JSON: a string, not a list of blocks
    with pytest.raises(ValueError, match=r"blocks must be a list of blocks, \{\"tokens\"") as e:
        get_preset("default", blocks="[{tokens:[16,64,16],features:[128,384,128]}]")
    assert "quote the whole --set value" in str(e.value)
    with pytest.raises(ValueError, match="a block must look like"):
        get_preset("default", blocks=[{"tokens": [16, 64, 16]}])


@pytest.mark.parametrize("preset, record", [("quick", "runs/quick-avx2-seed0.json"),
                                            ("sprint", "runs/sprint-avx2-seed0.json"),
                                            ("long", "runs/long-avx2-seed0.json")])
def test_presets_are_exactly_the_measured_trials_readme_reports(preset, record):
    model, recipe = get_preset(preset)
    t = json.loads((ROOT / "results" / record).read_text())
    measured = [ModelConfig(**t["model"]).to_dict(), Recipe(**t["recipe"]).to_dict()]  # later fields: defaults
    assert json.loads(json.dumps([model.to_dict(), recipe.to_dict()])) == json.loads(json.dumps(measured)), \
        f"`{preset}` is exactly the trial README reports"


def test_model_config_holds_the_architecture_and_recipe_the_training():
    model, recipe = get_preset("best", patch=7, epochs=5, erase=0.5)
    assert model.patch == 7 and model.blocks[0].tokens == (16, 32, 16) and recipe.epochs == 5 and recipe.erase == 0.5
    assert "epochs" not in model.to_dict() and "patch" not in recipe.to_dict()
    assert PRESETS["best"].recipe.epochs != 5 and PRESETS["best"].model.patch == 4, "presets are not mutated"


def test_mixer_block_is_two_residual_branches_over_layernorm():
    torch.manual_seed(0)
    block = MLPNet(get_config("sprint")).backbone[0].eval()
    assert isinstance(block, MixerBlock)
    x = torch.randn(2, 16, 128)
    y = x + block.token_mlp(block.norm1(x).transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(block(x), y + block.feature_mlp(block.norm2(y)), atol=1e-6)


def test_seed_schedule_matches_the_originals_plateau_scheduler_fed_a_constant():
    """The original stepped ReduceLROnPlateau(patience=50) once per epoch with a loss computed once, before
    training: replaying that gives the rate of every one of the 200 epochs."""
    recipe = PRESETS["seed"].recipe
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min", patience=50)
    original = []
    for _ in range(recipe.epochs):
        original.append(opt.param_groups[0]["lr"])
        plateau.step(0.7)  # the constant validation loss
    steps = 7  # steps per epoch: any number
    ours = [recipe.lr * recipe.lr_factor(e * steps + s, steps) for e in range(recipe.epochs) for s in (0, steps - 1)]
    assert ours[::2] == pytest.approx(original, rel=1e-9) and ours[1::2] == pytest.approx(original, rel=1e-9)
    assert original[51] == 1e-3 and original[52] == pytest.approx(1e-4) and original[-1] == pytest.approx(1e-6)
    assert [e + 1 for e in range(1, 200) if original[e] < original[e - 1]] == [53, 104, 155]


@pytest.mark.parametrize("preset", ["seed", "quick", "sprint", "long", "best"])
def test_every_preset_learns_on_a_subset(preset):
    """Two short epochs of each preset's own recipe on 2,000 images (quick and long, whose 4x4 patches and
    shifts start slower: three; best, the slowest to train here: its warm-up epoch cut to half a one),
    validated after the last epoch on 500 images, with the preset's views (best: one, its ten cost more
    than its training here): well above chance (10 %)."""
    from mlp import data
    from mlp.loop import Trainer, best_record, fit
    torch.manual_seed(0)
    epochs = 3 if preset in ("quick", "long") else 2
    best = dict(warmup_epochs=0.5, flip_tta=False, shift_tta=0) if preset == "best" else {}
    model, recipe = get_preset(preset, epochs=epochs, val_every=epochs, batch_size=64, **best)
    t = Trainer(MLPNet(model), recipe, data.loaders(recipe, train_limit=2000, eval_limit=500), torch.device("cpu"),
                "fp32")
    history = fit(t, log=lambda s: None, progress=False)
    assert best_record(history)["val_acc"] > 0.5, history


def test_a_new_patch_size_resizes_only_the_patch_axis():
    """A token MLP's input and output are the patches; its hidden width is a choice that stays."""
    assert get_config("sprint").blocks[0].tokens == (16, 16, 16)
    assert [b.tokens for b in get_config("sprint", patch=4).blocks] == [(49, 16, 49)] * 2
    assert [b.tokens for b in get_config("seed", patch=2).blocks] == [(196, 256, 128), (128, 64, 128)]
    assert [b.tokens for b in get_config("quick", patch=7).blocks] == [(16, 16, 16)] * 3
    assert [b.tokens for b in get_config("best", patch=7).blocks] == [(16, 32, 16)] * 8


@pytest.mark.parametrize("val_size", [-1, 60000, 70000])
def test_a_validation_split_must_leave_training_images(val_size):
    with pytest.raises(ValueError, match=f"val_size={val_size} must be 0 to 59,999"):
        get_preset("quick", val_size=val_size)


def test_every_mlp_preset_obeys_the_all_mlp_rule_and_the_cnns_do_not():
    """docs/design.md's rule, on what the modules show: only Linear layers and norms hold parameters, and only
    the stem cuts windows (a Linear on windows elsewhere would be a convolution in disguise)."""
    import inspect

    import model
    from baselines import BaselineNet
    from model import all_mlp_violations
    mlps = [name for name, p in PRESETS.items() if isinstance(p.model, ModelConfig)]
    assert {"seed", "quick", "long", "sprint", "best"} <= set(mlps)
    for name in mlps:
        assert all_mlp_violations(MLPNet(get_config(name))) == [], name
    for arch in ("cnn", "lenet"):
        found = all_mlp_violations(BaselineNet(PRESETS[arch].model))
        assert found and all("Conv2d" in v for v in found), (arch, found)
    assert all_mlp_violations(BaselineNet(PRESETS["d2l-mlp"].model)) == []  # the textbook MLP is an MLP too
    cutters = [n for n, obj in vars(model).items() if inspect.isclass(obj) and obj.__module__ == "model"
               and any(f"{cut}(" in inspect.getsource(obj) for cut in ("windows", "patchify", "unfold"))]
    assert cutters == ["Stem"], cutters
