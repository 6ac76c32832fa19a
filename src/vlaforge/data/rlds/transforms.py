"""OXE-style per-dataset standardization transforms (``bridge``, ``bridge_oxe``, ``fractal``), behind
:data:`TRANSFORMS` (a :class:`~vlaforge.registry.Registry`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vlaforge.data.rlds.steps import Steps
from vlaforge.registry import Registry


@dataclass
class Standardized:
    """What a transform makes of one episode: T' frames, and the RLDS steps they come from."""

    state: np.ndarray | None  # (T', Ds) float32, or None when the source has no state
    action: np.ndarray  # (T', Da) float32
    steps: np.ndarray  # (T',) int: the RLDS step of each frame (images and instruction are taken there)


@dataclass(frozen=True)
class Standardization:
    """An OXE-style per-dataset transform: which RLDS fields feed the canonical features, and how."""

    name: str
    fn: Callable[[Steps], Standardized]
    requires: tuple[str, ...]  # step fields the transform reads (checked against features.json up front)
    cameras: dict[str, str]  # RLDS observation image key -> camera name
    instruction_key: str
    fps: int
    robot_type: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    datasets: tuple[str, ...] = ()  # RLDS / OXE dataset names it applies to
    doc: str = ""


# plugins add transforms through the entry-point group ``vlaforge.rlds_transforms``
TRANSFORMS: Registry[Standardization] = Registry("rlds_transforms")


def register_transform(s: Standardization) -> Standardization:
    """Add a transform to :data:`TRANSFORMS` under its name (names must be unique)."""
    return TRANSFORMS.register(s.name)(s)


def get_transform(name: str) -> Standardization:
    """The registered transform ``name``; unknown names raise (a KeyError) with the closest known ones."""
    return TRANSFORMS.get(name)


def transform_for_dataset(dataset: str) -> str | None:
    """The transform for an RLDS / OXE dataset name (``"fractal20220817_data"`` -> ``"fractal"``; the OXE copy of
    Bridge, named ``"bridge"``, -> ``"bridge_oxe"``)."""
    for _, s in TRANSFORMS.items():
        if dataset in s.datasets:
            return s.name
    return dataset if dataset in TRANSFORMS else None


def binarize_gripper(actions: np.ndarray) -> np.ndarray:
    """Continuous gripper command -> 1 (open, > 0.95) / 0 (closed, < 0.05); an in-between value takes the next
    decided one, and trailing in-between values keep the last raw value (OpenVLA/Octo ``binarize_gripper_actions``)."""
    a = np.asarray(actions, dtype=np.float32).reshape(-1)
    out = np.empty_like(a)
    if not len(a):
        return out
    carry = a[-1]
    for i in range(len(a) - 1, -1, -1):
        if a[i] > 0.95:
            carry = np.float32(1.0)
        elif a[i] < 0.05:
            carry = np.float32(0.0)
        out[i] = carry
    return out


def rel2abs_gripper(actions: np.ndarray) -> np.ndarray:
    """Relative gripper command (+1 close, -1 open, |x| <= 0.1 none) -> absolute 1 = open / 0 = closed. Before the
    first command the gripper is taken to be in the opposite state; open when no command is ever given
    (OpenVLA/Octo ``rel2abs_gripper_actions``)."""
    a = np.asarray(actions, dtype=np.float32).reshape(-1)
    cmd = np.where(a < -0.1, 1, np.where(a > 0.1, -1, 0))  # +1 = open, -1 = close
    nz = np.flatnonzero(cmd)
    state = -cmd[nz[0]] if len(nz) else 1
    out = np.empty(len(a), np.float32)
    for i, c in enumerate(cmd):
        state = c if c else state
        out[i] = state / 2 + 0.5
    return out


def _bridge(steps: Steps) -> Standardized:
    if len(steps) < 3:  # drop-first + relabel (drop-last) leave nothing
        return _empty_bridge()
    state = steps["observation/state"][1:].astype(np.float32)
    action = steps["action"][1:].astype(np.float32)
    if state.shape[1] != 7 or action.shape[1] != 7:
        raise ValueError(f"bridge: expected 7-d 'observation/state' and 'action', got {state.shape[1]} and "
                         f"{action.shape[1]}")
    return _bridge_relabel(state, binarize_gripper(action[:, 6]))


def _bridge_oxe(steps: Steps) -> Standardized:
    if len(steps) < 3:
        return _empty_bridge()
    state = steps["observation/state"][1:].astype(np.float32)
    return _bridge_relabel(state, steps["action/open_gripper"][1:].reshape(-1).astype(np.float32))


def _empty_bridge() -> Standardized:
    return Standardized(np.zeros((0, 8), np.float32), np.zeros((0, 7), np.float32), np.zeros(0, np.int64))


def _bridge_relabel(state: np.ndarray, gripper: np.ndarray) -> Standardized:
    """Shared tail of both Bridge layouts (steps already without the first): action = next state - state for
    xyz/rpy plus the gripper command, state = [xyz, rpy, 0 pad, gripper]; the last step has no successor."""
    move = state[1:, :6] - state[:-1, :6]
    new_action = np.concatenate([move, gripper[:-1, None]], axis=1)
    s = state[:-1]
    new_state = np.concatenate([s[:, :6], np.zeros((len(s), 1), np.float32), s[:, 6:7]], axis=1)
    return Standardized(new_state, new_action, np.arange(1, len(state)))


def _fractal(steps: Steps) -> Standardized:
    gripper = rel2abs_gripper(steps["action/gripper_closedness_action"][:, 0])
    action = np.concatenate([steps["action/world_vector"], steps["action/rotation_delta"], gripper[:, None]], axis=1)
    state = np.concatenate([steps["observation/base_pose_tool_reached"], steps["observation/gripper_closed"]],
                           axis=1)
    return Standardized(state.astype(np.float32), action.astype(np.float32), np.arange(len(steps)))


DELTA_EEF = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")

register_transform(Standardization(
    name="bridge", fn=_bridge, requires=("observation/state", "action", "observation/image_0", "language_instruction"),
    cameras={"image_0": "primary"}, instruction_key="language_instruction", fps=5, robot_type="widowx",
    state_names=("x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper"), action_names=DELTA_EEF,
    datasets=("bridge_dataset", "bridge_orig"),
    doc="BridgeData V2 (WidowX), as OpenVLA's bridge_orig_dataset_transform"))

register_transform(Standardization(
    name="bridge_oxe", fn=_bridge_oxe,
    requires=("observation/state", "action/open_gripper", "observation/image",
              "observation/natural_language_instruction"),
    cameras={"image": "primary"}, instruction_key="observation/natural_language_instruction", fps=5,
    robot_type="widowx", state_names=("x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper"),
    action_names=DELTA_EEF, datasets=("bridge", "bridge_oxe"),
    doc="the Open X-Embodiment copy of Bridge, as OpenVLA's bridge_oxe_dataset_transform"))

register_transform(Standardization(
    name="fractal", fn=_fractal,
    requires=("action/world_vector", "action/rotation_delta", "action/gripper_closedness_action",
              "observation/base_pose_tool_reached", "observation/gripper_closed", "observation/image",
              "observation/natural_language_instruction"),
    cameras={"image": "primary"}, instruction_key="observation/natural_language_instruction", fps=3,
    robot_type="google_robot",
    state_names=("x", "y", "z", "quat_0", "quat_1", "quat_2", "quat_3", "gripper_closed"), action_names=DELTA_EEF,
    datasets=("fractal20220817_data", "rt_1", "rt1"),
    doc="RT-1 / fractal20220817_data (Google robot), as OpenVLA's rt1_dataset_transform"))
