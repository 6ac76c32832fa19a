"""How the quick-start vision tower keeps spatial detail (issue 15's ablations): patch size, pixel shuffle and a
convolutional stem are options of the SmolVLM backbone, saved with the checkpoint."""

from __future__ import annotations

import pytest
import torch

from helpers import IMG, tiny_policy_config
from vlaforge.backbones.base import BACKBONES
from vlaforge.config import ConfigError
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.policy import VLAPolicy


def _backbone(**options):
    return BACKBONES.get("smolvlm")(size="tiny", image_size=IMG, **options).backbone_class()(
        BACKBONES.get("smolvlm")(size="tiny", image_size=IMG, **options), ["front"], 4)


@pytest.mark.parametrize(("options", "tokens"), [({}, 1), ({"patch_size": 8}, 4), ({"patch_size": 4}, 16),
                                                  ({"patch_size": 8, "pixel_shuffle": 1}, 16)])
def test_tokens_per_view_follow_patch_size_and_pixel_shuffle(options, tokens):
    backbone = _backbone(**options)
    out = backbone.embed_images(torch.rand(2, 3, IMG, IMG))
    assert out.shape == (2, tokens, backbone.hidden_size)


def test_the_conv_stem_replaces_the_patch_convolution_and_sees_every_pixel():
    backbone = _backbone(patch_size=8, vision_stem="conv")
    stem = backbone.model.model.vision_model.embeddings.patch_embedding
    convs = [m for m in stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)]  # log2(8) stride-2 3x3 convolutions + 1x1
    x = torch.rand(1, 3, IMG, IMG, requires_grad=True)
    backbone.embed_images(x)[0, 0].sum().backward()  # the first token depends on its own 8x8 patch and beyond
    assert x.grad[0, :, :8, :8].abs().sum() > 0 and x.grad[0, :, 8:12, :8].abs().sum() > 0


def test_a_conv_stem_policy_round_trips_through_a_checkpoint(dataset, tmp_path):
    reader = LeRobotDataset(dataset[0], chunk=4)
    cfg = tiny_policy_config("mlp")
    backbone = BACKBONES.get("smolvlm")(size="tiny", image_size=IMG, patch_size=8, vision_stem="conv")
    policy = VLAPolicy(cfg.replace(backbone=backbone).with_robot(reader.meta.robot_spec()))
    policy.make_pipelines(reader.meta.stats, reader.meta.robot_spec())
    path = policy.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(path)
    assert loaded.cfg.backbone.vision_stem == "conv" and loaded.cfg.backbone.patch_size == 8
    obs = [{k: v for k, v in reader[3].items() if k.startswith("observation.")} | {"task": "open the drawer"}]
    obs[0] = {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in obs[0].items()}
    policy.eval()
    torch.testing.assert_close(loaded.predict_actions(obs), policy.predict_actions(obs), rtol=0, atol=0)


@pytest.mark.parametrize(("options", "field"), [({"vision_stem": "conv", "patch_size": 6}, "patch_size"),
                                                ({"patch_size": 12}, "patch_size"),
                                                ({"vision_stem": "fpn"}, "vision_stem"),
                                                ({"pixel_shuffle": 0}, "pixel_shuffle")])
def test_impossible_vision_options_name_the_field(options, field):
    with pytest.raises(ConfigError, match=f"backbone.{field}"):
        _backbone(**options)


def test_pretrained_weights_fix_the_vision_tower(tmp_path):
    with pytest.raises(ConfigError, match="backbone.patch_size"):
        BACKBONES.get("smolvlm")(pretrained=str(tmp_path), patch_size=8)
