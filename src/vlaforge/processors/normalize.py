"""Normalization steps: map features to a unit range with dataset statistics, and back.

Modes (per feature): ``mean_std`` -> (x - mean) / std; ``min_max`` and ``q01_q99`` -> [-1, 1] between the two
bounds (values outside are clipped when ``clip``); ``mean_3std`` -> (x - mean) / (std + 1e-5) / 3, clipped to
[-1, 1] (LLaVA-VLA's proprio: three sigmas onto the bins' range); ``identity``. A per-dimension mask leaves
chosen dimensions untouched (HybridVLA leaves the gripper unnormalized). Dimensions whose std or range is below
``min_scale`` are not divided (a warning names them) so that a constant dimension cannot blow up to huge values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vlaforge.data.stats import Stats, StatsError, check_finite
from vlaforge.processors.base import STEPS, Step
from vlaforge.types import DATASET

MODES = ("mean_std", "min_max", "q01_q99", "mean_3std", "identity")
_BOUNDS = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "q01_q99": ("q01", "q99"),
           "mean_3std": ("mean", "std")}
CLIPPED = ("min_max", "q01_q99", "mean_3std")  # modes whose normalized values are clipped to [-1, 1]
STD_EPS_3SIGMA = 1e-5  # LLaVA-VLA adds this to the std before dividing


def _center_scale(mode: str, s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if mode == "mean_std":
        return s["mean"], s["std"]
    if mode == "mean_3std":
        return s["mean"], 3 * (s["std"].astype(np.float64) + STD_EPS_3SIGMA)
    lo, hi = (s[k] for k in _BOUNDS[mode])
    return (lo + hi) / 2, (hi - lo) / 2


@dataclass
class _NormBase(Step):
    uses_stats: ClassVar[bool] = True

    modes: dict[str, str]
    masks: dict[str, list[bool]] = field(default_factory=dict)  # True = normalize this dim
    clip: bool = True
    min_scale: float = 1e-4

    def __post_init__(self) -> None:
        for k, m in self.modes.items():
            if m not in MODES:
                raise ValueError(f"normalization mode for '{k}': expected one of {MODES}, got {m!r}")
        self._center: dict[str, np.ndarray] = {}
        self._scale: dict[str, np.ndarray] = {}
        self._stats: dict[str, np.ndarray] = {}

    @classmethod
    def from_stats(cls, modes: dict[str, str], stats: Stats, masks: dict[str, list[bool]] | None = None,
                   **kw: Any) -> _NormBase:
        step = cls(modes=dict(modes), masks=dict(masks or {}), **kw)
        state = {}
        for key, mode in modes.items():
            if mode == "identity":
                continue
            if key not in stats:
                raise StatsError(f"normalization: no statistics for '{key}' (have {sorted(stats)}); "
                                 f"run `vlaforge stats DATASET`")
            for name in _BOUNDS[mode]:
                if name not in stats[key]:
                    raise StatsError(f"normalization: '{key}' has no '{name}' statistic (mode {mode})")
                state[f"{key}/{name}"] = np.asarray(stats[key][name], dtype=np.float32).reshape(-1)
        step.load_state_dict(state, warn=True)
        return step

    def rebind(self, stats: Stats | None = None, robot: Any = None) -> _NormBase:
        if stats is None:
            return self
        return type(self).from_stats(self.modes, stats, self.masks, clip=self.clip, min_scale=self.min_scale)

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self._stats)

    def load_state_dict(self, state: dict[str, np.ndarray], warn: bool = False) -> None:
        """Set the statistics; ``warn`` reports tiny ranges (once, when built from a dataset, not at every load)."""
        grouped: dict[str, dict[str, np.ndarray]] = {}
        for name, v in state.items():
            key, _, stat = name.rpartition("/")
            grouped.setdefault(key, {})[stat] = np.asarray(v, dtype=np.float32)
        check_finite(grouped, "normalization statistics")
        self._stats = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
        for key, mode in self.modes.items():
            if mode == "identity":
                continue
            if key not in grouped:
                raise StatsError(f"normalization state has no statistics for '{key}'")
            center, scale = _center_scale(mode, grouped[key])
            tiny = scale < self.min_scale
            if tiny.any() and warn:
                warnings.warn(f"normalization of '{key}': dims {np.flatnonzero(tiny).tolist()} have "
                              f"{'std' if mode == 'mean_std' else 'range'} < {self.min_scale}; they are only "
                              f"centered, not scaled", stacklevel=2)
            scale = np.where(tiny, 1.0, scale)  # at every load, not only when warning (a loaded checkpoint too)
            mask = self.masks.get(key)
            if mask is not None:
                if len(mask) != len(center):
                    raise ValueError(f"normalization mask for '{key}': expected {len(center)} flags, got {len(mask)}")
                keep = ~np.asarray(mask, dtype=bool)
                center, scale = np.where(keep, 0.0, center), np.where(keep, 1.0, scale)
            self._center[key], self._scale[key] = center.astype(np.float32), scale.astype(np.float32)

    def _transform(self, key: str, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        for key in self._center:
            if key in item:
                x = np.asarray(item[key], dtype=np.float32)
                if x.shape[-1] != len(self._center[key]):
                    raise ValueError(f"'{key}': expected last dim {len(self._center[key])} (the statistics' size), "
                                     f"got shape {x.shape}")
                item[key] = self._transform(key, x).astype(np.float32)
        return item


@STEPS.register("normalize")
@dataclass
class Normalize(_NormBase):
    def _transform(self, key: str, x: np.ndarray) -> np.ndarray:
        y = (x - self._center[key]) / self._scale[key]
        if self.clip and self.modes[key] in CLIPPED:
            mask = self.masks.get(key)
            y = np.clip(y, -1, 1) if mask is None else np.where(mask, np.clip(y, -1, 1), y)
        return y


@STEPS.register("unnormalize")
@dataclass
class Unnormalize(_NormBase):
    def _transform(self, key: str, y: np.ndarray) -> np.ndarray:
        return y * self._scale[key] + self._center[key]


@dataclass
class PerDataset(Step):
    """Apply the step of the dataset each item came from (mixture training: its statistics, its image sizes).

    ``steps`` maps dataset name -> a step; the item's :data:`~vlaforge.types.DATASET` picks one. Training only:
    at inference the saved pipeline uses the ``unnorm_key`` dataset's step.
    """

    steps: dict[str, Step]

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        name = item.get(DATASET)
        if name not in self.steps:
            raise KeyError(f"per-dataset step: item from dataset {name!r}; have steps for {sorted(self.steps)}")
        return self.steps[name](item)
