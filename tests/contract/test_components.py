"""Contract tests over the registries: every backbone x every head builds tiny, gives a finite loss, samples the
right shape, saves and loads bit-exactly, and overfits one fixed batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import IMG, tiny_policy_config
from vlaforge.backbones.base import BACKBONES
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.heads.base import HEADS
from vlaforge.policy import VLAPolicy
from vlaforge.processors import collate
from vlaforge.types import FeatureMismatchError, RobotSpec, image_key

PAIRS = [(b, h) for b in BACKBONES.names() for h in HEADS.names()]


def _policy(dataset, backbone: str, head: str, chunk: int = 4, **head_kw) -> tuple[VLAPolicy, LeRobotDataset]:
    root, _ = dataset
    reader = LeRobotDataset(root, chunk=chunk)
    cfg = tiny_policy_config(head, chunk, **head_kw)
    cfg = cfg.replace(backbone=BACKBONES.get(backbone)(size="tiny", image_size=IMG))
    torch.manual_seed(0)
    policy = VLAPolicy(cfg.with_robot(reader.meta.robot_spec()))
    policy.make_pipelines(reader.meta.stats, reader.meta.robot_spec())
    return policy, reader


def _batch(policy: VLAPolicy, reader: LeRobotDataset, idx=(0, 5, 9, 20)) -> dict:
    return collate([policy.inputs(reader[i]) for i in idx])


@pytest.mark.parametrize(("backbone", "head"), PAIRS)
def test_loss_sample_and_bit_exact_save_load(dataset, tmp_path, backbone, head):
    policy, reader = _policy(dataset, backbone, head)
    batch = _batch(policy, reader)
    out = policy.loss(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
    policy.eval()
    acts = policy.sample(batch, generator=torch.Generator().manual_seed(0))
    assert acts.shape == (4, 4, 4) and torch.isfinite(acts).all()
    again = policy.sample(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(acts, again)  # deterministic under a fixed seed
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    a, b = policy.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    item = reader[3]
    images = {c: item[image_key(c)] for c in ("front", "wrist")}
    x = policy.predict_action(images, item["task"], item["observation.state"], seed=1)
    y = loaded.predict_action(images, item["task"], item["observation.state"], seed=1)
    assert x.shape == (4, 4) and np.array_equal(x, y)


@pytest.mark.parametrize("head", HEADS.names())
def test_head_overfits_one_fixed_batch(dataset, head):
    """Training on one batch drives the loss down by >= 80 %. Diffusion losses are measured at fixed noise and
    timesteps (the same random draw before and after), so that the comparison is not noise-dominated."""
    policy, reader = _policy(dataset, "smolvlm", head)
    batch = _batch(policy, reader)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)

    def fixed_loss() -> float:
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            with torch.no_grad():
                return policy.loss(batch)["loss"].item()

    before = fixed_loss()
    torch.manual_seed(0)
    for _ in range(200):
        loss = policy.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after <= 0.2 * before, f"{head}: loss {before:.4f} -> {after:.4f} did not fall by 80 %"


def test_prefix_is_encoded_once_per_sample_for_in_sequence_heads(dataset, monkeypatch):
    policy, reader = _policy(dataset, "smolvlm", "tokens")
    batch = _batch(policy, reader)
    calls = []
    original = policy.backbone.embed_images
    monkeypatch.setattr(policy.backbone, "embed_images", lambda x: calls.append(1) or original(x))
    policy.eval()
    policy.sample(batch)
    assert len(calls) == 1


def test_extend_on_cached_prefix_equals_one_full_forward(dataset):
    policy, reader = _policy(dataset, "smolvlm", "tokens")
    batch = _batch(policy, reader)
    bb = policy.backbone.eval()
    images = policy._images(batch)
    suffix_ids = torch.randint(0, 300, (4, 5))
    with torch.no_grad():
        ctx = bb.encode(images, batch, use_cache=True)
        h1 = bb.extend(ctx, bb.embed_tokens(suffix_ids[:, :2]), torch.ones(4, 2))
        h2 = bb.extend(ctx, bb.embed_tokens(suffix_ids[:, 2:]), torch.ones(4, 3))
        cached = torch.cat([h1, h2], 1)
        # reference: the same prefix with the suffix appended as extra prefix embeddings in one pass
        full_batch = dict(batch)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        full_batch["input_ids"] = torch.cat([ids, suffix_ids], 1)
        full_batch["attention_mask"] = torch.cat([mask, torch.ones_like(suffix_ids)], 1)
        # place the suffix right after each row's real prompt tokens, as extend does (pads are masked)
        full = bb.encode(images, full_batch, use_cache=False).hidden[:, -5:]
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


def test_dit_scheduler_math_is_float32_under_bf16_weights(dataset):
    policy, reader = _policy(dataset, "smolvlm", "dit")
    policy = policy.to(torch.bfloat16).eval()
    batch = _batch(policy, reader)
    batch = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    acts = policy.sample(batch)
    assert acts.dtype == torch.float32 and torch.isfinite(acts).all()
    loss = policy.loss(batch)["loss"]
    assert torch.isfinite(loss)


def test_loading_against_other_features_lists_the_differences(dataset, tmp_path):
    policy, _ = _policy(dataset, "smolvlm", "tokens")
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    other = RobotSpec(cameras={"front": (32, 32), "gripper": (32, 32)}, state_dim=7, action_dim=7)
    with pytest.raises(FeatureMismatchError) as e:
        loaded.check_compatible(other, "environment")
    msg = str(e.value)
    assert "camera 'wrist': in checkpoint, missing from environment" in msg
    assert "camera 'gripper'" in msg and "state dim: checkpoint 4, environment 7" in msg
    assert "action dim: checkpoint 4, environment 7" in msg
