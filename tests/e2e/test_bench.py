"""bench/train.py's model-FLOPs count and MFU: counted FLOPs behave as training FLOPs must, and the script's JSON
is self-consistent; bench/inference.py's released architectures build at their published sizes (on the meta device)
and sample (shrunk). Speed itself is measured by the benchmark, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import load_bench, tiny_policy_config
from vlaforge.train.config import DataConfig, TrainConfig
from vlaforge.train.flops import flop_counter

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train.py"


@pytest.fixture(scope="module")
def bench_train():
    return load_bench("train")


@pytest.fixture(scope="module")
def bench_inference():
    return load_bench("inference")


def _cfg(data: Path, family: str = "smolvlm", **backbone) -> TrainConfig:
    from vlaforge.backbones.base import BACKBONES

    policy = tiny_policy_config("mlp")
    bb = BACKBONES.get(family)(size="tiny", image_size=policy.backbone.image_size, **backbone)
    return TrainConfig(policy=policy.replace(backbone=bb), data=DataConfig(path=str(data)), batch_size=2)


def test_counted_training_flops_follow_what_trains(bench_train, dataset):
    """Forward + backward of an all-trainable policy costs about 3 forwards (the backward computes input and
    weight gradients); freezing the VLM removes its weight-gradient matmuls, not its input-gradient ones (the
    proprio token, trained, enters the language model's input)."""
    from vlaforge.processors.base import collate
    from vlaforge.train.trainer import build_reader_and_policy

    root, _ = dataset
    cfg = _cfg(root)
    reader, policy = build_reader_and_policy(cfg)
    policy.train()
    pipeline = policy.train_pipeline()
    batch = collate([pipeline(reader[i]) for i in range(2)])
    with flop_counter() as counter:
        policy.loss(batch)
    forward = counter.get_total_flops() / 2
    ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in ops  # attention counts on a CPU too

    full = bench_train._fresh_policy_step(cfg, batch=2, steps=1)["flops_per_sample"]
    assert 2.5 * forward < full <= 3 * forward
    frozen = bench_train._fresh_policy_step(_cfg(root, freeze=("vision", "projector", "lm")), 2, 1)
    assert forward < frozen["flops_per_sample"] < 2 * forward < full


@pytest.mark.parametrize("family", ["smolvlm", "prismatic"])  # an HF model, and vlaforge's own composite one
def test_gradient_checkpointing_recompute_is_not_counted(bench_train, dataset, family):
    root, _ = dataset
    plain = bench_train._fresh_policy_step(_cfg(root, family), 2, 1)["flops_per_sample"]
    ckpt = bench_train._fresh_policy_step(_cfg(root, family, gradient_checkpointing=True), 2, 1)
    assert ckpt["flops_per_sample"] == plain > 0


def test_train_bench_reports_consistent_throughput_and_mfu(tmp_path):
    out = tmp_path / "train.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--presets", "divla_tiny", "--steps", "3", "--batch", "2",
                           "--episodes", "2", "--length", "8", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert "error" not in row, row.get("error")
    assert row["peak_tflops"], row["peak_source"]  # a GPU missing from PEAK_FLOPS says so here
    assert row["flops_per_sample"] > 0
    assert row["achieved_tflops"] == pytest.approx(row["flops_per_sample"] * row["samples_per_s_median"] / 1e12)
    assert row["mfu"] == pytest.approx(row["achieved_tflops"] / row["peak_tflops"])
    assert 0 < row["mfu"] < 1
    assert result["peaks"]["fp32"] == {"tflops": row["peak_tflops"], "source": row["peak_source"]}
    assert ("data sheet" if torch.cuda.is_available() else "measured") in row["peak_source"]
    assert "| divla_tiny |" in proc.stdout and "MFU (fp32) against: " in proc.stdout


# LLaVA-1.5-7B: 7.06 B; Qwen2-VL-2B (2.21 B, lm_head tied) + ScaleDP-H (0.96 B) + the reasoning FiLM
@pytest.mark.parametrize(("system", "params_b", "steps"), [("llava_vla", 7.063, ("token_ids", 38)),
                                                         ("dexvla", 3.179, ("reasoning_ids", 32))])
def test_released_llava_vla_and_dexvla_build_at_size_and_sample(bench_inference, tmp_path, system, params_b, steps):
    """The published architecture builds on the meta device (no memory) with the published parameter count; the
    same builder with its shapes shrunk fills its weights and samples a chunk, decoding the steps the row counts."""
    policy, robot = bench_inference.empty_released(system, tmp_path / "published")
    assert sum(p.numel() for p in policy.parameters()) / 1e9 == pytest.approx(params_b, abs=1e-3)
    policy, batch, chunk = bench_inference.build_released(system, tmp_path / "tiny", "float32", tiny=True)
    assert not any(p.is_meta for p in policy.parameters())
    info: dict = {}
    with torch.inference_mode():
        actions = policy.sample(batch, generator=torch.Generator().manual_seed(0), info=info)
    assert actions.shape == (1, chunk, robot.action_dim) and torch.isfinite(actions).all()
    key, n = steps
    assert len(info[key][0]) == n
