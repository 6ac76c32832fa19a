"""CPU quick-start recipes: a tiny SmolVLM-architecture VLA trained from scratch on Meta-World demos.

Sized so that collect -> train -> eval on five tasks fits in 30 minutes on 2 CPU cores (see README).
"""

from __future__ import annotations

from vlaforge.backbones.base import BACKBONES
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig
from vlaforge.presets import PRESETS
from vlaforge.train.config import DataConfig, OptimConfig, TrainConfig

QUICKSTART_TASKS = ("drawer-open", "drawer-close", "button-press-topdown", "door-open", "window-open")


def _quickstart(head: str, **head_options: object) -> TrainConfig:
    policy = PolicyConfig(backbone=BACKBONES.get("smolvlm")(size="tiny", proprio="mlp"),
                          head=HEADS.get(head)(**head_options), chunk=8, exec_steps=2)
    return TrainConfig(policy=policy, data=DataConfig(shift_pad=4), optim=OptimConfig(lr=3e-4, warmup_steps=100),
                       steps=2000, batch_size=32, save_every=500, log_every=10)


@PRESETS.register("quickstart_tokens")
def quickstart_tokens() -> TrainConfig:
    """Discrete action tokens (256 bins) decoded by the tiny VLM."""
    return _quickstart("tokens")


@PRESETS.register("quickstart_dit")
def quickstart_dit() -> TrainConfig:
    """A DiT diffusion head on the tiny VLM's prefix (10 DDIM steps)."""
    return _quickstart("dit")
