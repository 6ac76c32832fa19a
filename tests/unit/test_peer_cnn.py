"""bench/peer_cnn.py, the plain CNN baseline of issue 15: output shapes, the evaluator's interface, and learning.

The bench is a standalone script (bench/ is not a package), so it is imported by path, as bench/train.py imports
bench/data.py.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import TASKS, load_bench, write_dataset
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.processors.base import collate
from vlaforge.types import ACTION, OBS_ENV_STATE, OBS_STATE, TASK, FeatureSpec, image_key


@pytest.fixture(scope="module")
def peer():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small is fastest on one thread (and immune to a busy machine)
    yield load_bench("peer_cnn")
    torch.set_num_threads(threads)


def _tiny(peer, reader: LeRobotDataset, chunk: int = 4):
    inputs, outputs, robot = peer.make_pipelines(reader)
    cfg = peer.PeerConfig(cameras=tuple(robot.cameras), state_dim=robot.state_dim, action_dim=robot.action_dim,
                          tasks=tuple(reader.meta.tasks), chunk=chunk, channels=(8, 8, 16, 16), keypoints=8,
                          embed=16, hidden=64)
    return peer.PeerCNN(cfg), inputs, outputs, robot


def test_model_and_policy_shapes(peer, dataset):
    root, episodes = dataset
    reader = LeRobotDataset(root, chunk=4)
    torch.manual_seed(0)
    model, inputs, outputs, robot = _tiny(peer, reader)
    batch = collate([inputs(reader[i]) for i in (0, 5, 20)])
    assert model(batch).shape == (3, 4, 4)
    assert set(model.task_ids) == {"open the drawer", "press the button from the top"}

    policy = peer.PeerPolicy(model, inputs, outputs, robot, exec_steps=2)
    obs = {image_key(c): episodes[1][image_key(c)][0] for c in ("front", "wrist")}
    obs.update({OBS_STATE: episodes[1][OBS_STATE][0], TASK: episodes[1][TASK]})
    chunks = policy.infer_batch([obs, obs])
    assert chunks.shape == (2, 4, 4) and chunks.dtype == np.float32
    assert policy.infer(obs)["actions"].shape == (4, 4)
    assert (policy.chunk, policy.exec_steps, policy.robot) == (4, 2, robot)
    with pytest.raises(ValueError, match="not in the training data's task table"):
        policy.infer_batch([{**obs, TASK: "open the window"}])


def test_a_few_steps_lower_the_loss(peer, tmp_path):
    """On the fixture with learnable actions (one per instruction, as a scripted expert's mean), the L1 on every
    frame, un-augmented, falls by more than half in 30 steps."""
    targets = {"open the drawer": [0.6, -0.4, 0.2, 0.8], "press the button from the top": [-0.5, 0.3, -0.7, -0.2]}
    rng = np.random.default_rng(0)
    write_dataset(tmp_path, extra_values=lambda i, n: {
        ACTION: (np.tile(targets[TASKS[i]], (n, 1)) + rng.normal(0, 0.02, (n, 4))).astype(np.float32)})
    reader = LeRobotDataset(tmp_path, chunk=4)
    torch.manual_seed(0)
    model, inputs, _, _ = _tiny(peer, reader)
    every_frame = collate([inputs(reader[i]) for i in range(len(reader))])
    with torch.no_grad():
        before = model.loss(every_frame).item()
    opts = peer.TrainOptions(minutes=1.0, steps=30, batch_size=8, lr=3e-3, warmup=5, shift_pad=2)
    out = peer.train_peer(model, reader, inputs, opts, show_progress=False)
    with torch.no_grad():
        after = model.eval().loss(every_frame).item()
    assert out["steps"] == out["planned_steps"] == 30 and out["schedule_completed"]
    assert after < 0.5 * before, (before, after)
    peer.save_weights(model, tmp_path / "peer.safetensors", out)  # what run() writes before it evaluates
    torch.manual_seed(1)
    again, _, _, _ = _tiny(peer, reader)
    assert peer.load_weights(again, tmp_path / "peer.safetensors") == out  # --weights: the record comes back too
    with torch.no_grad():
        torch.testing.assert_close(again.eval().loss(every_frame), model.loss(every_frame), rtol=0, atol=0)
    other = peer.PeerCNN(replace(again.cfg, hidden=32))
    with pytest.raises(SystemExit, match="written for another model"):
        peer.load_weights(other, tmp_path / "peer.safetensors")


def test_the_env_state_auxiliary_adds_its_weighted_mse(peer, tmp_path):
    """``--env-state-loss``: the peer may regress the data's object / goal positions (normalised) as well."""
    write_dataset(tmp_path, extra={OBS_ENV_STATE: FeatureSpec("float32", (3,))},
                  extra_values=lambda i, n: {OBS_ENV_STATE: np.full((n, 3), i, np.float32)})
    reader = LeRobotDataset(tmp_path, chunk=4)
    inputs, _, robot = peer.make_pipelines(reader, env_state=True)
    cfg = peer.PeerConfig(cameras=tuple(robot.cameras), state_dim=robot.state_dim, action_dim=robot.action_dim,
                          tasks=tuple(reader.meta.tasks), channels=(8, 8, 16, 16), keypoints=8, embed=16, hidden=64,
                          env_state_dim=3)
    torch.manual_seed(0)
    model = peer.PeerCNN(cfg).eval()
    idx = (0, 9, 20)
    batch = collate([inputs(reader[i]) for i in idx])
    st = reader.meta.stats[OBS_ENV_STATE]
    target = (np.stack([reader[i][OBS_ENV_STATE] for i in idx]) - np.asarray(st["mean"])) / np.asarray(st["std"])
    with torch.no_grad():
        mse = ((model.env_state(model.features(batch)) - torch.as_tensor(target).float()) ** 2).mean()
        torch.testing.assert_close(model.loss(batch, 0.5), model.loss(batch) + 0.5 * mse)


def test_a_budget_is_planned_from_the_measured_step_time_and_kept(peer, dataset):
    root, _ = dataset
    reader = LeRobotDataset(root, chunk=4)
    model, inputs, _, _ = _tiny(peer, reader)
    opts = peer.TrainOptions(minutes=0.03, batch_size=4, warmup=2, probe=4, replans=3)
    out = peer.train_peer(model, reader, inputs, opts, show_progress=False)
    assert out["plans"][0][0] == 3 + 4  # after the untimed steps and the probe
    assert all(total >= step for step, total in out["plans"]) and out["steps"] <= out["planned_steps"]
    assert out["minutes"] < 0.03 + 0.02


def test_plan_ends_the_schedule_inside_the_budget(peer):
    assert peer.plan_steps(done=23, elapsed_s=30.0, step_s=0.5, budget_s=130.0, margin=1.0) == 223
    assert peer.plan_steps(done=23, elapsed_s=200.0, step_s=0.5, budget_s=130.0) == 23  # already over: stop


def test_schedule_replanned_mid_run_warms_up_then_decays_to_zero_at_the_end(peer):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    lrs = []
    schedule = peer.make_schedule(opt, warmup=4, total=10**9)  # while the step time is measured
    for step in range(20):
        if step == 6:
            schedule = peer.make_schedule(opt, warmup=4, total=20, done=6)  # the plan
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))  # then only down
    assert 0 < lrs[-1] < 0.02 and opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
