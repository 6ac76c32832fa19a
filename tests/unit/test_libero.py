"""LIBERO adapter: the standard protocol's bookkeeping and the observation / action conventions on a fixed state."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("libero.libero", reason="the LIBERO extra is not installed (pip install 'vlaforge[libero]')")

from vlaforge.eval.envs import ENVS
from vlaforge.eval.envs.libero import DUMMY_ACTION, MAX_STEPS, quat2axisangle, suite_of
from vlaforge.eval.rollout import EVAL_SEED_START
from vlaforge.types import OBS_STATE, TASK, image_key

SIZE = 32
OBJECT_0 = "pick_up_the_alphabet_soup_and_place_it_in_the_basket"


@pytest.fixture(scope="module")
def env():
    e = ENVS.get("libero")(image_size=SIZE).make(OBJECT_0)
    yield e
    e.close()


def test_task_specs_suites_and_max_steps():
    cfg = ENVS.get("libero")()
    sizes = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}
    for suite, n in sizes.items():
        names = cfg.task_names(suite)
        assert len(names) == n and all(suite_of(t) == suite for t in names)
    assert cfg.task_names("libero_object:0, libero_goal:1") == [OBJECT_0, "put_the_bowl_on_the_stove"]
    assert cfg.task_names([OBJECT_0]) == [OBJECT_0]
    # the suite's step budget of openpi / OpenVLA-OFT, settle steps not counted; an explicit one wins
    assert MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                         "libero_90": 400}
    assert {s: cfg.max_steps_of(cfg.task_names(s)[0]) for s in sizes} == MAX_STEPS
    assert ENVS.get("libero")(max_steps=7).max_steps_of(OBJECT_0) == 7
    with pytest.raises(ValueError, match="unknown LIBERO task 'nope'"):
        cfg.task_names("nope")
    with pytest.raises(ValueError, match="libero_goal:0..9"):
        cfg.task_names("libero_goal:10")
    with pytest.raises(ValueError, match="init"):
        ENVS.get("libero")(init="random").validate()


def test_quat2axisangle_against_the_definition():
    for axis, angle in [((0, 0, 1), 0.7), ((1, 1, 0), 2.5), ((0.2, -1, 0.4), math.pi - 0.1)]:
        u = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
        quat = np.concatenate([u * math.sin(angle / 2), [math.cos(angle / 2)]])  # (x, y, z, w)
        np.testing.assert_allclose(quat2axisangle(quat), u * angle, atol=1e-9)
    np.testing.assert_array_equal(quat2axisangle(np.array([0.0, 0, 0, 1])), np.zeros(3))


def test_fixed_initial_states_in_order_then_settle_steps(env):
    assert EVAL_SEED_START % len(env.init_states) == 0  # the evaluation's episode i starts from state i
    assert len(env.init_states) == 50 and env.max_steps == 280
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    inner_step = env._env.step

    def recording_step(action):
        calls.append((np.array(action), env._env.get_sim_state().copy()))
        return inner_step(action)

    env._env.step = recording_step
    try:
        rng_before = np.random.get_state()[1].copy()
        env.reset(EVAL_SEED_START + 53, render=False)
    finally:
        env._env.step = inner_step
    assert env.init_index == 3
    # below the evaluation seeds (collect starts at 0) the default init samples fresh scenes instead
    assert env.uses_fixed_state(EVAL_SEED_START) and not env.uses_fixed_state(0)
    # the state set before the first settle step is the task's fixed initial state 3, exactly
    np.testing.assert_array_equal(calls[0][1], env.init_states[3])
    # ten no-op steps with the gripper open, none counted as an episode step
    assert len(calls) == 10 and all(np.array_equal(a, DUMMY_ACTION) for a, _ in calls)
    np.testing.assert_array_equal(DUMMY_ACTION, [0, 0, 0, 0, 0, 0, -1])
    # LIBERO's samplers draw from NumPy's global RNG: the adapter reseeds it and gives the caller's state back
    np.testing.assert_array_equal(np.random.get_state()[1], rng_before)


def test_observation_conventions_on_a_fixed_state(env):
    obs = env.reset(EVAL_SEED_START)
    assert set(obs) == {image_key("image"), image_key("wrist_image"), OBS_STATE, TASK}
    assert obs[TASK] == "pick up the alphabet soup and place it in the basket"
    # images: robosuite's own camera sensors (OpenGL convention: upside down), rotated 180 degrees
    domain = env._env.env
    for role, cam in (("image", "agentview"), ("wrist_image", "robot0_eye_in_hand")):
        sensors, _ = domain._create_camera_sensors(cam, SIZE, SIZE, False, None)
        raw = sensors[0]({})
        assert obs[image_key(role)].shape == (SIZE, SIZE, 3) and obs[image_key(role)].dtype == np.uint8
        np.testing.assert_array_equal(obs[image_key(role)], raw[::-1, ::-1])
        assert not np.array_equal(raw, raw[::-1, ::-1])
    # proprio: eef position (the grip site), eef axis-angle (the hand body's quaternion), the two finger joints
    sim = env.sim
    m, d = sim.model._model, sim.data._data
    state = obs[OBS_STATE]
    assert state.shape == (8,) and state.dtype == np.float32
    np.testing.assert_allclose(state[:3], d.site_xpos[m.site("gripper0_grip_site").id], atol=1e-4)
    wxyz = d.xquat[m.body(domain.robots[0].robot_model.eef_name).id]
    xyzw = np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])
    angle = 2 * math.acos(np.clip(xyzw[3], -1, 1))
    expected = xyzw[:3] / math.sin(angle / 2) * angle
    np.testing.assert_allclose(state[3:6], expected, atol=1e-3)  # robosuite caches the obs a substep early
    fingers = [d.qpos[m.jnt_qposadr[m.joint(f"gripper0_finger_joint{i}").id]] for i in (1, 2)]
    np.testing.assert_allclose(state[6:], fingers, atol=1e-4)
    assert state[6] > 0.03 and state[7] < -0.03  # open after the settle steps
    # the same seed gives the same scene (fixed state + reseeded fixtures)
    np.testing.assert_array_equal(env.reset(EVAL_SEED_START)[image_key("image")], obs[image_key("image")])


def test_gripper_sign_and_action_checks(env):
    env.reset(EVAL_SEED_START + 1, render=False)
    opening = lambda: env.raw["robot0_gripper_qpos"][0] - env.raw["robot0_gripper_qpos"][1]  # noqa: E731
    wide = opening()
    for _ in range(8):
        env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]), render=False)  # +1: close
    closed = opening()
    for _ in range(8):
        env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]), render=False)  # -1: open
    assert closed < wide - 0.03 and opening() > closed + 0.03
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="not finite"):
        env.step(np.array([0, np.nan, 0, 0, 0, 0, 1]))


def test_scripted_expert_succeeds_on_a_fixed_state(env):
    env.reset(EVAL_SEED_START, render=False)
    success, steps = False, 0
    while not success and steps < env.max_steps:
        _, success, _ = env.step(env.expert_action(), render=False)
        steps += 1
    assert success and steps < 200
    assert env.check_success()
