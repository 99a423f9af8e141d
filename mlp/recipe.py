"""Training recipes, and the named presets that pair a model (model.py) with a recipe.

- `seed`: the original coursework network and its recipe (88.63 % test after 200 epochs), including its
  learning-rate schedule: ReduceLROnPlateau(patience=50) fed a constant cuts the rate 10x after epochs 52,
  103 and 154.
- `quick`: the project's Mixer-style network for a 10-minute CPU run; also `default`, what `make run` trains.
- `sprint`: a cheaper network (7x7 patches) for 3 epochs: the fastest measured route to 90 % validation.
- `long`: the best CPU recipe measured near 30 minutes.
- `best`: `long` scaled up for a GPU (twice as wide and deep, 40 epochs).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from baselines import BaselineConfig
from model import TRAIN_IMAGES, BlockSpec, ModelConfig, mixer_blocks, windows_per_side

OPTIMIZERS = ("adam", "adamw", "muon", "sgd", "nesterov")
SCHEDULES = ("none", "cosine", "step", "onecycle")


@dataclass
class Recipe:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"            # "adam" | "adamw" (no decay on biases and norms) | "muon" (MuonAdamW) |
                                        # "sgd" (plain, as d2l trains) | "nesterov" (SGD, Nesterov momentum 0.9)
    schedule: str = "cosine"            # "none" | "cosine" (per step, after linear warm-up) | "step" |
                                        # "onecycle" (cosine up from lr/25 over the warm-up, then down to ~0)
    warmup_epochs: float = 0.0
    lr_drops: list[int] = field(default_factory=list)  # "step": epochs from which the rate is 10x lower
    label_smoothing: float = 0.0
    augment: bool = False               # random translation (up to `shift` px) and horizontal flip, per image
    shift: int = 2                      # augment's largest translation in pixels; 0: flips only
    erase: float = 0.0                  # random-erasing probability per image
    plain_epochs: int = 0               # the last n epochs train on the images as they are (no augment, erase)
    ema: float = 0.0                    # per-step decay of a moving average of the weights that validation,
                                        # model selection and the saved model use (0: off, the raw weights)
    val_size: int = 5000
    val_every: int = 1                  # validate after every n-th epoch from `val_from` on, and the last
    val_from: int = 1                   # (and where a run stops early); the others record val_acc None. Rare
                                        # validation pays where it averages many views (shift_tta).

    def __post_init__(self):
        self.lr_drops = list(self.lr_drops)
        self.validate()

    def validate(self):
        if not 0 <= self.plain_epochs <= self.epochs:
            raise ValueError(f"plain_epochs={self.plain_epochs} must be 0 to epochs={self.epochs}")
        if not 0 <= self.shift <= 8:
            raise ValueError(f"shift={self.shift} must be 0..8 pixels")
        for name in ("epochs", "batch_size", "val_every", "val_from"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if not 0 <= self.val_size < TRAIN_IMAGES:
            raise ValueError(f"val_size={self.val_size} must be 0 to {TRAIN_IMAGES - 1:,}: the validation split is "
                             f"cut from the {TRAIN_IMAGES:,} training images and must leave some to train on")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be positive")
        for name in ("erase", "label_smoothing", "ema"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.lr_drops != sorted(self.lr_drops) or any(e < 2 for e in self.lr_drops):
            raise ValueError(f"lr_drops={self.lr_drops} must be increasing epoch numbers >= 2")

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of training step `step` (0-based), as a multiple of `lr`."""
        warm, total = self.warmup_epochs * steps_per_epoch, self.epochs * steps_per_epoch
        if self.schedule == "onecycle":  # Smith's one-cycle as torch's OneCycleLR draws it: cosine up, cosine down
            lo = 1 / 25                  # (its div_factor; it ends at lo / 1e4, its final_div_factor)
            if step < warm:
                return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * (step + 1) / warm))
            end = lo * 1e-4
            return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        if step < warm:
            return (step + 1) / warm
        if self.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        if self.schedule == "step":
            epoch = step // steps_per_epoch + 1
            return 0.1 ** sum(epoch >= e for e in self.lr_drops)
        return 1.0

    def validates(self, epoch: int) -> bool:
        """Whether epoch `epoch` (1-based) is validated on all the model's views (a candidate for selection)."""
        return epoch == self.epochs or (epoch >= self.val_from and epoch % self.val_every == 0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Preset:
    model: ModelConfig | BaselineConfig
    recipe: Recipe


PRESETS: dict[str, Preset] = {
    "seed": Preset(
        ModelConfig(patch=4, dim=256, block="seed", act="relu", dropout=0.1, init="kaiming",
                    blocks=[BlockSpec((49, 256, 128), (256, 128, 64)), BlockSpec((128, 64, 128), (64, 32, 16))]),
        Recipe(epochs=200, batch_size=256, lr=1e-3, weight_decay=5e-4, optimizer="adam", schedule="step",
               lr_drops=[53, 104, 155])),
    # The best measured recipe near 30 minutes of the development CPU (docs/frontier.md). Narrow token MLPs
    # keep 49 tokens about as cheap as 16 at twice the width; training with shifts is what makes the evaluation's
    # shifted views pay. Its ten-view validation (a fifth of an epoch) comes from epoch 21: its recorded seeds
    # chose epochs 22-24 (docs/log.md).
    "long": Preset(
        ModelConfig(patch=4, dim=64, blocks=mixer_blocks(49, 64, depth=4, token_hidden=16, feature_hidden=256),
                    act="relu", flip_tta=True, shift_tta=1),
        Recipe(epochs=24, batch_size=128, lr=3e-3, weight_decay=0.05, optimizer="muon", schedule="cosine",
               warmup_epochs=0.5, label_smoothing=0.1, augment=True, shift=1, val_from=21)),
    # For a GPU: `long` scaled up, keeping what it learned (Muon, narrow token MLPs, ±1 px shifts in training
    # and in the ten evaluation views): twice the width, twice the depth with stochastic depth, and 40 epochs,
    # which the GPU run's 300 s cap should hold (tools/gpu_results.py probes it first). Not trained yet.
    "best": Preset(
        ModelConfig(patch=4, dim=128, blocks=mixer_blocks(49, 128, depth=8, token_hidden=32, feature_hidden=512),
                    act="relu", drop_path=0.1, flip_tta=True, shift_tta=1),
        Recipe(epochs=40, batch_size=128, lr=3e-3, weight_decay=0.05, optimizer="muon", schedule="cosine",
               warmup_epochs=1.0, label_smoothing=0.1, augment=True, shift=1)),
}
# The fastest measured route to 90 % validation (docs/frontier.md). Its 3 epochs end at a high rate, where a
# moving average of the weights validates better than the last step's. Warm-up 0.3 epochs: trials sp-wu03*
# validated 90.43 % over three seeds against 0.1's 90.24 %.
PRESETS["sprint"] = Preset(
    ModelConfig(patch=7, dim=128, blocks=mixer_blocks(16, 128, depth=2, token_hidden=16, feature_hidden=384),
                act="relu", flip_tta=True),
    Recipe(epochs=3, batch_size=128, lr=5e-3, weight_decay=0.05, optimizer="muon", schedule="cosine",
           warmup_epochs=0.3, label_smoothing=0.1, augment=True, shift=0, ema=0.998))
# `long` cut to fit a 10-minute run of the development CPU (docs/frontier.md). A ten-view validation costs a
# quarter of an epoch, so only the last epoch has one: every recorded run chose it over epoch 5's by >= 1.8
# points (docs/log.md). The live curve's one-view validation still comes every epoch.
PRESETS["quick"] = Preset(
    dataclasses.replace(PRESETS["long"].model,
                        blocks=mixer_blocks(49, 64, depth=3, token_hidden=16, feature_hidden=256)),
    dataclasses.replace(PRESETS["long"].recipe, epochs=10, val_every=10, val_from=1))
PRESETS["default"] = PRESETS["quick"]  # what `make run` and train.py train unless told otherwise
# The baselines (baselines.py), with the recipes their book trains them with (d2l: plain SGD, a constant rate,
# batch 256, 10 epochs), and the CNN with `quick`'s regularisation and views. tools/baseline_search.py searches from
# these at each budget; what validation chose there are the `NAME-SECONDS` presets below.
BOOK = Recipe(epochs=10, batch_size=256, lr=0.1, weight_decay=0.0, optimizer="sgd", schedule="none")
PRESETS["softmax"] = Preset(BaselineConfig(arch="softmax"), BOOK)
PRESETS["d2l-mlp"] = Preset(BaselineConfig(arch="d2l-mlp"), BOOK)
PRESETS["lenet"] = Preset(BaselineConfig(arch="lenet"), dataclasses.replace(BOOK, lr=0.9))
PRESETS["cnn"] = Preset(
    BaselineConfig(arch="cnn", width=24, flip_tta=True, shift_tta=1),
    Recipe(epochs=10, batch_size=128, lr=3e-3, weight_decay=0.05, optimizer="adamw", schedule="cosine",
           warmup_epochs=0.5, label_smoothing=0.1, augment=True, shift=1, val_every=10))
FIELDS = {"model": [f.name for f in dataclasses.fields(ModelConfig)],
          "baseline": [f.name for f in dataclasses.fields(BaselineConfig)],
          "recipe": [f.name for f in dataclasses.fields(Recipe)]}


def _typed(key: str, value, like):
    """Command-line values arrive untyped (JSON): check them against the preset's own value."""
    if type(like) is float and type(value) is int:
        return float(value)
    if key != "blocks" and type(value) is not type(like):
        raise ValueError(f"{key}={value!r} should be a {type(like).__name__}, like the preset's {like!r}")
    return value


def get_preset(name: str, **overrides) -> tuple[ModelConfig | BaselineConfig, Recipe]:
    """Fresh copies of a preset's model config and recipe, with any field of either replaced (see `override`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return override(PRESETS[name].model, PRESETS[name].recipe, **overrides)


def override(model: ModelConfig | BaselineConfig, recipe: Recipe, **overrides):
    """New copies of `model` and `recipe` with fields replaced (None values are ignored), each value checked
    against the type of the one it replaces. A new `patch` or `stride` changes the number of patches: a token
    MLP's input or output width that was the old number becomes the new one; hidden widths stay."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    known = FIELDS["baseline" if isinstance(model, BaselineConfig) else "model"] + FIELDS["recipe"]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"unknown config fields {unknown} for this {type(model).__name__}; known: {sorted(known)}")
    old = model
    model, recipe = model.to_dict(), recipe.to_dict()
    k, stride = overrides.get("patch", model.get("patch")), overrides.get("stride", model.get("stride"))
    side = windows_per_side(k, stride) if isinstance(k, int) and isinstance(stride, int) else 0
    if {"patch", "stride"} & set(overrides) and "blocks" not in overrides and side:  # (bad values: validate says)
        def swap(w):
            return side ** 2 if w == old.num_patches else w
        model["blocks"] = [dict(tokens=(swap(t_in), hidden, swap(t_out)), features=b["features"])
                           for b in model["blocks"] for t_in, hidden, t_out in [b["tokens"]]]
    for key, value in overrides.items():
        target = model if key in model else recipe
        target[key] = _typed(key, value, target[key])
    return type(old)(**model), Recipe(**recipe)


# What each baseline's search chose at each budget (tools/baseline_search.py, docs/baselines.md): the base preset's
# fields the chosen candidate changed, its epochs included (those whose cost fits the budget: mlp/results.py).
CHOSEN = {
    "softmax-60": ("softmax", {"epochs": 100, "lr": 0.003, "weight_decay": 0.0001, "optimizer": "adamw",
                               "schedule": "cosine"}),
    "softmax-600": ("softmax", {"epochs": 100, "lr": 0.003, "weight_decay": 0.0001, "optimizer": "adamw",
                                "schedule": "cosine"}),
    "d2l-mlp-60": ("d2l-mlp", {"epochs": 56, "lr": 0.002, "weight_decay": 0.05, "optimizer": "adamw",
                               "schedule": "cosine"}),
    "d2l-mlp-600": ("d2l-mlp", {"flip_tta": True, "epochs": 100, "lr": 0.002, "weight_decay": 0.05,
                                "optimizer": "adamw", "schedule": "cosine", "augment": True, "shift": 1}),
    "lenet-60": ("lenet", {"epochs": 10, "lr": 0.003, "weight_decay": 0.01, "optimizer": "adamw", "schedule": "cosine"}),
    # two epochs of 6 channels: 36 s by the speed table (over budget by the wall clock of a slow day, when 8 x 1 won)
    "cnn-60": ("cnn", {"width": 6, "epochs": 2, "lr": 0.01, "val_every": 2}),
    "cnn-600": ("cnn", {"width": 16, "epochs": 7, "augment": False, "flip_tta": False, "shift_tta": 0, "val_every": 7}),
    "lenet-600": ("lenet", {"epochs": 100, "lr": 0.003, "weight_decay": 0.01, "optimizer": "adamw",
                            "schedule": "cosine"}),
    # 308 k parameters, above quick's 100-200 k: validation chose it, and a bigger opponent is no strawman
    "cnn-1800": ("cnn", {"width": 32, "epochs": 11, "val_every": 11}),
    "lenet-1800": ("lenet", {"epochs": 280, "lr": 0.003, "weight_decay": 0.01, "optimizer": "adamw",
                             "schedule": "cosine", "augment": True, "shift": 1, "flip_tta": True}),
}
for _name, (_base, _fields) in CHOSEN.items():
    PRESETS[_name] = Preset(*override(PRESETS[_base].model, PRESETS[_base].recipe, **_fields))
