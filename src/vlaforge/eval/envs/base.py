"""Simulator adapters: one small class per benchmark behind :data:`ENVS`, each behind an optional extra."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from vlaforge.config import Choice, ChoiceType
from vlaforge.registry import Registry
from vlaforge.types import RobotSpec

ENVS: Registry[type[EnvConfig]] = Registry("envs", lazy={"metaworld": "vlaforge.eval.envs.metaworld",
                                                           "pusht": "vlaforge.eval.envs.pusht",
                                                           "aloha": "vlaforge.eval.envs.aloha",
                                                           "libero": "vlaforge.eval.envs.libero"})


@dataclass(frozen=True)
class EnvConfig(Choice, ChoiceType):
    registry: ClassVar[Registry] = ENVS

    def task_names(self, spec: str | list[str]) -> list[str]:
        """Expand a task spec (names, or suite names such as ``mt10``) into task names."""
        raise NotImplementedError

    def make(self, task: str) -> EnvAdapter:
        raise NotImplementedError

    def task_groups(self) -> dict[str, tuple[str, ...]]:
        """Named groups of tasks whose means the benchmark reports (e.g. Meta-World's difficulties); default none."""
        return {}

    default_episodes: ClassVar[int] = 10  # evaluation episodes per task when --episodes is not given

    # the simulator's own demonstration formats `vlaforge collect --format` can also write (beside LeRobot v3)
    native_formats: ClassVar[tuple[str, ...]] = ()

    def write_native(self, fmt: str, out_dir: Path, task: str, instruction: str,
                     episodes: list[dict[str, np.ndarray]], records: list[dict[str, np.ndarray]]) -> Path:
        """Write one task's episodes (frames + ``action``) and their :meth:`EnvAdapter.record` arrays as ``fmt``."""
        raise ValueError(f"env {self.type!r} writes no {fmt!r} demonstrations")


class EnvAdapter(Protocol):
    """One task of one simulator, producing raw observations in vlaforge keys."""

    task: str
    instruction: str
    robot: RobotSpec
    max_steps: int

    fps: int

    # raw observation (images uint8 HWC, state, task); render=False skips the cameras (expert-only runs)
    def reset(self, seed: int, render: bool = True) -> dict[str, Any]: ...

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, Any], bool, dict[str, Any]]: ...

    def expert_action(self) -> np.ndarray: ...  # scripted expert's action for the current state

    # optional, for EnvConfig.native_formats: the simulator's raw per-step data (joint states, sim state, ...)
    # def record(self) -> dict[str, np.ndarray]: ...

    # optional: features a collected dataset keeps beside the observation, never given to a policy (Meta-World's
    # observation.environment_state: object and goal positions, an auxiliary training target)
    # def recorded_features(self) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
