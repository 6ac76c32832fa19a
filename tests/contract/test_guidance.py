"""Classifier-free guidance: the unconditional branch really ignores the observation, and cfg_scale changes
the samples (HybridVLA ships this path broken; here it is trained with condition dropout and used at inference)."""

from __future__ import annotations

import pytest
import torch
from test_components import make_batch, make_policy

from vlaforge.types import image_key

GUIDED = ["dit", "unet1d", "flow", "inllm_diffusion"]


def _two_contexts(policy, reader):
    bb = policy.backbone
    a = make_batch(policy, reader, (0, 5))
    b = make_batch(policy, reader, (9, 20))  # other images, states and prompts
    b[image_key("front")] = torch.rand_like(b[image_key("front")])
    return bb.encode(a, use_cache=True), bb.encode(b, use_cache=True)


@pytest.mark.parametrize("head", GUIDED)
def test_unconditional_branch_ignores_the_observation(dataset, head):
    policy, reader = make_policy(dataset, "qwen2_vl", head, head_kw={"cond_dropout": 0.5})
    policy.eval()
    h = policy.head
    with torch.no_grad():  # stand in for training: zero-initialized output layers would hide any dependence
        for p in h.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, t = torch.randn(2, 4, 4), torch.tensor([30, 70])
    drop = torch.ones(2, dtype=torch.bool)
    outs = []
    with torch.no_grad():
        for ctx in _two_contexts(policy, reader):
            if head == "flow":
                tt = torch.tensor([0.3, 0.8])
                outs.append((h.velocity(x, tt, h._prefix(ctx), ctx.mask.bool(), ctx.state, drop),
                             h.velocity(x, tt, h._prefix(ctx), ctx.mask.bool(), ctx.state, None)))
            elif head == "inllm_diffusion":
                outs.append((h._eps(ctx, x, t, drop), h._eps(ctx, x, t, None)))
            else:
                outs.append((h.network(x, t, h.condition(ctx, drop)), h.network(x, t, h.condition(ctx, None))))
    torch.testing.assert_close(outs[0][0], outs[1][0])  # dropped condition: same prediction for both
    assert not torch.allclose(outs[0][1], outs[1][1], atol=1e-6)  # with the condition they differ


@pytest.mark.parametrize("head", GUIDED)
def test_cfg_scale_trains_and_steers_sampling(dataset, head):
    policy, reader = make_policy(dataset, "paligemma", head, head_kw={"cond_dropout": 0.3})
    batch = make_batch(policy, reader)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    for _ in range(5):  # a few steps so that conditional and unconditional predictions part ways
        loss = policy.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = policy.sample(batch, generator=g(), cfg_scale=0.0)
    same = policy.sample(batch, generator=g(), cfg_scale=1.0)
    steered = policy.sample(batch, generator=g(), cfg_scale=3.0)
    torch.testing.assert_close(plain, same)
    assert torch.isfinite(steered).all() and not torch.allclose(plain, steered)
    assert torch.equal(steered, policy.sample(batch, generator=g(), cfg_scale=3.0))


def test_dexvla_reasoning_is_trained_generated_and_filmed_into_the_condition(tmp_path):
    from helpers import write_dataset
    from vlaforge.heads.reasoning import ReasoningConfig
    from vlaforge.policy import VLAPolicy
    from vlaforge.types import FeatureSpec

    root = tmp_path / "reasoning"
    write_dataset(root, extra={"reasoning": FeatureSpec("string", (1,))},
                  extra_values=lambda ep, n: {"reasoning": ["reach the handle" if i < n // 2 else "pull it open"
                                                            for i in range(n)]})
    policy, reader = make_policy((root, None), "qwen2_vl", "dit")
    cfg = policy.cfg.replace(reasoning=ReasoningConfig(max_tokens=8))
    torch.manual_seed(0)
    policy = VLAPolicy(cfg)
    policy.make_pipelines(reader.meta.stats, reader.meta.robot_spec())
    assert reader[0]["reasoning"] == "reach the handle"
    batch = make_batch(policy, reader)
    assert "reasoning_ids" in batch
    ctx = policy.backbone.encode(batch, use_cache=True)
    before = ctx.pooled.clone()
    policy.reasoner.train_step(ctx, batch)
    torch.testing.assert_close(ctx.pooled, before)  # zero-initialized FiLM: untrained, the condition is unchanged
    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3)
    first = None
    for _ in range(60):
        out = policy.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["reasoning_loss"].item()
    assert out["reasoning_loss"].item() < 0.2 * first
    assert policy.reasoner.film.weight.abs().sum() > 0  # the FiLM layer learned something
    policy.eval()
    info: dict = {}
    acts = policy.sample(batch, info=info)
    assert acts.shape == (4, 4, 4) and len(info["reasoning"]) == 4
    assert "reach the handle" in info["reasoning"] or "pull it open" in info["reasoning"]
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(policy.sample(batch, generator=g()), loaded.sample(batch, generator=g()))


def test_reasoning_film_takes_a_bf16_vlms_states():
    """DexVLA imports at bf16 (the VLM) with float32 projectors and FiLM: the condition is computed in the FiLM's
    dtype, equal to feeding the same states as float32."""
    from vlaforge.heads.reasoning import Reasoner, ReasoningConfig

    torch.manual_seed(0)
    reasoner = Reasoner(ReasoningConfig(max_tokens=8, film="projected"), hidden=16)
    torch.nn.init.normal_(reasoner.film.weight, std=0.1)  # a trained FiLM, not the zero init
    pooled, reasoning = torch.randn(2, 16).bfloat16(), torch.randn(2, 16).bfloat16()
    out = reasoner.modulate(pooled, reasoning)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reasoner.modulate(pooled.float(), reasoning.float()), rtol=0, atol=0)
