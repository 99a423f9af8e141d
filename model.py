"""All-MLP Fashion-MNIST classifier: patch Stem -> Backbone of transposed-MLP blocks -> mean-pool Classifier.

Architecture only. `ModelConfig` names the widths and choices; two block designs:
- `SeedBlock`: the original coursework network's block (no residuals, BatchNorm over patches after it);
- `MixerBlock`: the MLP-Mixer block (pre-LayerNorm, residual connections, optional stochastic depth).
Training recipes and the named presets that pair a model with a recipe live in recipe.py.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

IMAGE_SIZE = 28
NUM_CLASSES = 10
TRAIN_IMAGES = 60_000  # Fashion-MNIST's training set, of which the validation split is cut


@dataclass(frozen=True)
class BlockSpec:
    """Widths of one block: MLP 1 across patches (in, hidden, out), MLP 2 across features (in, hidden, out)."""
    tokens: tuple[int, int, int]
    features: tuple[int, int, int]


@dataclass
class ModelConfig:
    patch: int = 4                      # K: K x K patches (windows)
    stride: int = 0                     # window step; 0 = K: non-overlapping patches (then K must divide 28)
    dim: int = 128                      # stem output width (features per patch)
    blocks: list[BlockSpec] = field(default_factory=list)
    block: str = "mixer"                # "mixer": MixerBlock | "seed": SeedBlock
    act: str = "gelu"                   # "relu" | "gelu"
    dropout: float = 0.0                # inside every MLP, after the activation
    drop_path: float = 0.0              # stochastic depth (MixerBlock): chance a residual branch is skipped
    init: str = "default"               # "kaiming": Kaiming-normal Linear weights, as the seed did
    # The views this network is evaluated on (mlp/evaluate.py averages their logits; the network itself
    # computes one view): its mirror image, and its shifts by this many px up, down, left and right (pays only
    # for networks trained with shifts).
    flip_tta: bool = False
    shift_tta: int = 0

    def __post_init__(self):
        if not isinstance(self.blocks, (list, tuple)):
            raise ValueError(f"blocks must be a list of blocks, {BLOCK_EXAMPLE}; got {self.blocks!r}")
        self.blocks = [b if isinstance(b, BlockSpec) else _block_spec(b) for b in self.blocks]
        self.validate()

    @property
    def step(self) -> int:
        return self.stride or self.patch

    @property
    def num_patches(self) -> int:
        return windows_per_side(self.patch, self.stride) ** 2

    @property
    def views(self) -> int:
        """Forward passes per image of an evaluation: the image, its four shifts (shift_tta), and mirrors (flip_tta)."""
        return (5 if self.shift_tta else 1) * (2 if self.flip_tta else 1)

    def validate(self):
        """Raise ValueError naming the bad field and what would fix it."""
        for name, kind in (("patch", int), ("stride", int), ("dim", int), ("dropout", (int, float)),
                           ("drop_path", (int, float)), ("flip_tta", bool)):
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"{name}={value!r} should be an {kind.__name__}" if kind is int else
                                 f"{name}={value!r} should be a {'number' if kind is not bool else 'bool'}")
        if not self.stride and not windows_per_side(self.patch):
            raise ValueError(f"patch size K={self.patch} must divide {IMAGE_SIZE}: use one of 1, 2, 4, 7, 14, 28, "
                             f"or set a stride for overlapping windows")
        if self.stride and not windows_per_side(self.patch, self.stride):
            raise ValueError(f"stride={self.stride} with K={self.patch}: windows must tile the {IMAGE_SIZE}-pixel "
                             f"side exactly ((28 - K) divisible by the stride, stride <= K); strides that fit: "
                             f"{[s for s in range(1, self.patch + 1) if windows_per_side(self.patch, s)]}")
        if self.dim <= 0:
            raise ValueError(f"dim={self.dim} must be positive")
        for name in ("dropout", "drop_path"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        for name, allowed in (("block", ("mixer", "seed")), ("act", ("relu", "gelu")), ("init", ("default", "kaiming"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if type(self.shift_tta) is not int or not 0 <= self.shift_tta < IMAGE_SIZE // 2:
            raise ValueError(f"shift_tta={self.shift_tta!r} must be an integer number of pixels, 0 (off) to "
                             f"{IMAGE_SIZE // 2 - 1}")
        if self.drop_path and self.block != "mixer":
            raise ValueError("drop_path needs block='mixer': it skips residual branches")
        if not self.blocks:
            raise ValueError("blocks is empty: give at least one BlockSpec")
        tokens, feats = self.num_patches, self.dim
        for i, b in enumerate(self.blocks):
            if min(b.tokens + b.features) <= 0:
                raise ValueError(f"block {i}: widths {b} must all be positive")
            if b.tokens[0] != tokens or b.features[0] != feats:
                raise ValueError(f"block {i} expects {b.tokens[0]} patches x {b.features[0]} features "
                                 f"but receives {tokens} x {feats}; fix its BlockSpec")
            if self.block == "mixer" and (b.tokens[2] != tokens or b.features[2] != feats):
                raise ValueError(f"block {i}: a residual MixerBlock needs output widths equal to input widths, got {b}")
            tokens, feats = b.tokens[2], b.features[2]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def windows_per_side(patch: int, stride: int = 0) -> int:
    """How many K x K windows, `stride` pixels apart (0: K, non-overlapping), fit along a side of the image;
    0 where they do not tile it exactly."""
    step = stride or patch
    if not 0 < step <= patch <= IMAGE_SIZE or (IMAGE_SIZE - patch) % step:
        return 0
    return (IMAGE_SIZE - patch) // step + 1


BLOCK_EXAMPLE = ('{"tokens": [16, 64, 16], "features": [128, 512, 128]} (three integer widths each, as JSON; '
                 "on a command line, quote the whole --set value)")


def _widths(w) -> bool:
    """Three integer widths (in, hidden, out)."""
    return isinstance(w, (list, tuple)) and len(w) == 3 and all(type(v) is int for v in w)


def _block_spec(b) -> BlockSpec:
    if not (isinstance(b, dict) and set(b) == {"tokens", "features"} and _widths(b["tokens"])
            and _widths(b["features"])):
        raise ValueError(f"a block must look like {BLOCK_EXAMPLE}; got {b!r}")
    return BlockSpec(tuple(b["tokens"]), tuple(b["features"]))


def mixer_blocks(patches: int, dim: int, depth: int, token_hidden: int, feature_hidden: int) -> list[BlockSpec]:
    return [BlockSpec((patches, token_hidden, patches), (dim, feature_hidden, dim)) for _ in range(depth)]


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
        super().__init__(nn.Linear(d_in, hidden), nn.GELU() if act == "gelu" else nn.ReLU(), Dropout(dropout),
                         nn.Linear(hidden, d_out))


class FeatureBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last (feature) axis of [B, N, C]; nn.BatchNorm1d normalises axis 1."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def windows(x: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """[B, 1, 28, 28] -> [B, N, k*k]: k x k windows every `stride` pixels, row-major (= patchify at stride k)."""
    return nn.functional.unfold(x if x.dim() == 4 else x.unsqueeze(1), k, stride=stride).transpose(1, 2)


class Stem(nn.Module):
    """Cut into K x K patches (or overlapping windows, with a stride < K), embed each with one Linear
    (K^2 -> dim), then BatchNorm.

    The seed normalises each patch position (over axis 1, the patches); Mixer blocks bring their own
    LayerNorm, so there a BatchNorm over the features only keeps the stem's output scale in check."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.k, self.stride = cfg.patch, cfg.step
        self.embed = nn.Linear(cfg.patch ** 2, cfg.dim)
        self.norm = nn.BatchNorm1d(cfg.num_patches) if cfg.block == "seed" else FeatureBatchNorm(cfg.dim)

    def forward(self, x):                                   # [B,1,28,28] -> [B, N, dim]
        cut = patchify(x, self.k) if self.stride == self.k else windows(x, self.k, self.stride)
        return self.norm(self.embed(cut))


class SeedBlock(nn.Module):
    """The original: transpose, MLP 1 across patches; transpose back, MLP 2 across features; BatchNorm."""

    def __init__(self, spec: BlockSpec, cfg: ModelConfig):
        super().__init__()
        self.token_mlp = MLP(spec.tokens, cfg.act, cfg.dropout)
        self.feature_mlp = MLP(spec.features, cfg.act, cfg.dropout)
        self.norm = nn.BatchNorm1d(spec.tokens[2])

    def forward(self, x):                                   # x: [B, patches, features]
        x = self.token_mlp(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(self.feature_mlp(x))


class MixerBlock(nn.Module):
    """MLP-Mixer: x + TokenMLP(LN(x)^T)^T, then x + FeatureMLP(LN(x)); branches dropped by stochastic depth."""

    def __init__(self, spec: BlockSpec, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.features[0])
        self.token_mlp = MLP(spec.tokens, cfg.act, cfg.dropout)
        self.norm2 = nn.LayerNorm(spec.features[0])
        self.feature_mlp = MLP(spec.features, cfg.act, cfg.dropout)
        self.drop_path = nn.Identity()
        if cfg.drop_path:  # (torchvision is imported only where it is used: it costs ~3 s per process)
            from torchvision.ops import StochasticDepth
            self.drop_path = StochasticDepth(cfg.drop_path, "row")  # identity in eval

    def forward(self, x):                                   # x: [B, patches, features]
        x = x + self.drop_path(self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        return x + self.drop_path(self.feature_mlp(self.norm2(x)))


class Backbone(nn.Sequential):
    def __init__(self, cfg: ModelConfig):
        block = MixerBlock if cfg.block == "mixer" else SeedBlock
        super().__init__(*[block(spec, cfg) for spec in cfg.blocks])


class Classifier(nn.Module):
    """Mean over patches, then Linear to the 10 class logits (Mixer: after a final LayerNorm)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        width = cfg.blocks[-1].features[2]
        self.norm = nn.LayerNorm(width) if cfg.block == "mixer" else nn.Identity()
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.norm(x).mean(dim=1))


class MLPNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
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


NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def all_mlp_violations(net: nn.Module) -> list[str]:
    """The modules of `net` that break the all-MLP rule (docs/design.md, "What counts as all-MLP"): each module
    that holds parameters of its own must be a Linear layer or a norm, so nothing learns a k x k spatial
    kernel (a convolution); the stem's windows are this file's concern (only `Stem` cuts them)."""
    return [f"{name or 'the network'}: {type(m).__name__}" for name, m in net.named_modules()
            if list(m.parameters(recurse=False)) and not isinstance(m, (nn.Linear, *NORMS))]


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def train_flops_per_image(cfg: ModelConfig, batch: int = 64) -> float:
    """Forward + backward FLOPs of one training step, counted by torch's FlopCounterMode, per image."""
    from torch.utils.flop_counter import FlopCounterMode
    net, x, y = MLPNet(cfg), torch.rand(batch, 1, 28, 28), torch.randint(0, NUM_CLASSES, (batch,))
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(net(x), y).backward()
    return counter.get_total_flops() / batch
