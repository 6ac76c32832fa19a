"""Seed-system presets: every ``*_tiny`` recipe trains on CPU and reloads; every full-size recipe validates."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import write_dataset
from vlaforge.policy import VLAPolicy
from vlaforge.presets import PRESETS, get_preset
from vlaforge.presets.seeds import FULL_SIZE, SEED_PRESETS
from vlaforge.train.config import TrainConfig
from vlaforge.train.trainer import train
from vlaforge.types import OBS_ENV_STATE, FeatureSpec

TINY = [f"{name}_tiny" for name in SEED_PRESETS]


@pytest.fixture(scope="module")
def reasoning_dataset(tmp_path_factory):
    """The 3-episode fixture plus DexVLA's per-frame sub-step reasoning and a simulator's environment state (object
    and goal positions, the quick start's auxiliary target), each ignored by the recipes that do not use it."""
    root = tmp_path_factory.mktemp("presets") / "tiny"
    write_dataset(root, extra={"reasoning": FeatureSpec("string", (1,)), OBS_ENV_STATE: FeatureSpec("float32", (6,))},
                  extra_values=lambda ep, n: {"reasoning": ["reach the handle" if t < n // 2 else "pull it open"
                                                            for t in range(n)],
                                              OBS_ENV_STATE: np.linspace(0, 1, 6 * n, dtype=np.float32).reshape(n, 6)})
    return root


def test_every_seed_preset_is_registered_in_two_sizes():
    names = set(PRESETS.names())
    for name in SEED_PRESETS:
        assert {name, f"{name}_tiny"} <= names


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_trains_two_steps_and_reloads(reasoning_dataset, tmp_path, name):
    cfg = get_preset(name)
    assert cfg.policy.backbone.size == "tiny" and cfg.precision == "fp32"
    run = tmp_path / "run"
    cfg = cfg.replace(data=cfg.data.replace(path=str(reasoning_dataset)), out=str(run), steps=2, batch_size=2,
                      save_every=2, log_every=1, threads=1)
    final = train(cfg, show_progress=False)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    if cfg.policy.reasoning is not None:  # DexVLA: the sub-step reasoning is trained too
        assert "reasoning_loss" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    policy = VLAPolicy.from_pretrained(final)
    assert policy.cfg.head.type == cfg.policy.head.type
    assert policy.cfg.chunk == cfg.policy.chunk and policy.cfg.history == cfg.policy.history
    assert (policy.cfg.reasoning is None) == (cfg.policy.reasoning is None)


@pytest.mark.parametrize("name", SEED_PRESETS)
def test_full_preset_builds_validates_and_mirrors_its_tiny_variant(name):
    cfg = get_preset(name)
    assert PRESETS.get(name).__doc__ and "GB" in PRESETS.get(name).__doc__  # published size + memory documented
    assert cfg.policy.backbone.size == FULL_SIZE and cfg.policy.backbone.pretrained is None
    assert cfg.precision == "bf16" and cfg.init_from is None
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg  # what a run directory saves reads back
    tiny = get_preset(f"{name}_tiny")
    for field in ("chunk", "exec_steps", "history", "normalization", "normalize_skip"):
        assert getattr(tiny.policy, field) == getattr(cfg.policy, field), field
    assert tiny.policy.head.type == cfg.policy.head.type
    assert tiny.policy.backbone.type == cfg.policy.backbone.type
    for field in ("views", "proprio", "history", "readout", "freeze"):
        assert getattr(tiny.policy.backbone, field) == getattr(cfg.policy.backbone, field), field
    assert (tiny.policy.backbone.lora is None) == (cfg.policy.backbone.lora is None)
    assert tiny.optim.lr == cfg.optim.lr and tiny.ema == cfg.ema


def test_seed_specific_options():
    hybrid = get_preset("hybridvla")
    assert hybrid.policy.head.token.type == "tokens" and hybrid.policy.head.continuous.type == "inllm_diffusion"
    assert hybrid.policy.head.continuous.repeated_diffusion_steps > 1
    assert hybrid.policy.normalization["action"] == "q01_q99" and hybrid.policy.normalize_skip["action"] == (-1,)
    s2, s3 = get_preset("dexvla_stage2"), get_preset("dexvla_stage3")
    assert s2.policy.head.size == "H" and s2.policy.reasoning is not None and s2.ema > 0
    assert (s2.policy.head.condition, s2.policy.head.time_precision, s2.policy.reasoning.film) == (
        "combine", "bfloat16", "projected")  # DexVLA's published variants (vlaforge import dexvla)
    assert s3.optim.min_lr_ratio != s2.optim.min_lr_ratio and s3.steps != s2.steps
    assert get_preset("divla").policy.backbone.lora is not None
    llava = get_preset("llava_vla")
    assert (llava.policy.backbone.views, llava.policy.backbone.proprio, llava.policy.chunk) == ("stitch", "text", 5)
    assert (llava.policy.head.binning, llava.policy.backbone.stitch_view_size) == ("uniform_edges", 334)
    robo = get_preset("robovlms")
    assert (robo.policy.history, robo.policy.backbone.history, robo.policy.chunk) == (8, "per_frame", 10)
    oft = get_preset("openvla_oft")
    assert (oft.policy.head.type, oft.policy.head.loss, oft.policy.chunk) == ("mlp", "l1", 8)
    assert (oft.policy.head.readout, oft.policy.head.mlp, oft.policy.backbone.attention) == (
        "placeholders", "resnet", "bidirectional")
    ovla = get_preset("openvla")
    assert (ovla.policy.head.binning, ovla.policy.head.decode_over, ovla.policy.backbone.action_tokens) == (
        "uniform_edges", "vocab", "count_down")


def test_dexvla_stage3_starts_from_stage2(reasoning_dataset, tmp_path):
    from safetensors.torch import load_file

    def run(name, out, **kw):
        cfg = get_preset(name)
        cfg = cfg.replace(data=cfg.data.replace(path=str(reasoning_dataset)), out=str(out), steps=2, batch_size=2,
                          save_every=2, log_every=1, threads=1, **kw)
        return train(cfg, show_progress=False)

    stage2 = run("dexvla_stage2_tiny", tmp_path / "s2", seed=123)  # another init than stage 3's own seed
    stage3 = run("dexvla_stage3_tiny", tmp_path / "s3", init_from=str(stage2))
    s2, s3 = load_file(str(stage2 / "model.safetensors")), load_file(str(stage3 / "model.safetensors"))
    assert s2.keys() == s3.keys()
    fresh = VLAPolicy.from_pretrained(run("dexvla_stage3_tiny", tmp_path / "fresh"))
    # stage 3 continued from stage 2's weights: it is much closer to them than a fresh stage-3 run is
    dist = lambda a: sum(float((a[k].float() - s2[k].float()).abs().sum()) for k in s2)  # noqa: E731
    assert dist(s3) < 0.1 * dist({k: v.detach() for k, v in fresh.state_dict().items() if k in s2})


def test_the_quick_start_default_is_the_lean_recipe_and_trains(reasoning_dataset, tmp_path):
    """`vlaforge quickstart` trains quickstart_mlp on MT10 by default: issue 15's recipe (conv stem, 2 + 2 layers,
    keypoints into the readout, L1 MLP on an act token); it trains and reloads with that architecture."""
    from vlaforge.cli.quickstart import QuickstartConfig

    assert (QuickstartConfig().preset, QuickstartConfig().tasks) == ("quickstart_mlp", "mt10")
    cfg = get_preset("quickstart_mlp")
    bb = cfg.policy.backbone
    assert (cfg.policy.head.type, bb.readout, bb.vision_stem, bb.keypoints_to_readout) == ("mlp", "act", "conv", True)
    assert cfg.policy.env_state_loss == 1.0  # it learns where the objects and the goal are (training only)
    assert cfg.precision == "auto"  # bf16 autocast where the CPU has bf16 units, else fp32
    run = tmp_path / "run"
    cfg = cfg.replace(data=cfg.data.replace(path=str(reasoning_dataset)), out=str(run), steps=2, batch_size=2,
                      save_every=2, log_every=1, threads=1)
    policy = VLAPolicy.from_pretrained(train(cfg, show_progress=False))
    model = policy.backbone.model.model
    assert len(model.vision_model.encoder.layers) == len(model.text_model.layers) == 2
    assert policy.backbone.keypoint_readout is not None
    assert policy.cfg.env_state_dim == 6 and policy.env_state_head is not None
