"""Parallel evaluation: envs in worker processes give the same episodes, batches and table as envs in-process;
a worker that fails, hangs or dies ends the run with one line naming the task and seed, and leaves no process."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vlaforge.eval.envs import ENVS
from vlaforge.eval.runner import EvalConfig, run_eval
from vlaforge.eval.workers import ProcessEnvPool
from vlaforge.types import OBS_STATE, RobotSpec, image_key

TASKS = "drawer-close"


class TinyRandomPolicy:
    """A fixed random map from (state, mean colour of each view) to a chunk of 4 actions; keeps every batch."""

    def __init__(self, action_dim: int = 4) -> None:
        self.robot = RobotSpec(cameras={"scene": (32, 32), "wrist": (32, 32)}, state_dim=4, action_dim=4, fps=80)
        self.chunk, self.exec_steps = 4, 2
        rng = np.random.default_rng(0)
        self.w = rng.normal(0, 2.0, (4 + 6, self.chunk * action_dim))
        self.action_dim = action_dim
        self.batches: list[np.ndarray] = []

    def infer_batch(self, observations):
        x = np.stack([np.concatenate([o[OBS_STATE], o[image_key("scene")].mean((0, 1)) / 255,
                                      o[image_key("wrist")].mean((0, 1)) / 255]) for o in observations])
        self.batches.append(x)
        return np.tanh(x @ self.w).reshape(len(x), self.chunk, self.action_dim).astype(np.float32)


def _eval(tmp_path, workers: int, policy: TinyRandomPolicy) -> dict:
    env = ENVS.get("metaworld")(image_size=32, max_steps=10)
    cfg = EvalConfig(tasks=TASKS, episodes=3, parallel_envs=2, workers=workers, videos=1, env=env,
                     out=str(tmp_path / f"w{workers}"))
    run_eval(cfg, show_progress=False, policy=policy)
    return json.loads((tmp_path / f"w{workers}" / "eval.json").read_text())


def test_two_workers_give_the_same_episodes_batches_and_table_as_one(tmp_path):
    one, two = TinyRandomPolicy(), TinyRandomPolicy()
    a, b = _eval(tmp_path, 1, one), _eval(tmp_path, 2, two)
    assert a["episodes"] == b["episodes"] and a["tasks"] == b["tasks"] and a["expert"] == b["expert"]
    assert [(e["task"], e["seed"]) for e in b["episodes"]] == [
        ("drawer-close-v3", s) for s in (100_000, 100_001, 100_002)]
    # the policy saw the same observations in the same batches (3 episodes on 2 slots: one slot restarts)
    assert len(one.batches) == len(two.batches) > 5
    for x, y in zip(one.batches, two.batches, strict=True):
        np.testing.assert_array_equal(x, y)
    assert {len(x) for x in two.batches} >= {1, 2}
    # the expert ran on the same seeds in the workers; videos are written from the workers' frames too
    assert [(e["task"], e["seed"]) for e in b["expert"]["episodes"]] == [(e["task"], e["seed"]) for e in b["episodes"]]
    videos = sorted(p.name for p in (tmp_path / "w2" / "videos").iterdir())
    assert len(videos) == 1 and videos[0].startswith("drawer-close-v3_seed100000_")


def test_failing_hanging_and_dead_workers_are_one_line_errors_and_leave_no_process():
    pool = ProcessEnvPool(ENVS.get("metaworld")(image_size=32), n=2, workers=2, timeout=60)
    procs = list(pool.procs)
    try:
        info = pool.make("reach-v3")
        assert info.robot.action_dim == 4 and info.max_steps > 0
        obs = pool.reset([0, 1], [7, 8])
        assert obs[0][image_key("scene")].shape == (32, 32, 3)
        with pytest.raises(RuntimeError, match=r"^eval worker 1 \(task reach-v3, seed 8\): step failed: ValueError: "
                                               r"metaworld action: expected shape \(4,\)") as e:
            pool.step([1], [np.zeros(3)])
        assert "\n" not in str(e.value)
        pool.timeout = 1.5
        os.kill(procs[0].pid, signal.SIGSTOP)
        with pytest.raises(RuntimeError, match=r"^eval worker 0 did not answer step within 2 s \(task reach-v3, "
                                               r"seed 7\)"):
            pool.step([0], [np.zeros(4)])
        os.kill(procs[0].pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"^eval worker 0 died \(exit code -9\) during step \(task reach-v3"):
            pool.step([0], [np.zeros(4)])
    finally:
        pool.close(graceful=False)
    assert not any(p.is_alive() for p in procs) and pool.procs == []


def test_workers_is_validated():
    with pytest.raises(ValueError, match="workers"):
        EvalConfig(workers=0).validate()
