"""PushT adapter (gym-pusht): observation/action conventions, max-coverage success, the scripted oracle."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("gym_pusht")

from vlaforge.eval.envs import ENVS
from vlaforge.eval.envs.pusht import INSTRUCTION, tee_vertices
from vlaforge.types import OBS_STATE, TASK, RobotSpec, image_key


@pytest.fixture(scope="module")
def env():
    e = ENVS.get("pusht")(image_size=32).make("pusht")
    yield e
    e.close()


def test_observation_and_action_conventions(env):
    assert env.robot == RobotSpec(cameras={"top": (32, 32)}, state_dim=2, action_dim=2, fps=10)
    assert env.max_steps == 300
    a, b, c = env.reset(3), env.reset(3), env.reset(4)
    assert set(a) == {image_key("top"), OBS_STATE, TASK} and a[TASK] == INSTRUCTION
    assert a[image_key("top")].shape == (32, 32, 3) and a[image_key("top")].dtype == np.uint8
    assert a[OBS_STATE].dtype == np.float32 and a[OBS_STATE].shape == (2,)  # the agent's (x, y) only
    np.testing.assert_array_equal(a[image_key("top")], b[image_key("top")])
    assert not np.array_equal(a[OBS_STATE], c[OBS_STATE])
    target = np.array([256.0, 100.0])
    for _ in range(20):  # a 2-d target position: the agent's PD controller goes there
        obs, _, _ = env.step(target)
    np.testing.assert_allclose(obs[OBS_STATE], target, atol=2.0)
    assert env.reset(5, render=False) == {}
    with pytest.raises(ValueError, match=r"expected shape \(2,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="not finite"):
        env.step(np.array([1.0, np.nan]))
    cfg = ENVS.get("pusht")()
    assert cfg.task_names("pusht") == ["pusht"]
    with pytest.raises(ValueError, match="one task"):
        cfg.task_names("mt10")


def test_success_is_the_maximum_coverage_over_the_episode(env):
    import shapely.geometry as sg

    env.reset(0, render=False)
    sim = env._env
    block = sg.MultiPolygon([sg.Polygon([sim.block.local_to_world(v) for v in s.get_vertices()])
                             for s in sim.block.shapes])
    assert sg.Polygon(tee_vertices(np.array(env._info["block_pose"]))).symmetric_difference(block).area < 1e-6
    sim.agent.position = (40.0, 40.0)
    sim.block.angle = float(sim.goal_pose[2])  # (pymunk turns about the centre of gravity: angle first)
    sim.block.position = (float(sim.goal_pose[0]) + 1.0, float(sim.goal_pose[1]))
    _, success, info = env.step(np.array([40.0, 40.0]), render=False)
    assert success and 0.95 <= info["coverage"] < 1.0 and info["max_coverage"] == info["coverage"]
    sim.block.position = (100.0, 400.0)  # the block leaves the goal: the episode still counts as a success
    _, success, info = env.step(np.array([40.0, 40.0]), render=False)
    assert success and info["coverage"] < 0.1 and info["max_coverage"] >= 0.95
    env.reset(1, render=False)
    assert env.max_coverage == 0.0


@pytest.mark.parametrize("seed", [100_000, 100_002])
def test_scripted_oracle_pushes_the_t_into_place(env, seed):
    env.reset(seed, render=False)
    success, steps = False, 0
    while not success and steps < env.max_steps:
        action = env.expert_action()
        assert action.shape == (2,) and action.dtype == np.float32
        _, success, info = env.step(action, render=False)
        steps += 1
    assert success and info["max_coverage"] >= 0.95, (seed, steps, info["max_coverage"])


class _PushTowards:
    """Every chunk: 4 steps to a fixed target (the rollout's batching, with nothing learned)."""

    robot = RobotSpec(cameras={"top": (32, 32)}, state_dim=2, action_dim=2, fps=10)
    chunk, exec_steps = 4, 4

    def infer_batch(self, observations):
        return np.tile(np.array([300.0, 330.0], np.float32), (len(observations), self.chunk, 1))


def test_evaluation_reports_the_mean_max_coverage_as_the_score(env):
    from vlaforge.eval.rollout import evaluate, summarize

    cfg = ENVS.get("pusht")(image_size=32, max_steps=25)
    results = evaluate(_PushTowards(), cfg, ["pusht"], 2, parallel_envs=2, show_progress=False)
    expected = []
    for seed in (100_000, 100_001):  # the same episodes by hand: the score is the max coverage the env reported
        env.reset(seed, render=False)
        best = 0.0
        for _ in range(25):
            _, _, info = env.step(np.array([300.0, 330.0]), render=False)
            best = max(best, info["coverage"])
            assert info["score"] == info["max_coverage"]
        expected.append(best)
    assert [r.score for r in results] == pytest.approx(expected, abs=1e-12) and max(expected) > 0
    assert summarize(results)["tasks"]["pusht"]["mean_score"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert "mean_score" not in summarize([replace(r, score=None) for r in results])["tasks"]["pusht"]
