"""Feature validation where raw data meets a model: camera names, image shapes and dtypes, state size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vlaforge.processors.base import STEPS, Step
from vlaforge.types import OBS_IMAGES, OBS_STATE, TASK, FeatureMismatchError, RobotSpec, image_key

MAX_SIDE = 4096  # a camera of any size (spec (0, 0), imported checkpoints) still has bounded sides


@STEPS.register("check_features")
@dataclass
class CheckFeatures(Step):
    """Reject observations that do not match what the policy was trained on, listing every difference."""

    uses_robot: ClassVar[bool] = True

    robot: dict[str, Any]  # RobotSpec.to_json(); a camera of size (0, 0) takes any H x W (imported checkpoints)
    history: int = 1

    def __post_init__(self) -> None:
        self._spec = RobotSpec.from_json(self.robot)

    def rebind(self, stats: Any = None, robot: RobotSpec | None = None) -> CheckFeatures:
        return self if robot is None else CheckFeatures(robot=robot.to_json(), history=self.history)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        diffs = []
        spec = self._spec
        cams = {k[len(OBS_IMAGES) + 1:] for k in item if k.startswith(OBS_IMAGES + ".")}
        for cam in sorted(set(spec.cameras) - cams):
            diffs.append(f"camera '{cam}': expected, missing (got cameras {sorted(cams)})")
        for cam in sorted(cams - set(spec.cameras)):
            diffs.append(f"camera '{cam}': not one of the policy's cameras {sorted(spec.cameras)}")
        for cam, (h, w) in spec.cameras.items():
            if cam not in cams:
                continue
            img = np.asarray(item[image_key(cam)])
            want = (h, w, 3) if self.history == 1 else (self.history, h, w, 3)
            if (h, w) == (0, 0) and img.ndim == len(want) and all(1 <= s <= MAX_SIDE for s in img.shape[-3:-1]):
                want = want[:-3] + img.shape[-3:-1] + (3,)  # any size: only the layout and the bounds are checked
            if img.shape != want:
                diffs.append(f"camera '{cam}': expected shape {want}, got {img.shape}")
            if img.dtype != np.uint8:
                diffs.append(f"camera '{cam}': expected dtype uint8, got {img.dtype}")
        if spec.state_dim:
            state = item.get(OBS_STATE)
            if state is None:
                diffs.append(f"'{OBS_STATE}': expected {spec.state_dim} values, missing")
            else:
                state = np.asarray(state)
                want_s = (spec.state_dim,) if self.history == 1 else (self.history, spec.state_dim)
                if state.shape != want_s:
                    diffs.append(f"'{OBS_STATE}': expected shape {want_s}, got {state.shape}")
                elif not np.issubdtype(state.dtype, np.number):
                    diffs.append(f"'{OBS_STATE}': expected numbers, got dtype {state.dtype}")
                elif not np.isfinite(state.astype(np.float64)).all():
                    diffs.append(f"'{OBS_STATE}': contains NaN or inf")
        if not isinstance(item.get(TASK), str):
            diffs.append(f"'{TASK}': expected an instruction string, got {type(item.get(TASK)).__name__}")
        if diffs:
            raise FeatureMismatchError(diffs, "observation does not match the policy")
        return item
