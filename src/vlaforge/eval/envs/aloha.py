"""ALOHA sim (ACT's bimanual ViperX tasks from ``gym-aloha``): transfer-cube and insertion, joint-space control.

* Tasks: ``transfer_cube`` (AlohaTransferCube-v0) and ``insertion`` (AlohaInsertion-v0), built here with
  dm_control from the package's XML and task classes, so that only the ``top`` camera is rendered, at the
  configured size (the gym wrapper renders three 480 x 640 cameras every step). Object poses come from the
  package's ``sample_box_pose`` / ``sample_insertion_pose`` with the episode seed.
* Observation: ``observation.images.top`` (uint8), ``observation.state`` = 14-d joint positions (per arm 6 joints
  and the gripper normalized to 0 closed .. 1 open), the instruction. Action: 14-d joint targets, same layout,
  at 50 Hz. Success as ACT counts it: the task's maximum reward (4) is reached; the episode then ends.
* Scripted expert (ACT's recipe, no demonstrations can be downloaded here): waypoint trajectories for the two
  grippers are planned from the object poses and run in the end-effector (mocap) version of the task; the joint
  trajectory it produces (with the gripper commands) is then replayed as joint targets in this task. With
  MuJoCo 3.3 the arms only follow the mocap targets when the joints' friction loss is zero, so it is set to zero in
  the mocap simulation only (the joint-space task is left as shipped); demos are kept only where the replay
  succeeds (``vlaforge collect aloha`` drops failed attempts).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlaforge.eval.envs.base import ENVS, EnvConfig
from vlaforge.types import OBS_STATE, TASK, RobotSpec, image_key

INSTRUCTIONS = {
    "transfer_cube": "pick up the red cube with the right arm and hand it over to the left arm",
    "insertion": "pick up the peg and the socket and insert the peg into the socket",
}
N_ROBOT_DOF = 16  # per arm: 6 joints + 2 gripper fingers


def _import_aloha() -> Any:
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported
    try:
        import gym_aloha.constants
        import gym_aloha.tasks.sim
        import gym_aloha.tasks.sim_end_effector
        import gym_aloha.utils
        from dm_control import mujoco  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError("ALOHA sim is not installed: pip install 'vlaforge[aloha]'") from e
    return gym_aloha


@ENVS.register("aloha")
@dataclass(frozen=True)
class AlohaConfig(EnvConfig):
    """ALOHA sim (gym-aloha 0.1.5): transfer_cube and insertion, the ``top`` camera, 14-d joint state and actions."""

    image_height: int = 480  # the top camera's native size (ACT / LeRobot); smaller renders faster on a CPU
    image_width: int = 640
    max_steps: int = 400  # ACT's episode length for both sim tasks (8 s at 50 Hz)

    def validate(self) -> None:
        self.check(self.image_height >= 16, "image_height", ">= 16")
        self.check(self.image_width >= 16, "image_width", ">= 16")
        self.check(self.max_steps >= 1, "max_steps", ">= 1")

    def task_names(self, spec: str | list[str]) -> list[str]:
        items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
        alias = {"all": list(INSTRUCTIONS), "aloha": list(INSTRUCTIONS), "transfer-cube": ["transfer_cube"],
                 "alohatransfercube-v0": ["transfer_cube"], "alohainsertion-v0": ["insertion"]}
        out: list[str] = []
        for item in items:
            names = [item] if item in INSTRUCTIONS else alias.get(item.lower())
            if names is None:
                raise ValueError(f"unknown ALOHA task {item!r}; expected transfer_cube, insertion or all")
            out += names
        if not out:
            raise ValueError("ALOHA: no task given (transfer_cube, insertion or all)")
        return list(dict.fromkeys(out))

    def make(self, task: str) -> AlohaEnv:
        if task not in INSTRUCTIONS:
            raise ValueError(f"unknown ALOHA task {task!r}; expected one of {sorted(INSTRUCTIONS)}")
        return AlohaEnv(self, task)


def _object_pose(ga: Any, task: str, seed: int) -> np.ndarray:
    if task == "transfer_cube":
        return np.asarray(ga.utils.sample_box_pose(seed), float)
    return np.concatenate(ga.utils.sample_insertion_pose(seed)).astype(float)


def _build(ga: Any, task: str, mocap: bool) -> tuple[Any, Any]:
    """(dm_control Environment, task) without cameras in the observation; objects placed by ``task.object_pose``."""
    from dm_control import mujoco
    from dm_control.rl import control
    from dm_control.suite import base

    joint_cls = {"transfer_cube": ga.tasks.sim.TransferCubeTask, "insertion": ga.tasks.sim.InsertionTask}[task]
    ee_cls = {"transfer_cube": ga.tasks.sim_end_effector.TransferCubeEndEffectorTask,
              "insertion": ga.tasks.sim_end_effector.InsertionEndEffectorTask}[task]
    start = ga.constants.START_ARM_POSE
    n_obj = 7 if task == "transfer_cube" else 14

    class Task(ee_cls if mocap else joint_cls):
        object_pose: np.ndarray | None = None

        def initialize_episode(self, physics: Any) -> None:
            with physics.reset_context():
                if mocap:
                    self.initialize_robots(physics)  # arms at the start pose, mocaps on the grippers
                else:
                    physics.named.data.qpos[:N_ROBOT_DOF] = start
                    np.copyto(physics.data.ctrl, start)
                physics.data.qpos[-n_obj:] = self.object_pose
            base.Task.initialize_episode(self, physics)

        def get_observation(self, physics: Any) -> dict[str, Any]:
            obs = {"qpos": self.get_qpos(physics), "env_state": self.get_env_state(physics)}
            if mocap:
                obs["mocap_left"] = np.concatenate([physics.data.mocap_pos[0], physics.data.mocap_quat[0]])
                obs["mocap_right"] = np.concatenate([physics.data.mocap_pos[1], physics.data.mocap_quat[1]])
            return obs

    xml = ("bimanual_viperx_end_effector_" if mocap else "bimanual_viperx_") + task + ".xml"
    physics = mujoco.Physics.from_xml_path(str(ga.constants.ASSETS_DIR / xml))
    if mocap:
        physics.model.dof_frictionloss[:N_ROBOT_DOF] = 0.0  # else the arms do not follow the mocap targets
    t = Task()
    env = control.Environment(physics, t, time_limit=float("inf"), control_timestep=ga.constants.DT,
                              n_sub_steps=None, flat_observation=False)
    return env, t


class AlohaEnv:
    """One ALOHA task in joint space; ``reset(seed)`` places the objects from ``seed``."""

    def __init__(self, cfg: AlohaConfig, task: str) -> None:
        self._ga = _import_aloha()
        self.cfg, self.task, self.instruction = cfg, task, INSTRUCTIONS[task]
        self._env, self._task = _build(self._ga, task, mocap=False)
        self._ee: tuple[Any, Any] | None = None  # the mocap twin, built for the expert on first use
        self.fps = round(1 / self._ga.constants.DT)
        self.max_steps = cfg.max_steps
        self.robot = RobotSpec(cameras={"top": (cfg.image_height, cfg.image_width)}, state_dim=14, action_dim=14,
                               fps=self.fps)
        self._seed = 0
        self._qpos = np.zeros(14)
        self._t = 0
        self._plan: np.ndarray | None = None
        self.max_reward = 0.0

    def observation(self) -> dict[str, Any]:
        img = self._env.physics.render(height=self.cfg.image_height, width=self.cfg.image_width, camera_id="top")
        return {image_key("top"): img, OBS_STATE: self._qpos.astype(np.float32), TASK: self.instruction}

    def reset(self, seed: int, render: bool = True) -> dict[str, Any]:
        self._seed, self._t, self._plan, self.max_reward = int(seed), 0, None, 0.0
        self._task.object_pose = _object_pose(self._ga, self.task, self._seed)
        self._qpos = np.asarray(self._env.reset().observation["qpos"], float)
        return self.observation() if render else {}

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, Any], bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (14,):
            raise ValueError(f"aloha action: expected shape (14,) (per arm 6 joints + gripper), got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"aloha action is not finite: {action}")
        ts = self._env.step(action)
        self._qpos = np.asarray(ts.observation["qpos"], float)
        self._t += 1
        reward = float(ts.reward or 0.0)
        self.max_reward = max(self.max_reward, reward)
        info = {"reward": reward, "max_reward": self.max_reward}
        return (self.observation() if render else {}), reward >= self._task.max_reward, info

    def expert_action(self) -> np.ndarray:
        if self._plan is None:
            self._plan = self.expert_plan(self._seed)
        return self._plan[min(self._t, len(self._plan) - 1)].astype(np.float32)

    def expert_plan(self, seed: int) -> np.ndarray:
        """Joint targets (max_steps, 14): ACT's waypoints run in the mocap twin, its joint trajectory recorded."""
        if self._ee is None:
            self._ee = _build(self._ga, self.task, mocap=True)
        env, task = self._ee
        task.object_pose = _object_pose(self._ga, self.task, seed)
        first = env.reset().observation
        left, right = waypoints(self.task, first["mocap_left"], first["mocap_right"], first["env_state"])
        plan = []
        for t in range(self.max_steps):
            l_cmd, r_cmd = follow(left, t), follow(right, t)
            ts = env.step(np.concatenate([l_cmd, r_cmd]))
            q = np.array(ts.observation["qpos"], float)
            q[6], q[13] = l_cmd[7], r_cmd[7]  # the gripper *commands* (0 closed .. 1 open), as ACT records them
            plan.append(q)
        return np.stack(plan)

    def close(self) -> None:
        for env in (self._env, self._ee[0] if self._ee else None):
            if env is not None:
                env.physics.free()
        self._ee = None


# ----------------------------------------------------------------------------------------------- scripted expert
Waypoint = tuple[int, np.ndarray, np.ndarray, float]  # (step, xyz, quaternion wxyz, gripper 0 closed .. 1 open)


def _quat(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    half = math.radians(degrees) / 2
    return np.array([math.cos(half), *(math.sin(half) * np.asarray(axis, float))])


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def waypoints(task: str, left0: np.ndarray, right0: np.ndarray, objects: np.ndarray
              ) -> tuple[list[Waypoint], list[Waypoint]]:
    """The two grippers' waypoints (ACT's scripted policies: steps, offsets and grasp angles as published, but for
    the insertion depth, see below)."""
    lp, lq, rp, rq = left0[:3], left0[3:], right0[:3], right0[3:]
    v = lambda *x: np.array(x, float)  # noqa: E731
    if task == "transfer_cube":
        cube = objects[:3]
        pick = _qmul(rq, _quat((0, 1, 0), -60))  # right gripper tilted to grasp from above
        meet, meet_q = v(0, 0.5, 0.25), _quat((1, 0, 0), 90)  # the hand-over point; left gripper turned to take it
        away, level = meet + v(-0.1, 0, -0.02), v(1, 0, 0, 0)
        left = [(0, lp, lq, 0.0), (100, away, meet_q, 1.0), (260, meet + v(0.02, 0, -0.02), meet_q, 1.0),
                (310, meet + v(0.02, 0, -0.02), meet_q, 0.0), (360, away, level, 0.0), (400, away, level, 0.0)]
        right = [(0, rp, rq, 0.0), (90, cube + v(0, 0, 0.08), pick, 1.0), (130, cube + v(0, 0, -0.015), pick, 1.0),
                 (170, cube + v(0, 0, -0.015), pick, 0.0), (200, meet + v(0.05, 0, 0), pick, 0.0),
                 (220, meet, pick, 0.0), (310, meet, pick, 1.0), (360, meet + v(0.1, 0, 0), pick, 1.0),
                 (400, meet + v(0.1, 0, 0), pick, 1.0)]
        return left, right
    peg, socket = objects[:3], objects[7:10]
    pick_r, pick_l = _qmul(rq, _quat((0, 1, 0), -60)), _qmul(rq, _quat((0, 1, 0), 60))
    meet, lift = v(0, 0.5, 0.15), 0.00715

    # ACT stops the grippers 0.05 m either side of the meeting point; with MuJoCo 3.3 that leaves the peg touching
    # the socket without reaching the pin (reward 3), so they are brought to 0.03 m (seeds 100000-9: 2 -> 5 of 10)
    inserted = 0.03

    def arm(start: np.ndarray, start_q: np.ndarray, obj: np.ndarray, q: np.ndarray, side: float, dz: float):
        return [(0, start, start_q, 0.0), (120, obj + v(0, 0, 0.08), q, 1.0), (170, obj + v(0, 0, -0.03), q, 1.0),
                (220, obj + v(0, 0, -0.03), q, 0.0), (285, meet + v(0.1 * side, 0, dz), q, 0.0),
                (340, meet + v(inserted * side, 0, dz), q, 0.0), (400, meet + v(inserted * side, 0, dz), q, 0.0)]

    return arm(lp, lq, socket, pick_l, -1.0, 0.0), arm(rp, rq, peg, pick_r, 1.0, lift)


def follow(path: list[Waypoint], t: int) -> np.ndarray:
    """The mocap command at step ``t``: linear interpolation between waypoints (xyz, quaternion, gripper)."""
    if t >= path[-1][0]:
        _, p, q, g = path[-1]
        return np.concatenate([p, q, [g]])
    k = max(i for i, w in enumerate(path) if w[0] <= t)
    (t0, p0, q0, g0), (t1, p1, q1, g1) = path[k], path[k + 1]
    f = (t - t0) / (t1 - t0)
    return np.concatenate([p0 + f * (p1 - p0), q0 + f * (q1 - q0), [g0 + f * (g1 - g0)]])
