"""Named training recipes: Python functions returning a full :class:`~vlaforge.train.config.TrainConfig`.

``vlaforge train PRESET --data DIR --out DIR [--head.num_steps=8 ...]`` starts from the preset and applies the
overrides; the resolved config is saved in the run directory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vlaforge.registry import Registry

if TYPE_CHECKING:
    from vlaforge.train.config import TrainConfig

PRESETS: Registry[Callable[[], TrainConfig]] = Registry("presets", lazy={
    "quickstart_tokens": "vlaforge.presets.quickstart",
    "quickstart_mlp": "vlaforge.presets.quickstart",
    "quickstart_dit": "vlaforge.presets.quickstart",
    "hybridvla": "vlaforge.presets.seeds",
    "hybridvla_tiny": "vlaforge.presets.seeds",
    "dexvla_stage2": "vlaforge.presets.seeds",
    "dexvla_stage2_tiny": "vlaforge.presets.seeds",
    "dexvla_stage3": "vlaforge.presets.seeds",
    "dexvla_stage3_tiny": "vlaforge.presets.seeds",
    "divla": "vlaforge.presets.seeds",
    "divla_tiny": "vlaforge.presets.seeds",
    "llava_vla": "vlaforge.presets.seeds",
    "llava_vla_tiny": "vlaforge.presets.seeds",
    "robovlms": "vlaforge.presets.seeds",
    "robovlms_tiny": "vlaforge.presets.seeds",
    "pi0_like": "vlaforge.presets.seeds",
    "pi0_like_tiny": "vlaforge.presets.seeds",
    "openvla": "vlaforge.presets.seeds",
    "openvla_tiny": "vlaforge.presets.seeds",
    "openvla_oft": "vlaforge.presets.seeds",
    "openvla_oft_tiny": "vlaforge.presets.seeds",
    "smolvla": "vlaforge.presets.smolvla",
    "smolvla_tiny": "vlaforge.presets.smolvla",
    "pi0": "vlaforge.presets.pi0",
    "pi0_tiny": "vlaforge.presets.pi0",
    "pi05": "vlaforge.presets.pi0",
    "pi05_tiny": "vlaforge.presets.pi0",
})


def get_preset(name: str) -> TrainConfig:
    return PRESETS.get(name)()
