"""ALOHA sim adapter (gym-aloha): observation/action conventions and the scripted bimanual expert (ACT's recipe)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_aloha")

from vlaforge.eval.envs import ENVS
from vlaforge.eval.envs.aloha import INSTRUCTIONS, follow, waypoints
from vlaforge.types import OBS_STATE, TASK, RobotSpec, image_key


@pytest.fixture(scope="module")
def cube():
    e = ENVS.get("aloha")(image_height=24, image_width=32).make("transfer_cube")
    yield e
    e.close()


def test_observation_and_action_conventions(cube):
    assert cube.robot == RobotSpec(cameras={"top": (24, 32)}, state_dim=14, action_dim=14, fps=50)
    assert cube.max_steps == 400
    a, b = cube.reset(7), cube.reset(7)
    assert set(a) == {image_key("top"), OBS_STATE, TASK} and a[TASK] == INSTRUCTIONS["transfer_cube"]
    assert a[image_key("top")].shape == (24, 32, 3) and a[image_key("top")].dtype == np.uint8
    assert a[OBS_STATE].shape == (14,) and a[OBS_STATE].dtype == np.float32
    np.testing.assert_array_equal(a[image_key("top")], b[image_key("top")])  # same seed, same cube
    c = cube.reset(8)
    assert not np.array_equal(a[image_key("top")], c[image_key("top")])
    # joint targets: holding the start pose keeps the arms there; grippers are normalized (0 closed .. 1 open)
    obs, success, info = cube.step(a[OBS_STATE])
    np.testing.assert_allclose(obs[OBS_STATE][[0, 1, 2, 7, 8, 9]], a[OBS_STATE][[0, 1, 2, 7, 8, 9]], atol=0.05)
    assert not success and info["reward"] == 0.0
    with pytest.raises(ValueError, match=r"expected shape \(14,\)"):
        cube.step(np.zeros(7))
    with pytest.raises(ValueError, match="not finite"):
        cube.step(np.full(14, np.nan))
    cfg = ENVS.get("aloha")()
    assert cfg.task_names("all") == ["transfer_cube", "insertion"]
    assert cfg.task_names("AlohaInsertion-v0, transfer_cube") == ["insertion", "transfer_cube"]
    with pytest.raises(ValueError, match="unknown ALOHA task 'cube'"):
        cfg.task_names("cube")


def test_waypoints_interpolate_linearly():
    _, right = waypoints("transfer_cube", np.r_[0, 0, 0, 1, 0, 0, 0], np.r_[1, 1, 1, 1, 0, 0, 0],
                         np.r_[0.1, 0.5, 0.05, 1, 0, 0, 0])
    assert [w[0] for w in right] == [0, 90, 130, 170, 200, 220, 310, 360, 400]
    mid = follow(right, 45)  # halfway from the start to above the cube, gripper half open
    np.testing.assert_allclose(mid[:3], (np.r_[1, 1, 1] + np.r_[0.1, 0.5, 0.13]) / 2)
    assert mid[7] == pytest.approx(0.5) and follow(right, 999)[7] == 1.0
    np.testing.assert_allclose(np.linalg.norm(right[1][2]), 1.0)  # a unit quaternion (tilted by 60 degrees)


@pytest.mark.parametrize(("task", "seed"), [("transfer_cube", 100_000), ("insertion", 100_001)])
def test_scripted_expert_succeeds_through_the_adapter(cube, task, seed):
    env = cube if task == "transfer_cube" else ENVS.get("aloha")(image_height=24, image_width=32).make(task)
    try:
        env.reset(seed, render=False)
        success, steps = False, 0
        while not success and steps < env.max_steps:
            action = env.expert_action()
            assert action.shape == (14,) and action.dtype == np.float32
            _, success, info = env.step(action, render=False)
            steps += 1
        assert success and info["max_reward"] == 4.0, (task, seed, steps, info)
    finally:
        if env is not cube:
            env.close()
