"""The environment-state auxiliary loss: a policy learns to predict the simulator's object and goal positions from
its images (training only), and never reads them when it acts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import tiny_policy_config, write_dataset
from vlaforge.config import ConfigError
from vlaforge.data import open_reader
from vlaforge.policy import VLAPolicy
from vlaforge.processors.base import collate
from vlaforge.train.config import TrainConfig
from vlaforge.train.trainer import build_reader_and_policy
from vlaforge.types import OBS_ENV_STATE, TASK, FeatureSpec, image_key

ENV_DIM = 3


def _env_values(ep: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + ep)
    goal = rng.uniform([-0.1, 0.8, 0.05], [0.1, 0.9, 0.3])  # one goal per episode, in metres
    return {OBS_ENV_STATE: np.repeat(goal[None], n, 0).astype(np.float32)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("env_state")
    write_dataset(root, extra={OBS_ENV_STATE: FeatureSpec("float32", (ENV_DIM,))}, extra_values=_env_values)
    return root


def _policy(data, weight: float = 0.5) -> tuple[VLAPolicy, object]:
    torch.manual_seed(0)
    reader = open_reader(data, chunk=4)
    robot = reader.meta.robot_spec()
    cfg = tiny_policy_config("mlp").with_robot(robot).replace(env_state_loss=weight, env_state_dim=ENV_DIM)
    policy = VLAPolicy(cfg)
    policy.make_pipelines(reader.meta.stats, robot)
    return policy, reader


def test_the_loss_adds_the_weighted_mse_of_the_normalized_state(data):
    policy, reader = _policy(data, weight=0.5)
    policy.eval()
    idx = [0, 5, 9, 20]
    raw = np.stack([reader[i][OBS_ENV_STATE] for i in idx])
    batch = collate([policy.train_pipeline()(reader[i]) for i in idx])
    out = policy.loss(batch)
    # the reference: mean/std normalization from the dataset's statistics, by hand
    st = reader.meta.stats[OBS_ENV_STATE]
    target = (raw - np.asarray(st["mean"])) / np.asarray(st["std"])
    with torch.no_grad():
        ctx = policy.encode(batch)
        head_only = float(policy.head.loss(ctx, batch)["loss"])
    w1, b1 = policy.env_state_head[0].weight, policy.env_state_head[0].bias
    w2, b2 = policy.env_state_head[2].weight, policy.env_state_head[2].bias
    with torch.no_grad():
        pred = torch.nn.functional.gelu(ctx.pooled @ w1.T + b1) @ w2.T + b2
        mse = float(((pred - torch.as_tensor(target, dtype=pred.dtype)) ** 2).mean())
    assert float(out["env_state_loss"]) == pytest.approx(mse, rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(head_only + 0.5 * mse, rel=1e-5)


def test_a_few_steps_lower_it_and_acting_never_reads_the_state(data, tmp_path):
    policy, reader = _policy(data, weight=1.0)
    batch = collate([policy.train_pipeline()(reader[i]) for i in range(0, 24, 2)])
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        out = policy.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["env_state_loss"]))
    assert losses[-1] < 0.5 * losses[0]
    policy.eval()
    item = reader[3]
    obs = {k: item[k] for k in (image_key("front"), image_key("wrist"), "observation.state", TASK)}
    plain = policy.predict_actions([obs], seed=0)
    told = policy.predict_actions([{**obs, OBS_ENV_STATE: np.array([9.0, -9.0, 9.0], np.float32)}], seed=0)
    np.testing.assert_array_equal(plain, told)
    # the auxiliary head travels with the checkpoint
    policy.save_pretrained(tmp_path / "ckpt")
    again = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert again.cfg.env_state_loss == 1.0 and again.cfg.env_state_dim == ENV_DIM
    torch.testing.assert_close(again.env_state_head[2].weight, policy.env_state_head[2].weight, rtol=0, atol=0)
    np.testing.assert_array_equal(again.predict_actions([obs], seed=0), plain)


def test_training_sizes_it_from_the_data_and_refuses_data_without_it(data, tmp_path):
    cfg = TrainConfig(policy=tiny_policy_config("mlp").replace(env_state_loss=1.0))
    _, policy = build_reader_and_policy(cfg.replace(data=cfg.data.replace(path=str(data))))
    assert policy.cfg.env_state_dim == ENV_DIM and policy.env_state_head[2].out_features == ENV_DIM
    plain = tmp_path / "plain"
    write_dataset(plain)
    with pytest.raises(ConfigError, match=r"policy\.env_state_loss.*observation\.environment_state.*plain"):
        build_reader_and_policy(cfg.replace(data=cfg.data.replace(path=str(plain))))
    with pytest.raises(ConfigError, match=r"policy\.env_state_dim"):
        VLAPolicy(tiny_policy_config("mlp").with_robot(open_reader(plain).meta.robot_spec())
                  .replace(env_state_loss=1.0))
    with pytest.raises(ConfigError, match=r"policy\.env_state_loss.*in-sequence"):
        VLAPolicy(tiny_policy_config("tokens").with_robot(open_reader(plain).meta.robot_spec())
                  .replace(env_state_loss=1.0, env_state_dim=ENV_DIM))
