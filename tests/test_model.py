"""Model: patches, shapes for K in {2,4,7}, the seed preset layer by layer, and clear errors."""
import pytest
import torch
from torch import nn

from model import PRESETS, Config, Dropout, MLPNet, count_params, get_config, patchify, unpatchify


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


@pytest.mark.parametrize("preset", sorted(PRESETS))
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
    assert net.backbone[0].post_norm is not net.backbone[1].post_norm, "block 2 has its own BatchNorm"
    assert not any(isinstance(m, (nn.LayerNorm, nn.GELU)) for m in net.modules())
    assert all(m.p == 0.1 for m in net.modules() if isinstance(m, nn.Dropout))
    expected = sum(o * i + o for o, i in linears) + 2 * sum(bns)
    assert count_params(net) == expected == 111164
    cfg = PRESETS["seed"]
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs) == ("adam", 1e-3, 5e-4, 256, 200)


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
    ("dim", 0, "dim=0 must be positive"), ("act", "tanh", "act='tanh' is not one of")])
def test_bad_config_values_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        get_config("default", **{field: value})


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown preset 'big'"):
        get_config("big")
    with pytest.raises(ValueError, match=r"unknown config fields \['widht'\]"):
        get_config("default", widht=3)


def test_mismatched_block_widths_are_named():
    with pytest.raises(ValueError, match="block 0 expects 50 patches"):
        Config(blocks=[{"tokens": (50, 8, 50), "features": (128, 8, 128)}])


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
    assert get_config("default", lr=1).lr == 1.0
    with pytest.raises(ValueError, match="dropout='high' should be a float"):
        get_config("default", dropout="high")
    with pytest.raises(ValueError, match="augment=1 should be a bool"):
        get_config("default", augment=1)
