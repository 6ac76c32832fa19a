"""Mixtures with per-dataset statistics and unnorm_key, per-dimension normalization masks, feature checks where
data meets a checkpoint, and train-only augmentation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from helpers import IMG, tiny_policy_config, write_dataset
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.mixture import MixtureDataset
from vlaforge.data.stats import StatsError
from vlaforge.policy import VLAPolicy
from vlaforge.processors.base import AUG_SEED
from vlaforge.processors.image import ColorJitter, RandomResizedCrop, RandomRotation, RandomShift
from vlaforge.processors.normalize import Normalize
from vlaforge.train.config import DataConfig, OptimConfig, TrainConfig
from vlaforge.train.data import augmentation
from vlaforge.train.trainer import train
from vlaforge.types import ACTION, DATASET, OBS_STATE, FeatureMismatchError, image_key


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    write_dataset(root / "alpha")
    # same features, different action range: actions scaled so the two datasets' statistics differ
    write_dataset(root / "beta", extra_values=lambda ep, n: {
        ACTION: (np.random.default_rng(ep + 7).normal(0, 0.5, (n, 4)) * 3 + 5).astype(np.float32)})
    return root


def test_mixture_frequencies_match_the_weights(two_datasets, tmp_path):
    write_dataset(tmp_path / "gamma")
    readers = {n: LeRobotDataset(p) for n, p in (("alpha", two_datasets / "alpha"), ("beta", two_datasets / "beta"),
                                                  ("gamma", tmp_path / "gamma"))}
    weights = {"alpha": 0.6, "beta": 0.3, "gamma": 0.1}
    mix = MixtureDataset(readers, weights)
    n = 20_000
    draws = np.array([mix.draw(seed=3, position=p) for p in range(n)])
    names = np.array([mix.names[mix.locate(int(i))[0]] for i in draws])
    for name, w in weights.items():
        freq = (names == name).mean()
        bound = 4.5 * np.sqrt(w * (1 - w) / n)  # 4.5 sigma of a binomial proportion: fails ~1e-5 of the time
        assert abs(freq - w) < bound, (name, freq, w)
    # every frame of a dataset is reachable, and each item says where it came from
    alpha_frames = {int(i) for i in draws if mix.locate(int(i))[0] == 0}
    assert alpha_frames == set(range(len(readers["alpha"])))
    assert mix[int(draws[0])][DATASET] == names[0]
    # resumability: draws are a pure function of (seed, position)
    assert [mix.draw(3, p) for p in range(50, 60)] == list(draws[50:60])
    balanced = MixtureDataset(readers, {"alpha": 1, "beta": 1, "gamma": 1}, balance=True)
    np.testing.assert_allclose(balanced.probabilities, [1 / 3] * 3)  # equal sizes -> equal shares
    with pytest.raises(ValueError, match="weight of 'beta'.*got -1"):
        MixtureDataset(readers, {"alpha": 1, "beta": -1, "gamma": 1})


def test_mixture_refuses_datasets_with_different_features(two_datasets, tmp_path):
    write_dataset(tmp_path / "other", cams=("front", "side"), action_dim=6)
    with pytest.raises(FeatureMismatchError) as e:
        MixtureDataset({"alpha": LeRobotDataset(two_datasets / "alpha"), "other": LeRobotDataset(tmp_path / "other")})
    msg = str(e.value)
    assert "other" in msg and "wrist" in msg and "side" in msg and "action" in msg


def test_per_dataset_normalization_and_unnorm_key(two_datasets, tmp_path):
    cfg = TrainConfig(policy=tiny_policy_config("mlp"), out=str(tmp_path / "run"), steps=2, batch_size=4,
                      save_every=2, data=DataConfig(path=str(two_datasets), shift_pad=0,
                                                    mixture={str(two_datasets / "alpha"): 1.0,
                                                             str(two_datasets / "beta"): 3.0}))
    ckpt = train(cfg, show_progress=False)
    policy = VLAPolicy.from_pretrained(ckpt)
    assert policy.unnorm_key == "beta"  # the heaviest dataset by default
    assert set(policy.dataset_stats) == {"alpha", "beta"}
    stats = {n: LeRobotDataset(two_datasets / n).meta.stats for n in ("alpha", "beta")}
    # training normalizes every item with its own dataset's statistics
    pipe = policy.train_pipeline()
    for name in ("alpha", "beta"):
        item = dict(LeRobotDataset(two_datasets / name, chunk=4)[3])
        item[DATASET] = name
        ref = Normalize.from_stats(policy.cfg.normalization, stats[name])({ACTION: item[ACTION].copy()})[ACTION]
        np.testing.assert_allclose(pipe(item)[ACTION], ref, rtol=1e-6)
    # the outputs un-normalize with the chosen dataset; another key can be picked at load time
    zero = np.zeros((1, 4, 4), dtype=np.float32)
    beta_mid = policy.outputs({ACTION: zero[0]})[ACTION]
    alpha = VLAPolicy.from_pretrained(ckpt, unnorm_key="alpha")
    alpha_mid = alpha.outputs({ACTION: zero[0]})[ACTION]
    for mid, name in ((beta_mid, "beta"), (alpha_mid, "alpha")):
        np.testing.assert_allclose(mid[0], (stats[name][ACTION]["q01"] + stats[name][ACTION]["q99"]) / 2, rtol=1e-5)
    with pytest.raises(KeyError, match=r"unnorm_key: expected one of \['alpha', 'beta'\], got 'gamma'"):
        VLAPolicy.from_pretrained(ckpt, unnorm_key="gamma")


def test_normalize_skip_leaves_the_gripper_in_robot_units(two_datasets):
    ds = LeRobotDataset(two_datasets / "beta", chunk=4)
    cfg = tiny_policy_config("mlp").replace(normalize_skip={ACTION: (-1,)}).with_robot(ds.meta.robot_spec())
    policy = VLAPolicy(cfg)
    policy.make_pipelines(ds.meta.stats, ds.meta.robot_spec())
    raw = ds[2][ACTION]
    out = policy.train_pipeline()(dict(ds[2]))[ACTION]
    np.testing.assert_array_equal(out[:, -1], raw[:, -1])
    assert not np.allclose(out[:, :-1], raw[:, :-1])
    back = policy.outputs({ACTION: out})[ACTION]
    np.testing.assert_allclose(back[:, -1], raw[:, -1])
    with pytest.raises(Exception, match=r"normalize_skip.action.*\[-4, 4\).*\[7\]"):
        VLAPolicy(tiny_policy_config("mlp").replace(normalize_skip={ACTION: (7,)}).with_robot(
            ds.meta.robot_spec())).make_pipelines(ds.meta.stats, ds.meta.robot_spec())


def test_checkpoint_refuses_renamed_camera_other_action_dim_and_missing_stats(dataset, tmp_path):
    root, _ = dataset
    ds = LeRobotDataset(root)
    policy = VLAPolicy(tiny_policy_config().with_robot(ds.meta.robot_spec()))
    policy.make_pipelines(ds.meta.stats, ds.meta.robot_spec())
    ckpt = policy.save_pretrained(tmp_path / "ckpt")
    write_dataset(tmp_path / "renamed", cams=("front", "gripper"))
    write_dataset(tmp_path / "wider", action_dim=7)
    nostats = tmp_path / "nostats"
    shutil.copytree(root, nostats)
    (nostats / "meta/stats.json").unlink()

    def finetune(data):
        cfg = TrainConfig(policy=tiny_policy_config(), data=DataConfig(path=str(data)), init_from=str(ckpt),
                          out=str(tmp_path / f"run_{data.name}"), steps=1, batch_size=2,
                          optim=OptimConfig(warmup_steps=0))
        return train(cfg, show_progress=False)

    with pytest.raises(FeatureMismatchError) as e:
        finetune(tmp_path / "renamed")
    assert "wrist" in str(e.value) and "gripper" in str(e.value)
    with pytest.raises(FeatureMismatchError, match=r"action.*4.*7"):
        finetune(tmp_path / "wider")
    with pytest.raises(StatsError, match="no meta/stats.json; run `vlaforge stats"):
        finetune(nostats)


def test_augmentation_is_seeded_shape_preserving_and_never_in_the_saved_pipeline(dataset):
    root, _ = dataset
    ds = LeRobotDataset(root, chunk=4)
    cams = ["front", "wrist"]
    steps = augmentation(DataConfig(crop_scale=0.8, rotate_deg=10, shift_pad=2, color_jitter=0.3), cams)
    assert [type(s) for s in steps] == [RandomResizedCrop, RandomRotation, RandomShift, ColorJitter]
    item = dict(ds[5])
    outs = []
    for seed in (1, 1, 2):
        x = {**item, AUG_SEED: seed}
        for s in steps:
            x = s(x)
        outs.append(x[image_key("front")])
    assert outs[0].shape == item[image_key("front")].shape == (IMG, IMG, 3) and outs[0].dtype == np.uint8
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2]) and not np.array_equal(outs[0], item[image_key("front")])
    # a history window (T, H, W, 3) gets one draw for all its frames
    hist = np.stack([item[image_key("front")]] * 3)
    y = ColorJitter(cameras=["front"])({image_key("front"): hist, AUG_SEED: 5})[image_key("front")]
    assert y.shape == hist.shape and all(np.array_equal(y[0], y[t]) for t in range(3))
    policy = VLAPolicy(tiny_policy_config().with_robot(ds.meta.robot_spec()))
    policy.make_pipelines(ds.meta.stats, ds.meta.robot_spec())
    aug_types = (RandomResizedCrop, RandomRotation, RandomShift, ColorJitter)
    assert not any(isinstance(s, aug_types) for s in policy.inputs.steps)
    assert sum(isinstance(s, aug_types) for s in policy.train_pipeline(steps).steps) == 4
    assert OBS_STATE in policy.cfg.normalization


def test_named_rlds_mixture_converts_trains_and_switches_unnorm_key(tmp_path):
    from pathlib import Path

    from vlaforge.cli.main import main

    fixtures = Path(__file__).parents[1] / "fixtures" / "rlds"
    for name, std in (("bridge_dataset", "bridge"), ("fractal20220817_data", "fractal")):
        assert main(["convert", "rlds", str(fixtures / name), f"--standardize={std}", "--out",
                     str(tmp_path / "data" / name)]) == 0
    assert main(["train", "quickstart_dit", "--data", str(tmp_path / "data"), "--data.mixture_name=bridge_fractal",
                 "--out", str(tmp_path / "run"), "--steps=2", "--batch_size=4", "--backbone.image_size=32",
                 "--save_every=2", "--data.unnorm_key=fractal20220817_data", "--policy.env_state_loss=0"]) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last"
    policy = VLAPolicy.from_pretrained(ckpt)
    assert policy.unnorm_key == "fractal20220817_data" and policy.robot.cameras["primary"] == (16, 20)
    bridge = VLAPolicy.from_pretrained(ckpt, unnorm_key="bridge_dataset")
    assert bridge.robot.cameras["primary"] == (16, 16)  # that dataset's camera size is what the pipeline checks
    obs = LeRobotDataset(tmp_path / "data" / "bridge_dataset")[0]
    images = {"primary": obs[image_key("primary")]}
    assert bridge.predict_action(images, obs["task"], obs[OBS_STATE], seed=0).shape == (8, 7)
    with pytest.raises(FeatureMismatchError, match=r"expected shape \(16, 20, 3\), got \(16, 16, 3\)"):
        policy.predict_action(images, obs["task"], obs[OBS_STATE], seed=0)
