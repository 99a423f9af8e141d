"""The networks the all-MLP presets are measured against: the d2l book's (softmax regression, its MLP, LeNet)
and a small residual CNN. Architecture only, like model.py; trained by the same harness (mlp/), with the same
data, validation split, augmentation options and evaluation views (docs/baselines.md).

- `softmax`: d2l ch. 3, Flatten -> Linear 784->10: the textbook floor.
- `d2l-mlp`: d2l ch. 4, 784 -> 256 -> 10 with ReLU: what "an MLP" means to the seed's readers.
- `lenet`: d2l ch. 7, LeNet-5 as the book builds it (sigmoids, average pooling, Xavier init).
- `cnn`: three stages of residual 3x3-conv blocks with BatchNorm (28 -> 14 -> 7 px, channels doubling), global
  average pooling, Linear: a fair opponent at about `quick`'s parameter count.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

IMAGE_SIZE, NUM_CLASSES = 28, 10  # (as model.py: each network module stands alone, at the bottom of the imports)

ARCHS = ("softmax", "d2l-mlp", "lenet", "cnn")
DEFAULT_WIDTH = {"d2l-mlp": 256, "cnn": 24}  # d2l-mlp: hidden units; cnn: channels of the first stage


@dataclass
class BaselineConfig:
    arch: str = "cnn"
    width: int = 0                      # 0: the arch's default (DEFAULT_WIDTH); softmax and lenet have none
    depth: int = 1                      # cnn: residual blocks per stage
    stem_stride: int = 1                # cnn: 2 halves the image in the stem (28 -> 14 px): ~4x fewer operations
    flip_tta: bool = False              # evaluation views, as in model.ModelConfig (mlp/evaluate.py)
    shift_tta: int = 0

    def __post_init__(self):
        self.validate()

    @property
    def views(self) -> int:
        return (5 if self.shift_tta else 1) * (2 if self.flip_tta else 1)

    @property
    def channels(self) -> int:
        return self.width or DEFAULT_WIDTH.get(self.arch, 0)

    def validate(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r} is not one of {ARCHS}")
        for name in ("width", "depth", "shift_tta", "stem_stride"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a non-negative integer")
        if self.width and self.arch not in DEFAULT_WIDTH:
            raise ValueError(f"width={self.width}: {self.arch} has a fixed shape (only {sorted(DEFAULT_WIDTH)} "
                             f"take a width); leave it 0")
        if self.depth != 1 and self.arch != "cnn":
            raise ValueError(f"depth={self.depth}: only cnn takes a depth (residual blocks per stage); leave it 1")
        if self.depth < 1:
            raise ValueError(f"depth={self.depth} must be at least 1")
        if self.stem_stride not in (1, 2) or (self.stem_stride != 1 and self.arch != "cnn"):
            raise ValueError(f"stem_stride={self.stem_stride!r}: cnn takes 1 or 2 (a stem that halves the image); "
                             f"the other baselines have none (leave it 1)")
        if type(self.flip_tta) is not bool:
            raise ValueError(f"flip_tta={self.flip_tta!r} should be a bool")
        if self.shift_tta >= IMAGE_SIZE // 2:
            raise ValueError(f"shift_tta={self.shift_tta} must be 0 (off) to {IMAGE_SIZE // 2 - 1} pixels")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out))


class ResidualBlock(nn.Module):
    """x + conv-BN-ReLU-conv-BN(x), then ReLU (He et al.'s basic block); a strided 1x1 conv on the shortcut
    where the block halves the resolution or changes the width."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(conv_bn(c_in, c_out, stride), nn.ReLU(inplace=True), conv_bn(c_out, c_out))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x):
        return nn.functional.relu(self.shortcut(x) + self.branch(x))


def residual_cnn(c: int, depth: int, stem_stride: int = 1) -> nn.Sequential:
    stages = []
    for i, (c_in, c_out) in enumerate(((c, c), (c, 2 * c), (2 * c, 4 * c))):  # 28, 14, 7 px (stride 2: 14, 7, 4)
        stages += [ResidualBlock(c_in if j == 0 else c_out, c_out, 2 if i and j == 0 else 1) for j in range(depth)]
    return nn.Sequential(conv_bn(1, c, stem_stride), nn.ReLU(inplace=True), *stages,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * c, NUM_CLASSES))


def lenet() -> nn.Sequential:
    """d2l's LeNet: 5x5 convs with sigmoids and 2x2 average pooling, then three Linear layers (61,706 weights)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, NUM_CLASSES))


class BaselineNet(nn.Module):
    def __init__(self, cfg: BaselineConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        pixels = IMAGE_SIZE * IMAGE_SIZE
        if cfg.arch == "softmax":
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, NUM_CLASSES))
        elif cfg.arch == "d2l-mlp":
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, cfg.channels), nn.ReLU(),
                                     nn.Linear(cfg.channels, NUM_CLASSES))
        elif cfg.arch == "lenet":
            self.net = lenet()
        else:
            self.net = residual_cnn(cfg.channels, cfg.depth, cfg.stem_stride)
        for m in self.modules():  # the book's initialisations; the CNN keeps torch's (He-uniform) own
            if cfg.arch in ("softmax", "d2l-mlp") and isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
            elif cfg.arch == "lenet" and isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"{self.cfg.arch} expects images of shape [B,1,28,28] or [B,28,28], got {tuple(x.shape)}")
        return self.net(x)
