"""``backbone.pretrained=DIR``: real weights and processor files written by transformers' save_pretrained."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from transformers import SmolVLMForConditionalGeneration

from helpers import IMG
from vlaforge.backbones.base import BACKBONES
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig, VLAPolicy
from vlaforge.types import FeatureMismatchError, image_key


def _hf_dir(tmp_path):
    """A directory exactly as transformers writes it: model, tokenizer and image processor."""
    from transformers.models.smolvlm import SmolVLMImageProcessorPil

    built = BACKBONES.get("smolvlm")(size="tiny", image_size=IMG).build(["front", "wrist"], 4)
    path = tmp_path / "hf-smolvlm"
    built.model.save_pretrained(path)
    built.tokenizer.save_pretrained(path)
    SmolVLMImageProcessorPil(image_mean=[0.4, 0.4, 0.4], image_std=[0.3, 0.3, 0.3]).save_pretrained(path)
    return path, built


def test_pretrained_dir_loads_the_saved_weights_and_processor_numbers(tmp_path):
    path, built = _hf_dir(tmp_path)
    reference = SmolVLMForConditionalGeneration.from_pretrained(path)
    bb = BACKBONES.get("smolvlm")(pretrained=str(path)).build(["front", "wrist"], 4)
    a, b = reference.state_dict(), bb.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert bb.image_mean == (0.4, 0.4, 0.4) and bb.image_std == (0.3, 0.3, 0.3)
    assert bb.image_size == IMG and len(bb.tokenizer) == len(built.tokenizer)


def test_checkpoint_of_a_pretrained_policy_loads_without_the_source_dir(tmp_path, dataset):
    path, _ = _hf_dir(tmp_path)
    root, _ = dataset
    reader = LeRobotDataset(root, chunk=4)
    robot = reader.meta.robot_spec()
    cfg = PolicyConfig(backbone=BACKBONES.get("smolvlm")(pretrained=str(path)), head=HEADS.get("tokens")(),
                       chunk=4).with_robot(robot)
    policy = VLAPolicy(cfg)
    policy.make_pipelines(reader.meta.stats, robot)
    policy.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(path)  # the robot machine does not have the original weights directory
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    item = reader[2]
    images = {c: item[image_key(c)] for c in ("front", "wrist")}
    x = policy.predict_action(images, item["task"], item["observation.state"])
    y = loaded.predict_action(images, item["task"], item["observation.state"])
    np.testing.assert_array_equal(x, y)


def test_checkpoint_refuses_a_dataset_with_other_features(tmp_path, dataset):
    from helpers import tiny_policy_config, write_dataset

    root, _ = dataset
    reader = LeRobotDataset(root, chunk=4)

    policy = VLAPolicy(tiny_policy_config().with_robot(reader.meta.robot_spec()))
    policy.make_pipelines(reader.meta.stats, reader.meta.robot_spec())
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    other = tmp_path / "other"
    write_dataset(other, cams=("front", "gripper"), action_dim=7)
    with pytest.raises(FeatureMismatchError) as e:
        loaded.check_compatible(LeRobotDataset(other).meta.robot_spec(), "dataset")
    msg = str(e.value)
    assert "camera 'wrist': in checkpoint, missing from dataset" in msg
    assert "camera 'gripper': in dataset, unknown to checkpoint" in msg
    assert "action dim: checkpoint 4, dataset 7" in msg
    # fine-tuning from the checkpoint on that dataset is refused the same way, before any training
    from vlaforge.train.config import DataConfig, TrainConfig
    from vlaforge.train.trainer import train

    with pytest.raises(FeatureMismatchError, match="camera 'gripper'"):
        train(TrainConfig(data=DataConfig(path=str(other)), init_from=str(tmp_path / "ckpt"),
                          out=str(tmp_path / "ft"), steps=1), show_progress=False)
