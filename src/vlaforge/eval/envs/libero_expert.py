"""A scripted LIBERO expert: reads the privileged simulator state and drives the OSC_POSE controller.

Pick-and-place goals (``(in OBJ REGION)``, ``(on OBJ TARGET)``: every libero_object and libero_spatial task, several
goal-suite tasks, and one after the other the libero_10 tasks made of several) run approach -> descend -> grasp ->
lift -> carry -> lower -> release -> retreat. Objects wider than the open gripper (bowls, plates) are taken by the
rim on the gripper's side; elongated ones are grasped across their narrow side (the gripper turns about the
vertical). Positions come from MuJoCo (body poses and the collision geoms' bounding boxes), the gripper is held
pointing down, and every phase has a step budget so a stuck phase moves on instead of stalling the episode. Goals it
does not handle yet (open, close, turn on) make building it raise ``NotImplementedError`` naming the goal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlaforge.eval.envs.libero import GRIPPER_CLOSE, GRIPPER_OPEN, quat2axisangle

POS_SCALE, ROT_SCALE = 0.05, 0.5  # OSC_POSE: action 1.0 moves the target by 5 cm / 0.5 rad
GRIPPER_SPAN = 0.075  # objects wider than this (half-extent > SPAN / 2) are grasped by the rim
HOVER, CLEARANCE = 0.10, 0.03  # height above the object before descending; margin over the goal when carrying


def _aabb(model: Any, data: Any, body_id: int, frame: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (lo, hi) of the collision geoms under ``body_id``'s root body, in the world frame or, with
    ``frame`` (the body's rotation), in the body's own axes around its origin."""
    root = model.body_rootid[body_id]
    geoms = np.flatnonzero((model.body_rootid[model.geom_bodyid] == root)
                           & ((model.geom_contype != 0) | (model.geom_conaffinity != 0)))
    rot_f = np.eye(3) if frame is None else frame
    origin = np.zeros(3) if frame is None else data.xpos[body_id]
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for g in geoms:
        rot = rot_f.T @ data.geom_xmat[g].reshape(3, 3)
        centre = rot_f.T @ (data.geom_xpos[g] - origin) + rot @ model.geom_aabb[g, :3]
        half = np.abs(rot) @ model.geom_aabb[g, 3:]
        lo, hi = np.minimum(lo, centre - half), np.maximum(hi, centre + half)
    return lo, hi


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class LiberoExpert:
    """One episode's expert (built lazily after each reset by :meth:`LiberoEnv.expert_action`)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.domain = env._env.env  # the BDDL robosuite env
        goals = [[str(x).lower() for x in g] for g in self.domain.parsed_problem["goal_state"]]
        if not goals or any(g[0] not in ("in", "on") or len(g) != 3 for g in goals):
            raise NotImplementedError(f"libero expert: goal {goals} of {env.task} is not a sequence of "
                                      f"pick-and-places")
        self.goals = [(g[1], g[2]) for g in goals]  # (object, where), done one after the other
        self.sim = env.sim
        self.m, self.d = self.sim.model._model, self.sim.data._data
        self.rot_start = self._eef_rot()
        self._start(0)

    def _start(self, i: int) -> None:
        """Set up pick-and-place ``i`` of the goal."""
        self.index = i
        self.obj, self.goal = self.goals[i]
        self.obj_body = self.m.body(self.domain.objects_dict[self.obj].root_body).id
        self.rot0 = self.rot_start
        self.phase, self.t = "above", 0
        self.grip = GRIPPER_OPEN
        self.offset = np.zeros(3)  # grasp point relative to the object's centre
        self.hold = np.zeros(3)  # eef position minus the object's lowest point, once grasped
        lo, hi = _aabb(self.m, self.d, self.obj_body)
        half = (hi - lo)[:2] / 2
        if min(half) > GRIPPER_SPAN / 2:  # a bowl: pinch the rim wall (fingers close along y) on the gripper's side
            side = 1.0 if self.eef[1] > (lo[1] + hi[1]) / 2 else -1.0
            self.offset[1] = side * (half[1] - 0.012)
            self.grasp_depth = 0.02
        else:
            self.grasp_depth = min(0.03, (hi[2] - lo[2]) / 2)
            self.rot0 = _rot_z(self._yaw_to_narrow_side()) @ self.rot0
        self.target = self.eef.copy()

    # -- state ------------------------------------------------------------------------------------------------
    @property
    def eef(self) -> np.ndarray:
        return np.array(self.env.raw["robot0_eef_pos"], dtype=np.float64)

    def _eef_rot(self) -> np.ndarray:
        site = self.m.site(self.domain.robots[0].controller.eef_name).id
        return self.d.site_xmat[site].reshape(3, 3).copy()

    def _obj_pos(self) -> np.ndarray:
        """Centre of the object's collision box in x, y; its body origin in z."""
        lo, hi = _aabb(self.m, self.d, self.obj_body)
        return np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, self.d.xpos[self.obj_body][2]])

    def _yaw_to_narrow_side(self) -> float:
        """Yaw (about world z) that turns the fingers' closing axis onto the object's narrower horizontal side."""
        body_rot = self.d.xmat[self.obj_body].reshape(3, 3)
        lo, hi = _aabb(self.m, self.d, self.obj_body, frame=body_rot)
        ext = hi - lo
        if abs(ext[0] - ext[1]) < 0.01:  # round enough
            return 0.0
        narrow = body_rot[:, 0] if ext[0] < ext[1] else body_rot[:, 1]
        fingers = self.rot0[:, 0]  # the Panda's fingers close along the grip site's x axis
        angle = np.arctan2(narrow[1], narrow[0]) - np.arctan2(fingers[1], fingers[0])
        return float((angle + np.pi / 2) % np.pi - np.pi / 2)  # the closing axis has no sign

    def _goal_top(self) -> tuple[np.ndarray, float]:
        """(xy centre, top z) of the goal: a site region (inside a basket, on a stove) or an object."""
        if self.goal in self.domain.objects_dict or self.goal in self.domain.fixtures_dict:
            body = self.m.body(self.domain.get_object(self.goal).root_body).id
            _, hi = _aabb(self.m, self.d, body)
            return self.d.xpos[body][:2].copy(), float(hi[2])
        site = self.m.site(self.goal).id
        pos = self.d.site_xpos[site]
        if "contain" in self.goal:  # inside a container: drop from above its rim
            _, hi = _aabb(self.m, self.d, self.m.site_bodyid[site])
            return pos[:2].copy(), float(hi[2])
        return pos[:2].copy(), float(pos[2])

    # -- control ----------------------------------------------------------------------------------------------
    def _move(self, target: np.ndarray, limit: float = 1.0) -> np.ndarray:
        pos = np.clip((target - self.eef) / POS_SCALE, -limit, limit)
        err = self.rot0 @ self._eef_rot().T
        quat = _mat2quat(err)
        rot = np.clip(quat2axisangle(quat) / ROT_SCALE, -1.0, 1.0)
        return np.concatenate([pos, rot, [self.grip]]).astype(np.float32)

    def _next(self, phase: str) -> None:
        self.phase, self.t = phase, 0

    def act(self) -> np.ndarray:
        self.t += 1
        eef, obj = self.eef, self._obj_pos()
        grasp = obj + self.offset
        lo, hi = _aabb(self.m, self.d, self.obj_body)
        if self.phase == "above":
            self.target = np.array([grasp[0], grasp[1], max(hi[2] + HOVER, eef[2])])
            far = self.target[2] > eef[2] + 0.02 or np.linalg.norm(self.target[:2] - eef[:2]) > 0.01
            if far and self.t < 80:
                return self._move(self.target)
            self._next("descend")
        if self.phase == "descend":
            self.target = np.array([grasp[0], grasp[1], hi[2] - self.grasp_depth])
            if np.linalg.norm(self.target - eef) > 0.008 and self.t < 60:
                return self._move(self.target)
            self._next("close")
        if self.phase == "close":
            self.grip = GRIPPER_CLOSE
            if self.t < 12:
                return self._move(self.target)
            self.hold = eef - np.array([obj[0], obj[1], lo[2]])
            self._next("lift")
        goal_xy, goal_top = self._goal_top()
        carry_z = goal_top + CLEARANCE + self.hold[2] + 0.05
        if self.phase == "lift":
            self.target = np.array([eef[0], eef[1], carry_z])
            if self.target[2] - eef[2] > 0.02 and self.t < 60:
                return self._move(self.target)
            self._next("carry")
        if self.phase == "carry":
            self.target = np.array([goal_xy[0] + self.hold[0], goal_xy[1] + self.hold[1], carry_z])
            if np.linalg.norm(self.target[:2] - eef[:2]) > 0.01 and self.t < 100:
                return self._move(self.target, limit=0.6)
            self._next("lower")
        if self.phase == "lower":
            self.target = np.array([goal_xy[0] + self.hold[0], goal_xy[1] + self.hold[1],
                                    goal_top + CLEARANCE + self.hold[2]])
            if eef[2] - self.target[2] > 0.01 and self.t < 60:
                return self._move(self.target)
            self._next("release")
        if self.phase == "release":
            self.grip = GRIPPER_OPEN
            if self.t < 10:
                return self._move(self.target)
            self._next("retreat")
            self.target = self.target + np.array([0.0, 0.0, 0.08])
        if self.target[2] - eef[2] < 0.02 and self.index + 1 < len(self.goals):
            self._start(self.index + 1)
            return self.act()
        return self._move(self.target)


def _mat2quat(rot: np.ndarray) -> np.ndarray:
    """Rotation matrix -> (x, y, z, w) quaternion with w >= 0."""
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(rot, dtype=np.float64).reshape(-1))  # (w, x, y, z)
    q = q if q[0] >= 0 else -q
    return np.array([q[1], q[2], q[3], q[0]])
