"""Which network a model config builds: the MLP family (model.py) or a baseline (baselines.py). Checkpoints and
records hold a config as a dict; a baseline's names its `arch`."""
from __future__ import annotations

from torch import nn

from baselines import BaselineConfig, BaselineNet
from model import MLPNet, ModelConfig

Config = ModelConfig | BaselineConfig


def config_class(d: dict) -> type[Config]:
    return BaselineConfig if "arch" in d else ModelConfig


def config_from(d: dict) -> Config:
    """A model config read back from a checkpoint or a record (fields it lacks take their defaults)."""
    return config_class(d)(**d)


def build_net(cfg: Config) -> nn.Module:
    return BaselineNet(cfg) if isinstance(cfg, BaselineConfig) else MLPNet(cfg)
