"""The reader protocol and dataset metadata shared by every on-disk format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vlaforge.data.stats import Stats
from vlaforge.types import ACTION, OBS_IMAGES, OBS_STATE, FeatureSpec, RobotSpec


@dataclass
class DatasetMeta:
    """Everything about a dataset except its frames."""

    root: Path
    fps: int
    features: dict[str, FeatureSpec]
    tasks: list[str]  # task_index -> instruction
    stats: Stats | None
    episode_lengths: np.ndarray  # (E,) int
    episode_starts: np.ndarray  # (E,) global index of each episode's first frame
    robot_type: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_lengths)

    @property
    def num_frames(self) -> int:
        return int(self.episode_lengths.sum())

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if k.startswith(OBS_IMAGES + ".") and f.is_visual]

    def robot_spec(self) -> RobotSpec:
        cams = {}
        for k in self.camera_keys:
            shape = self.features[k].shape  # (H, W, C)
            cams[k[len(OBS_IMAGES) + 1 :]] = (int(shape[0]), int(shape[1]))
        state = self.features.get(OBS_STATE)
        action = self.features.get(ACTION)
        if action is None:
            raise KeyError(f"dataset {self.root} has no '{ACTION}' feature (features: {sorted(self.features)})")
        return RobotSpec(cameras=cams, state_dim=int(np.prod(state.shape)) if state else 0,
                         action_dim=int(np.prod(action.shape)), fps=self.fps)


@runtime_checkable
class EpisodeReader(Protocol):
    """Random access to frames, each with its history window and action chunk."""

    meta: DatasetMeta

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict[str, Any]: ...


def window_indices(frame: int, length: int, deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices ``frame + deltas`` clamped into ``[0, length)`` and the mask of clamped (padded) ones."""
    idx = frame + deltas
    pad = (idx < 0) | (idx >= length)
    return np.clip(idx, 0, length - 1), pad
