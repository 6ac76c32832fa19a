"""pi0 / pi0.5 (``pi0`` head): the cached expert equals one joint forward over prefix + suffix written here from
the documented architecture (openpi's PaliGemmaWithExpertModel: per-layer joint attention, block-causal mask);
the pi0.5 prompt bins; the tiny presets train with vlaforge's trainer and their loss falls."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlaforge.backbones.base import BACKBONES
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig, VLAPolicy
from vlaforge.processors import collate
from vlaforge.processors.text import state_bins_text

PI05_PROMPT = "Task: {task}, State: {state};\nAction: "


# ---------------------------------------------------------------- the reference (plain torch, from the facts)
def ref_rms(x, weight=None, dense=None, cond=None, eps=1e-6):
    """Gemma RMSNorm x̂·(1 + w); adaptive (pi0.5): dense(cond) -> scale, shift, gate."""
    n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if dense is None:
        return n * (1 + weight), None
    scale, shift, gate = (cond @ dense[0].T + dense[1])[:, None].chunk(3, -1)
    return n * (1 + scale) + shift, gate


def ref_rope(x, pos, theta=10000.0):
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    f = pos.float()[..., None] * inv
    cos, sin = torch.cat([f, f], -1).cos()[:, None], torch.cat([f, f], -1).sin()[:, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def ref_sincos(t, dim, lo=4e-3, hi=4.0):
    frac = torch.linspace(0, 1, dim // 2, dtype=torch.float64)
    arg = t.double()[:, None] * 2 * math.pi / (lo * (hi / lo) ** frac)
    return torch.cat([arg.sin(), arg.cos()], 1).float()


def ref_suffix(hw, x_t, t, state, pi05, model_dim):
    """Expert input tokens, the adaRMS condition, and their ar-mask entries (1 = starts a new causal block)."""
    lin = lambda name, v: v @ hw[f"{name}.weight"].T + hw[f"{name}.bias"]  # noqa: E731
    a = lin("action_in_proj", x_t)
    temb = ref_sincos(t, a.shape[-1])
    if pi05:
        cond = F.silu(lin("time_mlp_out", F.silu(lin("time_mlp_in", temb))))
        return a, cond, [1] + [0] * (a.shape[1] - 1)
    h = lin("action_time_mlp_out", F.silu(lin("action_time_mlp_in", torch.cat([a, temb[:, None].expand_as(a)], -1))))
    s = lin("state_proj", F.pad(state, (0, model_dim - state.shape[-1])))
    return torch.cat([s[:, None], h], 1), None, [1, 1] + [0] * (a.shape[1] - 1)


def ref_joint_velocity(policy, batch, x_t, t, pi05):
    """openpi's joint forward: [images, bos, prompt] then [state?, actions] through both transformers layer by layer,
    mask ``cumsum(ar)[k] <= cumsum(ar)[q]`` and both real, positions ``cumsum(pad) - 1``; no cache."""
    m = policy.backbone.model
    vw = {k: v.float() for k, v in m.state_dict().items()}
    hw = {k: v.float() for k, v in policy.head.state_dict().items()}
    d = m.config.text_config.hidden_size
    with torch.no_grad():
        views = [m.model.multi_modal_projector(m.model.vision_tower((batch[f"observation.images.{c}"] - 0.5) / 0.5)
                                               .last_hidden_state) for c in policy.cfg.cameras]
    emb = vw["model.language_model.embed_tokens.weight"]
    bos = torch.full((x_t.shape[0], 1), policy.backbone.tokenizer.bos_token_id)
    text = emb[torch.cat([bos, batch["input_ids"]], 1)] * math.sqrt(d)
    prefix = torch.cat([*views, text], 1)
    ppad = torch.cat([torch.ones(prefix.shape[0], sum(v.shape[1] for v in views) + 1),
                      batch["attention_mask"].float()], 1)
    model_dim = hw["action_in_proj.weight"].shape[1]
    suffix, cond, ar_s = ref_suffix(hw, x_t, t, batch.get("observation.state"), pi05, model_dim)
    pad = torch.cat([ppad, torch.ones(suffix.shape[:2])], 1).bool()
    cum = torch.cumsum(torch.tensor([0] * prefix.shape[1] + ar_s), 0)
    mask = (cum[None, :] <= cum[:, None])[None] & pad[:, None, :] & pad[:, :, None]
    pos = torch.cumsum(pad.long(), 1) - 1
    xs = [prefix, suffix]
    names = [("model.language_model.layers.{}.", vw, None), ("layers.{}.", hw, cond)]
    for i in range(m.config.text_config.num_hidden_layers):
        qs, ks, vs, gates, normed = [], [], [], [], []
        for x, (pre, w, c) in zip(xs, names, strict=True):
            p = pre.format(i)
            ln = p + "input_layernorm."
            h, g = ref_rms(x, w.get(ln + "weight"), (w[ln + "dense.weight"], w[ln + "dense.bias"]) if c is not None
                           else None, c)
            hd = w[p + "self_attn.k_proj.weight"].shape[0]  # one KV head (PaliGemma's Gemma 2B, the expert)
            b, n = x.shape[:2]
            qs.append((h @ w[p + "self_attn.q_proj.weight"].T).view(b, n, -1, hd).transpose(1, 2))
            ks.append((h @ w[p + "self_attn.k_proj.weight"].T).view(b, n, 1, hd).transpose(1, 2))
            vs.append((h @ w[p + "self_attn.v_proj.weight"].T).view(b, n, 1, hd).transpose(1, 2))
            gates.append(g)
            normed.append(h)
        q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
        q, k = ref_rope(q, pos), ref_rope(k, pos)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        scores = scores.masked_fill(~mask[:, None], -2.3819763e38)
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
        out, start = [], 0
        for x, g, (pre, w, c) in zip(xs, gates, names, strict=True):
            p = pre.format(i)
            y = att[:, start:start + x.shape[1]] @ w[p + "self_attn.o_proj.weight"].T
            start += x.shape[1]
            x = x + (y if g is None else y * g)
            ln = p + "post_attention_layernorm."
            h, g2 = ref_rms(x, w.get(ln + "weight"), (w[ln + "dense.weight"], w[ln + "dense.bias"]) if c is not None
                            else None, c)
            mlp = (F.gelu(h @ w[p + "mlp.gate_proj.weight"].T, approximate="tanh") * (h @ w[p + "mlp.up_proj.weight"].T)
                   ) @ w[p + "mlp.down_proj.weight"].T
            out.append(x + (mlp if g2 is None else mlp * g2))
        xs = out
    h, _ = ref_rms(xs[1], hw.get("norm.weight"), (hw["norm.dense.weight"], hw["norm.dense.bias"]) if pi05 else None,
                   cond)
    h = h[:, -x_t.shape[1]:]
    return h @ hw["action_out_proj.weight"].T + hw["action_out_proj.bias"]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (spinning OpenMP threads on a shared CPU cost 10-50x)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pi0_policy(dataset, pi05: bool, chunk: int = 4) -> tuple[VLAPolicy, LeRobotDataset]:
    root, _ = dataset
    reader = LeRobotDataset(root, chunk=chunk)
    extra = dict(prompt_template=PI05_PROMPT, prompt_state_bins=256) if pi05 else {}
    cfg = PolicyConfig(backbone=BACKBONES.get("paligemma")(proprio="none", prompt_lowercase=False, **extra),
                       head=HEADS.get("pi0")(width=64, mlp_dim=96, model_action_dim=8,
                                             time_conditioning="adarms" if pi05 else "concat"),
                       chunk=chunk, exec_steps=2)
    torch.manual_seed(0)
    policy = VLAPolicy(cfg.with_robot(reader.meta.robot_spec()))
    policy.make_pipelines(reader.meta.stats, reader.meta.robot_spec())
    with torch.no_grad():  # no zero-initialised norms / adaRMS projections: every weight matters
        for name, p in policy.named_parameters():
            if name.startswith("head.") or "layernorm" in name or name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.2)
    return policy.eval(), reader


@pytest.mark.parametrize("pi05", [False, True], ids=["pi0", "pi05"])
def test_cached_expert_equals_the_joint_forward_and_the_reference(dataset, pi05):
    policy, reader = pi0_policy(dataset, pi05)
    batch = collate([policy.inputs(reader[i]) for i in (0, 5, 9)])
    assert batch["attention_mask"].float().min() == 0  # rows of different prompt lengths: pads inside the sequence
    head = policy.head
    g = torch.Generator().manual_seed(3)
    x_t, t = torch.randn(3, 4, 8, generator=g), torch.tensor([0.9, 0.5, 0.05])
    with torch.no_grad():
        ctx = policy.encode(batch)
        cached = head.velocity(x_t, t, *head._inputs(ctx), ctx.state)
        joint = ref_joint_velocity(policy, batch, x_t, t, pi05)
    torch.testing.assert_close(cached, joint, rtol=1e-5, atol=1e-5)
    # 10 Euler steps reusing the cache == 10 joint forwards (time in float32 steps of -0.1, as openpi)
    noise = torch.randn(3, 4, 8, generator=g)
    with torch.no_grad():
        acts = head.sample(policy.encode(batch), batch, noise=noise)
        x, tt = noise.clone(), torch.tensor(1.0)
        for _ in range(10):
            x = x + torch.tensor(-0.1) * ref_joint_velocity(policy, batch, x, tt.expand(3), pi05)
            tt = tt + torch.tensor(-0.1)
    assert acts.shape == (3, 4, 4)
    torch.testing.assert_close(acts, x[..., :4], rtol=1e-5, atol=1e-5)


def test_pi05_prompt_carries_the_state_as_256_bins(dataset):
    assert state_bins_text(np.array([-1.0, -0.9999, 0.0, 0.5, 0.99, 1.0, 1.7]), 256) == "0 0 128 192 254 255 255"
    policy, reader = pi0_policy(dataset, pi05=True)
    item = reader[2]
    state = policy.inputs.steps[1]({"observation.state": item["observation.state"].copy()})["observation.state"]
    ids = policy.inputs(dict(item))["input_ids"].tolist()
    text = PI05_PROMPT.format(task=item["task"], state=state_bins_text(state, 256))
    assert ids == policy.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "State: " in policy.backbone.tokenizer.decode(ids) and ";\nAction: " in policy.backbone.tokenizer.decode(ids)


@pytest.mark.parametrize("pi05", [False, True], ids=["pi0", "pi05"])
def test_expert_loss_falls_on_a_fixed_batch(dataset, pi05):
    policy, reader = pi0_policy(dataset, pi05)
    policy.train()
    batch = collate([policy.inputs(reader[i]) for i in (0, 9)])
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=2e-3)

    def fixed() -> float:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(7)
            return policy.loss(batch)["loss"].item()

    before = fixed()
    for _ in range(30):
        loss = policy.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed() < 0.75 * before


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_tiny_presets_train_with_the_trainer_and_reload(dataset, tmp_path, name):
    from vlaforge.presets import get_preset
    from vlaforge.train.trainer import train

    cfg = get_preset(name)
    run = tmp_path / "run"
    cfg = cfg.replace(data=cfg.data.replace(path=str(dataset[0])), out=str(run), steps=2, batch_size=2, save_every=2,
                      log_every=1, threads=1)
    final = train(cfg, show_progress=False)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    policy = VLAPolicy.from_pretrained(final)
    assert policy.cfg.head.type == "pi0"
    assert policy.cfg.head.time_conditioning == ("adarms" if name.startswith("pi05") else "concat")
