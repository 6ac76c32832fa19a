"""`vlaforge import dexvla SRC --base QWEN2VL_DIR`: DexVLA's stage-1 ScaleDP + the official Qwen2-VL -> vlaforge.

The test writes both inputs in their released layouts: the Qwen2-VL directory with transformers-4.x key names
(``model.layers``, ``visual.``, no ``lm_head`` because the 2B ties it), bf16 shards with an index and DexVLA's
replaced config.json (``model_type qwen2_vla``, ``policy_head_type scale_dp_policy``, flat keys, ``rope_scaling``
with M-RoPE sections); the ScaleDP checkpoint as a torch pickle with the weights under ``["nets"]["nets"]``,
``policy.noise_pred_net.`` prefixes, a fused ``qkv`` and stage-1 extras (a vision backbone, ``cond_obs_emb``) that
DexVLA's loader drops; and ``dataset_stats.pkl``. The reference forwards below are plain torch written from the
documented architecture (shared/reference/released_checkpoints.md, seed_systems.md §2): ScaleDP's combine MLP,
cond_obs_emb, GLIDE cos|sin timestep sinusoid with bfloat16 frequencies, adaLN-Zero blocks (shift, scale, gate),
the final layer, DDIM (squaredcos, 100 train / 10 inference steps, leading spacing, x0 clipped to ±1, alpha 1 at
the end), DexVLA's FiLM with its projectors and identity term, and min/max un-normalisation.
"""

from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_dirs
import released
from released import SCALEDP_DEPTH as DEPTH
from released import SCALEDP_HEADS as HEADS
from released import SCALEDP_WIDTH as WIDTH
from vlaforge.policy import VLAPolicy
from vlaforge.types import ACTION, OBS_STATE, Context, image_key
from vlaforge.weights.common import LayoutError, write_checkpoint
from vlaforge.weights.dexvla import film_weights, import_dexvla

ACTION_DIM, STATE_DIM, CHUNK = 6, 5, 8
CAMS = ("cam_high", "cam_left_wrist")


@pytest.fixture(scope="module")
def dexvla(tmp_path_factory):
    root = tmp_path_factory.mktemp("dexvla")
    base, base_sd, hidden = released.write_qwen2vl_base(root / "Qwen2-VL-2B-Instruct")
    head_sd = released.write_scaledp(root / "scale_dp" / "open_scale_dp_tiny.ckpt", hidden, ACTION_DIM, STATE_DIM,
                                     CHUNK)
    stats = released.dexvla_stats(ACTION_DIM, STATE_DIM)
    with open(root / "dataset_stats.pkl", "wb") as f:
        pickle.dump(stats, f)
    imported = import_dexvla(root / "scale_dp", base=base, cameras=CAMS, dtype="float32",
                             stats=root / "dataset_stats.pkl", image_size=56)
    ckpt = write_checkpoint(imported, root / "ckpt")
    return {"root": root, "base": base, "base_sd": base_sd, "head": head_sd, "stats": stats, "ckpt": ckpt,
            "hidden": hidden, "policy": VLAPolicy.from_pretrained(ckpt)}


# ---------------------------------------------------------------- reference ScaleDP (plain torch)
def glide_bf16(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """cos|sin sinusoid; ScaleDP computes the frequencies in bfloat16 (each op rounded) and returns bfloat16."""
    half = dim // 2
    expo = (torch.arange(half, dtype=torch.float32) * -math.log(10000)).bfloat16() / half
    freqs = torch.exp(expo.float()).bfloat16()
    ang = t.float()[:, None] * freqs.float()[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], 1).bfloat16()


def scaledp_eps(sd, cond_obs_emb, x, t, pooled, state):
    d = WIDTH
    c = torch.cat([pooled, state], -1)
    c = F.relu(F.linear(c, sd["combine.0.weight"], sd["combine.0.bias"]))
    c = F.relu(F.linear(c, sd["combine.2.weight"], sd["combine.2.bias"]))
    c = F.linear(c, sd["combine.4.weight"], sd["combine.4.bias"])
    c = F.linear(c, cond_obs_emb["weight"], cond_obs_emb["bias"])
    te = glide_bf16(t).float()
    te = F.linear(F.silu(F.linear(te, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                  sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    c = te + c
    h = F.linear(x, sd["x_embedder.weight"], sd["x_embedder.bias"]) + sd["pos_embed"]
    b, n, _ = h.shape
    hd = d // HEADS

    def ln(z):
        return F.layer_norm(z, (d,), eps=1e-6)

    for i in range(DEPTH):
        w = {k[len(f"blocks.{i}."):]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        mod = F.linear(F.silu(c), w["adaLN_modulation.1.weight"], w["adaLN_modulation.1.bias"])
        sh1, sc1, g1, sh2, sc2, g2 = mod.split(d, -1)
        y = ln(h) * (1 + sc1[:, None]) + sh1[:, None]
        qkv = F.linear(y, w["attn.qkv.weight"], w["attn.qkv.bias"]).view(b, n, 3, HEADS, hd)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))
        att = (q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1) @ v
        h = h + g1[:, None] * F.linear(att.transpose(1, 2).reshape(b, n, d), w["attn.proj.weight"],
                                       w["attn.proj.bias"])
        y = ln(h) * (1 + sc2[:, None]) + sh2[:, None]
        m = F.gelu(F.linear(y, w["mlp.fc1.weight"], w["mlp.fc1.bias"]), approximate="tanh")
        h = h + g2[:, None] * F.linear(m, w["mlp.fc2.weight"], w["mlp.fc2.bias"])
    sh, sc = F.linear(F.silu(c), sd["final_layer.adaLN_modulation.1.weight"],
                      sd["final_layer.adaLN_modulation.1.bias"]).split(d, -1)
    return F.linear(ln(h) * (1 + sc[:, None]) + sh[:, None], sd["final_layer.linear.weight"],
                    sd["final_layer.linear.bias"])


def ddim_reference(eps_fn, noise, train_steps=100, steps=10):
    """DDIM (eta 0) on the squared-cosine schedule, leading spacing, x0 clipped to ±1, final alpha 1."""
    bar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - bar((i + 1) / train_steps) / bar(i / train_steps), 0.999)
                          for i in range(train_steps)], dtype=torch.float32)
    acp = torch.cumprod(1 - betas, 0)
    x = noise
    stride = train_steps // steps
    for t in range(stride * (steps - 1), -1, -stride):
        eps = eps_fn(x, torch.full((x.shape[0],), t))
        a, a_prev = acp[t], acp[t - stride] if t - stride >= 0 else torch.tensor(1.0)
        x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def _ctx(hidden, seed=5, b=3):
    g = torch.Generator().manual_seed(seed)
    return Context(hidden=torch.zeros(b, 1, hidden), mask=torch.ones(b, 1), pooled=torch.randn(b, hidden, generator=g),
                   state=torch.randn(b, STATE_DIM, generator=g))


def _cond_obs_emb(policy):
    c = policy.head.condition.ctx_proj
    return {"weight": c.weight.detach(), "bias": c.bias.detach()}


# ---------------------------------------------------------------- tests
def test_scaledp_denoiser_and_sampled_chunk_match_the_reference(dexvla):
    policy, sd = dexvla["policy"], dexvla["head"]
    ctx = _ctx(dexvla["hidden"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, CHUNK, ACTION_DIM, generator=g)
    t = torch.tensor([0, 37, 99])
    emb = _cond_obs_emb(policy)
    assert not torch.equal(emb["weight"], sd["cond_obs_emb.weight"])  # dropped as DexVLA's loader does: fresh
    with torch.no_grad():
        got = policy.head.network(x, t, policy.head.condition(ctx))
        want = scaledp_eps(sd, emb, x, t, ctx.pooled, ctx.state)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        chunk = policy.head.sample(ctx, {}, generator=torch.Generator().manual_seed(7))
        noise = torch.randn(3, CHUNK, ACTION_DIM, generator=torch.Generator().manual_seed(7))
        ref = ddim_reference(lambda xx, tt: scaledp_eps(sd, emb, xx, tt, ctx.pooled, ctx.state), noise)
    assert chunk.shape == (3, CHUNK, ACTION_DIM)
    torch.testing.assert_close(chunk, ref, rtol=1e-5, atol=1e-5)


def test_bf16_timestep_frequencies_are_scaledps_not_float32s(dexvla):
    """The option matters: ScaleDP's bf16 frequencies differ from the float32 sinusoid by far more than 1e-5."""
    net = dexvla["policy"].head.network
    t = torch.tensor([3, 50, 99])
    torch.testing.assert_close(net.time_proj(t).float(), glide_bf16(t).float(), rtol=0, atol=0)
    from diffusers.models.embeddings import Timesteps

    exact = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    assert (exact - glide_bf16(t).float()).abs().max() > 1e-2


def test_dexvla_film_with_projectors_and_identity_on_fixed_tensors(dexvla):
    policy, hidden = dexvla["policy"], dexvla["hidden"]
    g = torch.Generator().manual_seed(11)
    theirs = {}
    for name in ("input_action_proj", "reasoning_action_proj"):
        for i in (0, 2):
            theirs[f"{name}.mlps.{i}.weight"] = 0.1 * torch.randn(hidden, hidden, generator=g)
            theirs[f"{name}.mlps.{i}.bias"] = 0.1 * torch.randn(hidden, generator=g)
    for name in ("scale_fc", "shift_fc"):
        theirs[f"reasoning_film.{name}.weight"] = 0.1 * torch.randn(hidden, hidden, generator=g)
        theirs[f"reasoning_film.{name}.bias"] = 0.1 * torch.randn(hidden, generator=g)
    reasoner = policy.reasoner
    fresh = {k: v.clone() for k, v in reasoner.state_dict().items()}
    assert fresh["film.weight"].abs().sum() == 0  # imported: DexVLA's zero-initialised FiLM
    reasoner.load_state_dict({k.removeprefix("reasoner."): v for k, v in film_weights(theirs).items()})
    try:
        prompt = torch.randn(2, 7, hidden, generator=g)
        reasoning = torch.randn(2, 4, hidden, generator=g)
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
        ctx = Context(hidden=prompt, mask=torch.ones(2, 7), pooled=prompt.mean(1))
        with torch.no_grad():
            reasoner._condition(ctx, reasoning, mask)

        def proj(name, z):
            z = F.gelu(F.linear(z, theirs[f"{name}.mlps.0.weight"], theirs[f"{name}.mlps.0.bias"]))
            return F.linear(z, theirs[f"{name}.mlps.2.weight"], theirs[f"{name}.mlps.2.bias"])

        for i, n in enumerate((4, 2)):  # film_forward, one row at a time: avg-pool over that row's tokens
            ident = prompt[i].mean(0)
            x = proj("input_action_proj", ident)
            c = proj("reasoning_action_proj", reasoning[i, :n].mean(0))
            scale = F.linear(c, theirs["reasoning_film.scale_fc.weight"], theirs["reasoning_film.scale_fc.bias"])
            shift = F.linear(c, theirs["reasoning_film.shift_fc.weight"], theirs["reasoning_film.shift_fc.bias"])
            torch.testing.assert_close(ctx.pooled[i], x * (1 + scale) + shift + ident, rtol=1e-5, atol=1e-5)
    finally:
        reasoner.load_state_dict(fresh)


def test_generated_reasoning_pools_all_but_the_last_token_as_dexvla_evaluate(dexvla):
    """DexVLA's evaluate() pools generate()'s hidden states: prompt + every generated token but the last."""
    from vlaforge.heads.reasoning import Reasoner
    from vlaforge.processors import collate

    policy = dexvla["policy"]
    reasoner = Reasoner(policy.cfg.reasoning.replace(max_tokens=3), dexvla["hidden"])
    reasoner.load_state_dict(policy.reasoner.state_dict())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in reasoner.film.parameters():  # a non-zero FiLM, so the pooled reasoning shows in the condition
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    rng = np.random.default_rng(1)
    obs = {image_key(c): rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for c in CAMS}
    obs.update({OBS_STATE: np.zeros(STATE_DIM, np.float32), "task": "fold the shirt"})
    batch = collate([policy.inputs(dict(obs))])
    with torch.no_grad():
        ctx = policy.backbone.encode(batch, use_cache=True)
        prompt = ctx.pooled.clone()
        ids = reasoner.generate(ctx, eos_id=None)  # a random LM: three tokens, no EOS
        long_ids = torch.cat([batch["input_ids"], ids[:, :2]], 1)
        longer = dict(batch, input_ids=long_ids, attention_mask=torch.ones_like(long_ids))
        fed = policy.backbone.encode(longer).hidden[:, -2:]  # the two generated tokens that were fed back
        want = reasoner.modulate(prompt, fed.mean(1))
    torch.testing.assert_close(ctx.pooled, want, rtol=1e-4, atol=1e-5)


def test_dexvla_unnormalisation_and_state_normalisation_on_fixed_arrays(dexvla):
    policy, st = dexvla["policy"], dexvla["stats"]
    y = np.linspace(-1, 1, CHUNK * ACTION_DIM, dtype=np.float32).reshape(1, CHUNK, ACTION_DIM)
    want = ((y + 1) / 2) * (st["action_max"] - st["action_min"]) + st["action_min"]  # smart_eval_agilex post_process
    np.testing.assert_allclose(policy.outputs({ACTION: y})[ACTION], want, rtol=1e-5, atol=1e-5)
    qpos = np.linspace(-3, 3, STATE_DIM, dtype=np.float32)
    norm = next(s for s in policy.inputs.steps if type(s).__name__ == "Normalize")
    got = norm({OBS_STATE: qpos.copy()})[OBS_STATE]
    np.testing.assert_allclose(got, (qpos - st["qpos_mean"]) / st["qpos_std"], rtol=1e-5, atol=1e-5)


def test_imported_vlm_is_the_base_checkpoint_and_dexvla_conventions(dexvla):
    policy, base_sd = dexvla["policy"], dexvla["base_sd"]
    ours = policy.backbone.model.state_dict()
    for k, v in base_sd.items():  # hub names: model.* is the language model, visual.* the ViT
        name = k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else "model." + k
        torch.testing.assert_close(ours[name], v.to(torch.bfloat16).float(), rtol=0, atol=0)
    emb = ours["model.language_model.embed_tokens.weight"]
    torch.testing.assert_close(ours["lm_head.weight"], emb, rtol=0, atol=0)  # tied
    hf = policy.backbone.model.config
    assert hf.text_config.rope_parameters["mrope_section"] == hf_dirs.MROPE["mrope_section"]
    cfg = policy.cfg
    assert (cfg.head.type, cfg.head.condition, cfg.head.time_precision, cfg.head.cross_attention) == (
        "dit", "combine", "bfloat16", False)
    assert (cfg.head.num_steps, cfg.head.num_train_timesteps, cfg.reasoning.film, cfg.backbone.readout) == (
        10, 100, "projected", "mean")
    assert (cfg.chunk, cfg.action_dim, cfg.state_dim, cfg.cameras) == (CHUNK, ACTION_DIM, STATE_DIM, CAMS)
    notes = (dexvla["ckpt"] / "IMPORTED.md").read_text()
    assert "CC BY-NC 4.0" in notes and "Apache-2.0" in notes


def test_imported_dexvla_predicts_and_fine_tunes_with_init_from(dexvla, tmp_path):
    from helpers import write_dataset
    from vlaforge.train.config import DataConfig, TrainConfig
    from vlaforge.train.trainer import train

    policy, st = dexvla["policy"], dexvla["stats"]
    rng = np.random.default_rng(0)
    obs = {image_key(c): rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for c in CAMS}
    obs.update({OBS_STATE: st["qpos_mean"], "task": "fold the shirt"})
    cfg = policy.cfg.replace(reasoning=policy.cfg.reasoning.replace(max_tokens=4))
    short = VLAPolicy(cfg, assets=dexvla["ckpt"] / "tokenizer")
    short.load_state_dict(policy.state_dict())
    short.make_pipelines(None, policy.robot, dataset_stats=policy.dataset_stats, unnorm_key=policy.unnorm_key)
    acts = short.predict_actions([obs], seed=0)
    assert acts.shape == (1, CHUNK, ACTION_DIM) and np.isfinite(acts).all()
    assert (acts >= st["action_min"] - 1e-4).all() and (acts <= st["action_max"] + 1e-4).all()  # clipped x0
    data = tmp_path / "data"
    write_dataset(data, cams=CAMS, state_dim=STATE_DIM, action_dim=ACTION_DIM)
    out = train(TrainConfig(data=DataConfig(path=str(data), shift_pad=0), init_from=str(dexvla["ckpt"]),
                            out=str(tmp_path / "run"), steps=2, batch_size=2, save_every=2, log_every=1, threads=1),
                show_progress=False)
    tuned = VLAPolicy.from_pretrained(out)
    before = dict(policy.head.named_parameters())
    moved = [k for k, v in tuned.head.named_parameters() if not torch.equal(v, before[k])]
    assert moved and tuned.cfg.head.condition == "combine" and tuned.cfg.reasoning.film == "projected"
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(ln["loss"]) for ln in lines if "loss" in ln)


def test_dexvla_import_refusals(dexvla, tmp_path):
    root = dexvla["root"]
    with pytest.raises(LayoutError, match="pass --base QWEN2VL_DIR"):
        import_dexvla(root / "scale_dp")
    bad = tmp_path / "bad.ckpt"
    torch.save({"model": {"x": torch.zeros(1)}}, bad)
    with pytest.raises(LayoutError, match=r"under \['nets'\]\['nets'\]"):
        import_dexvla(bad, base=dexvla["base"])
    other = tmp_path / "other.ckpt"
    released.write_scaledp(other, dexvla["hidden"] + 8, ACTION_DIM, STATE_DIM, CHUNK)  # trained for a wider VLM
    with pytest.raises(LayoutError, match="combine maps to 136, the VLM's hidden size is 128"):
        import_dexvla(other, base=dexvla["base"])
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"action_min": np.zeros(2), "x": os.system}))  # (importing ray replaces print)
    with pytest.raises(LayoutError, match=r"refusing to unpickle (posix|nt|os)\.system"):
        import_dexvla(root / "scale_dp", base=dexvla["base"], stats=evil)
