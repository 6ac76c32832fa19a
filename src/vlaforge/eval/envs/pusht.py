"""PushT (Diffusion Policy's planar pushing task, ``gym-pusht``): one top-down image + the agent's position.

* Observation: ``observation.images.top`` (uint8, ``image_size`` square, rendered by the package's pygame
  renderer), ``observation.state`` = the agent's (x, y) in pixels of the 512 x 512 arena, the instruction.
* Action: 2-d target position of the agent (pixels, clipped to [0, 512]); the package's PD controller follows it
  at 10 Hz.
* Success as Diffusion Policy scores PushT: the *maximum* coverage of the goal zone by the T over the episode;
  an episode succeeds once that reaches ``success_coverage`` (0.95) — ``step`` then reports success and the
  rollout ends. ``info`` carries ``coverage``, ``max_coverage`` and ``score`` (= ``max_coverage``: the evaluation
  reports its mean over the episodes, Diffusion Policy's PushT score, beside the success rate).
* :class:`PushTOracle` is a scripted expert that reads the block and goal poses (``gym-pusht`` ships only mouse
  teleoperation): it picks the point of the T's outline where a push best moves the block towards the goal pose,
  walks around the block to it, and pushes; the closer the block is, the shorter the pushes.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlaforge.eval.envs.base import ENVS, EnvConfig
from vlaforge.types import OBS_STATE, TASK, RobotSpec, image_key

TASK_NAME = "pusht"
INSTRUCTION = "push the T-shaped block onto the green T"
ARENA = 512.0
AGENT_RADIUS = 15.0
# The T of gym-pusht (scale 30) in its body frame: a 120 x 30 bar on top of a 30 x 90 stem, centre of gravity at
# (0, 45). Block and goal poses are (x, y, angle) of the body origin, so the T covers the goal when the poses agree.
TEE_COG = np.array([0.0, 45.0])
TEE_RADIUS_OF_GYRATION_SQ = 3000.0  # the package's moment of inertia over its mass (1)
# Outline pieces a round pusher can reach: (start, end, outward normal) in the body frame; concave corners are
# kept at a pusher radius + margin away.
_EDGES = (
    ((-60.0, 0.0), (60.0, 0.0), (0.0, -1.0)),  # top of the bar
    ((-60.0, 0.0), (-60.0, 30.0), (-1.0, 0.0)),  # bar, left end
    ((60.0, 0.0), (60.0, 30.0), (1.0, 0.0)),  # bar, right end
    ((-60.0, 30.0), (-36.0, 30.0), (0.0, 1.0)),  # under the bar, left
    ((36.0, 30.0), (60.0, 30.0), (0.0, 1.0)),  # under the bar, right
    ((-15.0, 51.0), (-15.0, 120.0), (-1.0, 0.0)),  # stem, left
    ((15.0, 51.0), (15.0, 120.0), (1.0, 0.0)),  # stem, right
    ((-15.0, 120.0), (15.0, 120.0), (0.0, 1.0)),  # stem, bottom
)
TEE_OUTLINE = np.array([(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], float)


def _import_pusht() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
            from gym_pusht.envs.pusht import PushTEnv as _Env
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError("PushT is not installed: pip install 'vlaforge[pusht]'") from e
    return _Env


@ENVS.register("pusht")
@dataclass(frozen=True)
class PushTConfig(EnvConfig):
    """PushT (gym-pusht 0.1.8): one top-down camera, the agent's 2-d position, 2-d target-position actions."""

    image_size: int = 96
    max_steps: int = 300  # Diffusion Policy / LeRobot evaluate 300 steps (30 s at 10 Hz)
    success_coverage: float = 0.95

    def validate(self) -> None:
        self.check(self.image_size >= 16, "image_size", ">= 16")
        self.check(self.max_steps >= 1, "max_steps", ">= 1")
        self.check(0.0 < self.success_coverage <= 1.0, "success_coverage", "in (0, 1]")

    def task_names(self, spec: str | list[str]) -> list[str]:
        items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
        bad = [s for s in items if s.lower() != TASK_NAME]
        if bad or not items:
            raise ValueError(f"PushT has one task, 'pusht'; got {spec!r}")
        return [TASK_NAME]

    def make(self, task: str) -> PushTEnv:
        if task != TASK_NAME:
            raise ValueError(f"PushT has one task, 'pusht'; got {task!r}")
        return PushTEnv(self)


class PushTEnv:
    """The PushT adapter; ``reset(seed)`` draws the package's random agent and block poses from ``seed``."""

    task, instruction = TASK_NAME, INSTRUCTION

    def __init__(self, cfg: PushTConfig) -> None:
        # obs_type="state": the adapter renders only when asked (render=False for expert-only runs)
        self.cfg = cfg
        self._env = _import_pusht()(obs_type="state", observation_width=cfg.image_size,
                                    observation_height=cfg.image_size)
        self.fps = int(self._env.metadata["render_fps"])
        self.max_steps = cfg.max_steps
        s = cfg.image_size
        self.robot = RobotSpec(cameras={"top": (s, s)}, state_dim=2, action_dim=2, fps=self.fps)
        self._oracle = PushTOracle()
        self._info: dict[str, Any] = {}
        self.max_coverage = 0.0

    def observation(self) -> dict[str, Any]:
        return {image_key("top"): self._env._render(), OBS_STATE: np.asarray(self._info["pos_agent"], np.float32),
                TASK: self.instruction}

    def reset(self, seed: int, render: bool = True) -> dict[str, Any]:
        _, self._info = self._env.reset(seed=int(seed))
        self._oracle.reset()
        self.max_coverage = 0.0
        return self.observation() if render else {}

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, Any], bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (2,):
            raise ValueError(f"pusht action: expected shape (2,) (target x, y in pixels), got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"pusht action is not finite: {action}")
        _, _, _, _, self._info = self._env.step(np.clip(action, 0.0, ARENA))
        self.max_coverage = max(self.max_coverage, float(self._info["coverage"]))
        info = {**self._info, "max_coverage": self.max_coverage, "score": self.max_coverage}
        return (self.observation() if render else {}), self.max_coverage >= self.cfg.success_coverage, info

    def expert_action(self) -> np.ndarray:
        i = self._info
        return self._oracle.act(i["pos_agent"], i["block_pose"], i["goal_pose"]).astype(np.float32)

    def close(self) -> None:
        self._env.close()


# ----------------------------------------------------------------------------------------------- scripted oracle
def _rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def tee_vertices(pose: np.ndarray) -> np.ndarray:
    """The T's outline in the arena for a block (or goal) pose as gym-pusht reports it."""
    return pose[:2] + TEE_OUTLINE @ _rot(pose[2]).T


def _cog(pose: np.ndarray) -> np.ndarray:
    return pose[:2] + _rot(pose[2]) @ TEE_COG


def _contacts(step: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    points, normals = [], []
    for a, b, n in _EDGES:
        a, b = np.array(a), np.array(b)
        k = max(2, int(np.linalg.norm(b - a) / step) + 1)
        for t in np.linspace(0.1, 0.9, k):
            points.append(a + t * (b - a))
            normals.append(n)
    return np.array(points), np.array(normals, float)


class PushTOracle:
    """Scripted PushT expert from the block, goal and agent poses (no images).

    Each step: the desired block motion is the pose error (translation of the centre of gravity, and rotation
    scaled by the radius of gyration). A push along the inward normal at outline point ``c`` moves a free block
    by ``-n`` and turns it by ``r x (-n) / rho^2``; the point whose motion best matches the desired one is
    chosen (kept while it stays nearly as good), the agent walks around the block to a point just outside it
    (shortest path around the grown outline) and then pushes by a distance proportional to the error.
    """

    def __init__(self, gain: float = 1.5, max_push: float = 60.0, stand_off: float = 6.0) -> None:
        self.gain, self.max_push, self.stand_off = gain, max_push, stand_off
        self._points, self._normals = _contacts()
        self._current: int | None = None

    def reset(self) -> None:
        self._current = None

    def _choose(self, block: np.ndarray, desired: np.ndarray) -> tuple[int, float]:
        rot = _rot(block[2])
        r = (self._points - TEE_COG) @ rot.T  # lever arms from the centre of gravity
        push = -(self._normals @ rot.T)  # inward
        turn = (r[:, 0] * push[:, 1] - r[:, 1] * push[:, 0]) / math.sqrt(TEE_RADIUS_OF_GYRATION_SQ)
        twist = np.concatenate([push, turn[:, None]], axis=1)
        score = twist @ desired / (np.linalg.norm(twist, axis=1) * np.linalg.norm(desired) + 1e-9)
        stage = _cog(block) + r + (self._normals @ rot.T) * (AGENT_RADIUS + self.stand_off)
        reachable = np.all((stage > AGENT_RADIUS + 9) & (stage < ARENA - AGENT_RADIUS - 9), axis=1)
        score = np.where(reachable, score, -2.0)
        best = int(np.argmax(score))
        if self._current is not None and score[self._current] > max(0.2, score[best] - 0.15):
            best = self._current
        return best, float(score[best])

    def act(self, agent: np.ndarray, block_pose: np.ndarray, goal_pose: np.ndarray) -> np.ndarray:
        agent, block = np.asarray(agent, float), np.asarray(block_pose, float)
        goal = np.asarray(goal_pose, float)
        err = np.array([*(_cog(goal) - _cog(block)), _wrap(goal[2] - block[2]) * math.sqrt(TEE_RADIUS_OF_GYRATION_SQ)])
        i, _ = self._choose(block, err)
        self._current = i
        rot = _rot(block[2])
        c = block[:2] + rot @ self._points[i]
        n = rot @ self._normals[i]
        offset = agent - c
        along = float(offset @ n)
        lateral = float(np.linalg.norm(offset - along * n))
        if lateral < 3.0 and AGENT_RADIUS - 4.0 <= along <= AGENT_RADIUS + self.stand_off + 6.0:
            depth = float(np.clip(self.gain * np.linalg.norm(err), 0.5, self.max_push))
            return c + n * (AGENT_RADIUS - depth)
        return self._path(agent, block, c + n * (AGENT_RADIUS + self.stand_off))

    def _path(self, agent: np.ndarray, block: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The first waypoint of the shortest path from ``agent`` to ``goal`` around the block."""
        import shapely.geometry as sg

        tee = sg.Polygon(tee_vertices(block))
        blocked = tee.buffer(AGENT_RADIUS + 1.0, join_style="mitre")
        corners = np.array(tee.buffer(AGENT_RADIUS + self.stand_off + 2.0, join_style="mitre").exterior.coords)[:-1]
        start = agent
        if blocked.contains(sg.Point(agent)):  # in contact: step straight out first
            ring = tee.buffer(AGENT_RADIUS + self.stand_off, join_style="mitre").exterior
            start = np.array(ring.interpolate(ring.project(sg.Point(agent))).coords[0])
            if np.linalg.norm(start - agent) > 1.0:
                return start
        nodes = [start, goal, *corners]
        free = lambda a, b: not blocked.intersects(sg.LineString([a, b])) or np.allclose(a, b)  # noqa: E731
        # Dijkstra over the visibility graph (a dozen nodes)
        dist, prev, todo = {0: 0.0}, {}, set(range(len(nodes)))
        while todo:
            u = min((k for k in todo if k in dist), key=dist.get, default=None)
            if u is None or u == 1:
                break
            todo.discard(u)
            for v in todo:
                if free(nodes[u], nodes[v]):
                    d = dist[u] + float(np.linalg.norm(nodes[u] - nodes[v]))
                    if d < dist.get(v, math.inf):
                        dist[v], prev[v] = d, u
        if 1 not in prev:
            return goal  # no free path found (e.g. the block against a wall): head there anyway
        v = 1
        while prev[v] != 0:
            v = prev[v]
        return nodes[v]
