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
from vlaforge.processors import collate


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


def test_spatial_keypoints_are_the_expected_coordinates_of_each_map():
    """A hand-made 3 x 3 grid: map 0 peaks at column 2, row 0 (x = 1, y = -1), map 1 is flat (the grid's centre)."""
    from vlaforge.backbones.base import SpatialKeypoints

    kp = SpatialKeypoints(channels=2, k=2, dim=4)
    with torch.no_grad():
        kp.logits.weight.copy_(torch.eye(2))
        kp.logits.bias.zero_()
        kp.log_temp.fill_(-5.0)  # temperature e^-5: the softmax is nearly an argmax
        kp.proj.weight.copy_(torch.eye(4))
        kp.proj.bias.zero_()
    grid = torch.zeros(1, 9, 2)
    grid[0, 2, 0] = 1.0  # cell (row 0, column 2)
    torch.testing.assert_close(kp(grid), torch.tensor([[1.0, -1.0, 0.0, 0.0]]), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="square grid"):
        kp(torch.zeros(1, 8, 2))


def test_keypoints_add_one_token_per_view_that_follows_the_image(dataset, tmp_path):
    """backbone.keypoints=K: one more prefix token per camera, read from the patch grid before the pixel shuffle;
    moving an object in one camera changes that camera's keypoint token; the option survives a checkpoint."""
    reader = LeRobotDataset(dataset[0], chunk=4)
    cfg = tiny_policy_config("mlp")
    policies = []
    for k in (0, 8):
        backbone = BACKBONES.get("smolvlm")(size="tiny", image_size=IMG, patch_size=8, keypoints=k)
        torch.manual_seed(0)
        policy = VLAPolicy(cfg.replace(backbone=backbone).with_robot(reader.meta.robot_spec()))
        policy.make_pipelines(reader.meta.stats, reader.meta.robot_spec())
        policies.append(policy.eval())
    batch = collate([policies[1].inputs(dict(reader[3]))])
    with torch.no_grad():
        plain, with_kp = (p.encode(batch) for p in policies)
    assert with_kp.prefix_len - plain.prefix_len == len(reader.meta.robot_spec().cameras)
    layer = policies[1].backbone.keypoints
    grid = torch.zeros(1, 16, layer.logits.in_features)
    moved = grid.clone()
    grid[0, 0], moved[0, 15] = 1.0, 1.0  # a feature in the top-left vs the bottom-right cell
    with torch.no_grad():
        assert not torch.allclose(layer(grid), layer(moved))
    path = policies[1].save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(path).eval()
    assert loaded.cfg.backbone.keypoints == 8
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(batch).pooled, with_kp.pooled, rtol=0, atol=0)


def test_vision_layers_keep_the_first_layers_of_a_pretrained_tower(tmp_path):
    """backbone.vision_layers=N on a transformers directory: the tower is the saved one's first N encoder layers
    (the reference runs them by hand from transformers' own model), and a random-init size builds only N."""
    from test_pretrained import _hf_dir
    from transformers import SmolVLMForConditionalGeneration

    path, _ = _hf_dir(tmp_path)
    ref = SmolVLMForConditionalGeneration.from_pretrained(path).eval()
    bb = BACKBONES.get("smolvlm")(pretrained=str(path), vision_layers=2).build(["front"], 4).eval()
    assert len(bb.model.model.vision_model.encoder.layers) == 2 and bb.model.config.vision_config.num_hidden_layers == 2
    x = torch.rand(2, 3, IMG, IMG)
    vm = ref.model.vision_model
    with torch.no_grad():
        h = vm.embeddings(pixel_values=x, patch_attention_mask=torch.ones(2, IMG // 16, IMG // 16, dtype=torch.bool))
        for layer in vm.encoder.layers[:2]:
            h = layer(h, None)
        expected = ref.model.connector(vm.post_layernorm(h))
        torch.testing.assert_close(bb.embed_images(x), expected, rtol=1e-5, atol=1e-5)
    assert len(_backbone(vision_layers=1).model.model.vision_model.encoder.layers) == 1
    with pytest.raises(ConfigError, match="backbone.vision_layers"):
        _backbone(vision_layers=-1)


def test_stem_width_sets_the_conv_stem_channels():
    stem = _backbone(patch_size=8, vision_stem="conv", stem_width=16).model.model.vision_model.embeddings
    convs = [m for m in stem.patch_embedding.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs[:-1]] == [16, 32, 64]  # then a 1x1 to the ViT width
    assert convs[-1].out_channels == stem.embed_dim
    with pytest.raises(ConfigError, match="backbone.stem_width"):
        _backbone(stem_width=16)  # the patch stem has no widths


def test_keypoints_to_readout_add_the_views_coordinates_to_the_pooled_vector(dataset, tmp_path):
    """backbone.keypoints_to_readout: pooled = the LM's readout + Linear(every view's keypoint (x, y)), where the
    coordinates are the spatial softmax of the patch grid, recomputed here by hand; it survives a checkpoint."""
    reader = LeRobotDataset(dataset[0], chunk=4)
    robot = reader.meta.robot_spec()
    backbone = BACKBONES.get("smolvlm")(size="tiny", image_size=IMG, patch_size=8, keypoints=4,
                                        keypoints_to_readout=True, readout="act")
    policy = VLAPolicy(tiny_policy_config("mlp").replace(backbone=backbone).with_robot(robot))
    policy.make_pipelines(reader.meta.stats, robot)
    policy.eval()
    bb, batch = policy.backbone, collate([policy.inputs(dict(reader[3]))])
    seen = {}
    bb.keypoints.logits.register_forward_hook(lambda m, a, out: seen.update(grid=a[0]))
    bb.keypoint_readout.register_forward_hook(lambda m, a, out: seen.update(skip=out))
    with torch.no_grad():
        pooled = policy.encode(batch).pooled
        grid = seen["grid"]  # (views, 4 x 4 patches, channels)
        attn = torch.softmax(bb.keypoints.logits(grid).transpose(1, 2) / bb.keypoints.log_temp.exp(), -1)
        axis = torch.linspace(-1, 1, 4)
        xs, ys = axis.repeat(4), axis.repeat_interleave(4)  # x along a row, y down the rows
        coords = torch.stack([attn @ xs, attn @ ys], -1).reshape(1, -1)  # view 0's (x, y) pairs, then view 1's
        torch.testing.assert_close(seen["skip"], bb.keypoint_readout(coords), rtol=1e-5, atol=1e-6)
        readout, bb.keypoint_readout = bb.keypoint_readout, None
        without = policy.encode(batch).pooled
        bb.keypoint_readout = readout
    assert len(robot.cameras) == 2 and readout.in_features == 2 * 4 * 2
    torch.testing.assert_close(pooled, without + seen["skip"], rtol=1e-5, atol=1e-6)
    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "ckpt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(batch).pooled, pooled, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="backbone.keypoints_to_readout"):
        BACKBONES.get("smolvlm")(size="tiny", keypoints_to_readout=True)


def test_keypoints_stride_reads_the_conv_stems_finer_map(dataset, tmp_path):
    """backbone.keypoints_stride=S: the keypoints read the conv stem's map at stride S (IMG/S cells a side), not the
    ViT's patch grid. The reference runs the stem's stride-2 blocks by hand (conv, GroupNorm, GELU) from its weights
    and takes the spatial softmax of that map; it survives a checkpoint; impossible strides name the field."""
    import torch.nn.functional as F

    reader = LeRobotDataset(dataset[0], chunk=4)
    robot = reader.meta.robot_spec()
    backbone = BACKBONES.get("smolvlm")(size="tiny", image_size=IMG, patch_size=8, vision_stem="conv", stem_width=8,
                                        keypoints=4, keypoints_stride=4, keypoints_to_readout=True, readout="act")
    policy = VLAPolicy(tiny_policy_config("mlp").replace(backbone=backbone).with_robot(robot))
    policy.make_pipelines(reader.meta.stats, robot)
    policy.eval()
    bb, batch = policy.backbone, collate([policy.inputs(dict(reader[3]))])
    stem = bb.model.model.vision_model.embeddings.patch_embedding
    assert bb.keypoints.logits.in_features == 16  # the second block's channels: stem_width 8 doubled
    seen = {}
    bb.keypoint_readout.register_forward_pre_hook(lambda m, a: seen.update(coords=a[0]))
    bb.model.model.vision_model.embeddings.register_forward_pre_hook(lambda m, a, kw: seen.update(pixels=kw.get(
        "pixel_values", a[0] if a else None)), with_kwargs=True)
    with torch.no_grad():
        pooled = policy.encode(batch).pooled
        x = seen["pixels"]
        for conv, norm in ((stem.layers[0], stem.layers[1]), (stem.layers[3], stem.layers[4])):  # strides 2, 4
            x = F.gelu(F.group_norm(F.conv2d(x, conv.weight, stride=2, padding=1), norm.num_groups, norm.weight,
                                    norm.bias, norm.eps))
        g = IMG // 4
        assert x.shape[-2:] == (g, g)
        logits = torch.einsum("nchw,kc->nkhw", x, bb.keypoints.logits.weight) + bb.keypoints.logits.bias[:, None, None]
        attn = torch.softmax(logits.flatten(2) / bb.keypoints.log_temp.exp(), -1)  # (views, k, g*g)
        axis = torch.linspace(-1, 1, g)
        xs, ys = axis.repeat(g), axis.repeat_interleave(g)
        expected = torch.stack([attn @ xs, attn @ ys], -1).reshape(1, -1)  # view 0's (x, y) pairs, then view 1's
        torch.testing.assert_close(seen["coords"], expected, rtol=1e-5, atol=1e-6)
    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "ckpt")).eval()
    assert loaded.cfg.backbone.keypoints_stride == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(batch).pooled, pooled, rtol=0, atol=0)
    for options in ({"keypoints_stride": 4, "keypoints": 4},  # the patch stem has no finer map
                    {"keypoints_stride": 4, "vision_stem": "conv"},  # no keypoints to read it
                    {"keypoints_stride": 8, "vision_stem": "conv", "keypoints": 4},  # = the patch size 8
                    {"keypoints_stride": 3, "vision_stem": "conv", "keypoints": 4}):
        with pytest.raises(ConfigError, match="backbone.keypoints_stride"):
            BACKBONES.get("smolvlm")(size="tiny", patch_size=8, **options)
