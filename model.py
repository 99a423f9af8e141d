"""All-MLP Fashion-MNIST classifier: patch Stem -> Backbone of transposed-MLP Blocks -> mean-pool Classifier.

`Config` holds the architecture and its training recipe; `PRESETS` names the ones we study:
- `seed`: the original coursework network, layer for layer (88.63 % test after 200 epochs).
- `quick`: the project's own Mixer-style network (pre-LayerNorm, residuals) for a 10-minute CPU run; it is
  also `default`, what `make run` trains.
- `best`: a wider, deeper Mixer with a long, regularised recipe, for a GPU.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.ops import StochasticDepth

IMAGE_SIZE = 28
NUM_CLASSES = 10


@dataclass(frozen=True)
class BlockSpec:
    """Widths of one block: MLP 1 across patches (in, hidden, out), MLP 2 across features (in, hidden, out)."""
    tokens: tuple[int, int, int]
    features: tuple[int, int, int]


@dataclass
class Config:
    # architecture
    patch: int = 4                      # K: K x K patches, K must divide 28
    dim: int = 128                      # stem output width (features per patch)
    blocks: list[BlockSpec] = field(default_factory=list)
    norm: str = "layer"                 # "batch": the seed's post-block BatchNorm; "layer": pre-norm Mixer
    residual: bool = True
    act: str = "gelu"                   # "relu" | "gelu"
    dropout: float = 0.0
    init: str = "default"               # "kaiming": Kaiming-normal Linear weights, as the seed did
    # recipe
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"            # "adam" | "adamw"
    schedule: str = "cosine"            # "none" | "cosine" (per-step, after linear warm-up)
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = False               # random +-2 px translation and horizontal flip, per image
    erase: float = 0.0                  # random-erasing probability per image
    drop_path: float = 0.0              # stochastic depth: chance a residual branch is skipped, per image
    val_size: int = 5000

    def __post_init__(self):
        self.blocks = [b if isinstance(b, BlockSpec) else BlockSpec(tuple(b["tokens"]), tuple(b["features"]))
                       for b in self.blocks]
        self.validate()

    @property
    def num_patches(self) -> int:
        return (IMAGE_SIZE // self.patch) ** 2

    def validate(self):
        """Raise ValueError naming the bad field and what would fix it."""
        if self.patch <= 0 or IMAGE_SIZE % self.patch:
            raise ValueError(f"patch size K={self.patch} must divide {IMAGE_SIZE}: use one of 1, 2, 4, 7, 14, 28")
        for name in ("dim", "epochs", "batch_size", "val_size"):
            if getattr(self, name) <= 0 and not (name == "val_size" and self.val_size == 0):
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        for name in ("erase", "drop_path"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.drop_path and not self.residual:
            raise ValueError("drop_path needs residual=True: it skips residual branches")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        for name, allowed in (("norm", ("batch", "layer")), ("act", ("relu", "gelu")),
                              ("optimizer", ("adam", "adamw")), ("schedule", ("none", "cosine")),
                              ("init", ("default", "kaiming"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if not self.blocks:
            raise ValueError("blocks is empty: give at least one BlockSpec")
        tokens, feats = self.num_patches, self.dim
        for i, b in enumerate(self.blocks):
            if min(b.tokens + b.features) <= 0:
                raise ValueError(f"block {i}: widths {b} must all be positive")
            if b.tokens[0] != tokens or b.features[0] != feats:
                raise ValueError(f"block {i} expects {b.tokens[0]} patches x {b.features[0]} features "
                                 f"but receives {tokens} x {feats}; fix its BlockSpec")
            if self.residual and (b.tokens[2] != tokens or b.features[2] != feats):
                raise ValueError(f"block {i}: residual=True needs output widths equal to input widths, got {b}")
            tokens, feats = b.tokens[2], b.features[2]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def mixer_blocks(patches: int, dim: int, depth: int, token_hidden: int, feature_hidden: int) -> list[BlockSpec]:
    return [BlockSpec((patches, token_hidden, patches), (dim, feature_hidden, dim)) for _ in range(depth)]


PRESETS: dict[str, Config] = {
    "seed": Config(
        patch=4, dim=256, norm="batch", residual=False, act="relu", dropout=0.1, init="kaiming",
        blocks=[BlockSpec((49, 256, 128), (256, 128, 64)), BlockSpec((128, 64, 128), (64, 32, 16))],
        epochs=200, batch_size=256, lr=1e-3, weight_decay=5e-4, optimizer="adam", schedule="none"),
    # Sized for a 10-minute run on a 2-core CPU (README has the measured runs).
    "quick": Config(
        patch=4, dim=64, blocks=mixer_blocks(49, 64, depth=4, token_hidden=64, feature_hidden=256),
        norm="layer", residual=True, act="gelu", dropout=0.0,
        epochs=7, batch_size=256, lr=3e-3, weight_decay=0.05, optimizer="adamw", schedule="cosine",
        warmup_epochs=0.5, label_smoothing=0.1, augment=False),
    # Sized for a GPU: a wider, deeper Mixer, long and regularised (flips, shifts, random erasing,
    # stochastic depth, label smoothing). Aimed at issue #4's 93.5 %; README says what has been measured.
    "best": Config(
        patch=4, dim=128, blocks=mixer_blocks(49, 128, depth=8, token_hidden=128, feature_hidden=512),
        norm="layer", residual=True, act="gelu", dropout=0.0, drop_path=0.1,
        epochs=150, batch_size=128, lr=2e-3, weight_decay=0.05, optimizer="adamw", schedule="cosine",
        warmup_epochs=5, label_smoothing=0.1, augment=True, erase=0.25),
}
PRESETS["default"] = PRESETS["quick"]  # what `make run` and train.py train unless told otherwise


def get_config(preset: str, **overrides) -> Config:
    """A fresh copy of a named preset with some fields replaced (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    base = PRESETS[preset].to_dict()
    unknown = set(overrides) - set(base)
    if unknown:
        raise ValueError(f"unknown config fields {sorted(unknown)}; known: {sorted(base)}")
    k = overrides.get("patch")
    if k and k > 0 and IMAGE_SIZE % k == 0 and "blocks" not in overrides:
        # A new patch size changes the patch axis: widths equal to the old patch count follow it.
        old_n, new_n = PRESETS[preset].num_patches, (IMAGE_SIZE // k) ** 2
        swap = lambda widths: tuple(new_n if w == old_n else w for w in widths)  # noqa: E731
        base["blocks"] = [dict(tokens=swap(b["tokens"]), features=b["features"]) for b in base["blocks"]]
    for key, value in overrides.items():  # command-line values arrive untyped: check them here
        want = type(base[key])
        if want is float and type(value) is int:
            overrides[key] = float(value)
        elif key != "blocks" and type(value) is not want:
            raise ValueError(f"{key}={value!r} should be a {want.__name__}, like the preset's {base[key]!r}")
    return Config(**{**base, **overrides})


def patchify(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B, 1, H, W] or [B, H, W] -> [B, (H/k)*(W/k), k*k], patches in row-major order."""
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected 1 channel, got input of shape {tuple(x.shape)}")
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"expected images of shape [B,1,H,W] or [B,H,W], got {tuple(x.shape)}")
    b, h, w = x.shape
    if k <= 0 or h % k or w % k:
        raise ValueError(f"patch size K={k} must divide the image size {h}x{w}")
    return x.reshape(b, h // k, k, w // k, k).transpose(2, 3).reshape(b, (h // k) * (w // k), k * k)


def unpatchify(p: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of `patchify` for square images: [B, N, k*k] -> [B, H, W]."""
    b, n, _ = p.shape
    g = int(round(n ** 0.5))
    return p.reshape(b, g, g, k, k).transpose(2, 3).reshape(b, g * k, g * k)


def activation(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.ReLU()


def drop_mask(shape, p: float, device) -> torch.Tensor:
    """True where dropout zeroes an element, with probability p rounded to a multiple of 1/65536.

    One 64-bit random number serves four elements (its four 16-bit pieces). On the CPU torch's bernoulli_
    draws a Mersenne-Twister number per element, single-threaded: that was 27 % of a `seed` training step."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, 2 ** 63 - 1)
    return bits.view(torch.int16)[:n].view(shape) < round(p * 65536) - 32768


class _MaskedScale(torch.autograd.Function):
    """x with masked elements zeroed and the rest scaled; the backward pass applies the same to the gradient."""

    @staticmethod
    def forward(ctx, x, mask, scale):
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x.masked_fill(mask, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad.masked_fill(mask, 0).mul_(ctx.scale), None, None


class Dropout(nn.Dropout):
    """nn.Dropout, with a cheaper random mask on the CPU (see `drop_mask`); elsewhere torch's own."""

    def forward(self, x):
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return _MaskedScale.apply(x, drop_mask(x.shape, self.p, x.device), 1 / (1 - self.p))


class MLP(nn.Sequential):
    """Linear -> activation -> Dropout -> Linear over the last axis."""

    def __init__(self, widths: tuple[int, int, int], act: str, dropout: float):
        d_in, hidden, d_out = widths
        super().__init__(nn.Linear(d_in, hidden), activation(act), Dropout(dropout), nn.Linear(hidden, d_out))


class Stem(nn.Module):
    """Cut into K x K patches, embed each with one Linear (K^2 -> dim), then normalise."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.k = cfg.patch
        self.embed = nn.Linear(cfg.patch ** 2, cfg.dim)
        # The seed normalises each patch position (BatchNorm over the patch axis); Mixer-style blocks
        # bring their own LayerNorm, so a BatchNorm over features keeps the stem's output scale in check.
        self.norm = nn.BatchNorm1d(cfg.num_patches if cfg.norm == "batch" else cfg.dim)
        self.over_patches = cfg.norm == "batch"

    def forward(self, x):                                   # [B,1,28,28] -> [B, N, dim]
        x = self.embed(patchify(x, self.k))
        if self.over_patches:
            return self.norm(x)
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class Block(nn.Module):
    """Transpose, MLP 1 mixes across patches; transpose back, MLP 2 mixes across features.

    norm="layer": pre-LayerNorm before each MLP (MLP-Mixer); norm="batch": BatchNorm over the patch axis after
    the block (the seed). residual adds each MLP's input to its output."""

    def __init__(self, spec: BlockSpec, cfg: Config):
        super().__init__()
        layer = cfg.norm == "layer"
        self.norm1 = nn.LayerNorm(spec.features[0]) if layer else nn.Identity()
        self.token_mlp = MLP(spec.tokens, cfg.act, cfg.dropout)
        self.norm2 = nn.LayerNorm(spec.features[0]) if layer else nn.Identity()
        self.feature_mlp = MLP(spec.features, cfg.act, cfg.dropout)
        self.post_norm = nn.Identity() if layer else nn.BatchNorm1d(spec.tokens[2])
        self.residual = cfg.residual
        self.drop_path = StochasticDepth(cfg.drop_path, "row")  # identity when drop_path == 0 or in eval

    def forward(self, x):                                   # x: [B, patches, features]
        y = self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.drop_path(y) if self.residual else y
        y = self.feature_mlp(self.norm2(x))
        x = x + self.drop_path(y) if self.residual else y
        return self.post_norm(x)


class Backbone(nn.Sequential):
    def __init__(self, cfg: Config):
        super().__init__(*[Block(spec, cfg) for spec in cfg.blocks])


class Classifier(nn.Module):
    """Mean over patches, then Linear to the 10 class logits."""

    def __init__(self, cfg: Config):
        super().__init__()
        width = cfg.blocks[-1].features[2]
        self.norm = nn.LayerNorm(width) if cfg.norm == "layer" else nn.Identity()
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.norm(x).mean(dim=1))


class MLPNet(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.stem = Stem(cfg)
        self.backbone = Backbone(cfg)
        self.classifier = Classifier(cfg)
        if cfg.init == "kaiming":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        if x.dim() not in (3, 4) or tuple(x.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE) or (x.dim() == 4 and x.shape[1] != 1):
            raise ValueError(f"MLPNet expects images of shape [B,1,28,28] or [B,28,28], got {tuple(x.shape)}")
        return self.classifier(self.backbone(self.stem(x)))


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())

