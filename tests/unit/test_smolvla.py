"""SmolVLA: the expert on the prefix cache equals a joint no-cache forward written here from the documented
architecture; a tiny LeRobot checkpoint written in its original layout imports to the same actions; the tiny
preset trains.

The reference below follows LeRobot's ``smolvlm_with_expert.py`` / ``modeling_smolvla.py`` as documented (no code
of vlaforge's is called): the VLM's text layers and the expert run layer by layer over [prefix ; suffix] with the
big_vision block mask (images + prompt bidirectional, state after them, actions causal), RoPE (base 10000) from the
cumulative pad mask, cross-attention layers re-projecting the VLM's post-RoPE keys/values through the expert's
k/v projections with queries at positions 0..H-1, float32 attention. Only the vision tower + connector come from
transformers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

from vlaforge.backbones.smolvlm import SPECIAL
from vlaforge.backbones.tokenizer import build_tokenizer
from vlaforge.types import ACTION, OBS_STATE, image_key

VLM = "model.vlm_with_expert.vlm."
EXP = "model.vlm_with_expert.lm_expert."
D, HEADS, KV, HD, LAYERS, KEEP, IMG = 64, 4, 2, 16, 4, 2, 32
EXPERT_W = 48  # 0.75 x 64
EXPERT_MLP = 256  # 4 x int(2/3 x 48) = 128, rounded up to a multiple of 256
MAX_DIM, CHUNK, STATE, ACT = 32, 5, 3, 4
CAMS = ("top", "wrist")
TASK = "pick up the cube"


def tiny_vlm_config(vocab: int) -> SmolVLMConfig:
    return SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=IMG, patch_size=8),
        text_config=dict(model_type="llama", hidden_size=D, intermediate_size=128, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HD, vocab_size=vocab,
                         rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=False),
        scale_factor=2, tie_word_embeddings=False)


def write_lerobot_smolvla(root, seed: int = 0):
    """A LeRobot SmolVLA policy directory (truncated VLM, expert, projections, processors) and the VLM snapshot."""
    g = torch.Generator().manual_seed(seed)
    vlm_dir, src = root / "SmolVLM2", root / "smolvla"
    vlm_dir.mkdir(parents=True)
    src.mkdir()
    tok = build_tokenizer(extra_special=SPECIAL)
    tok.save_pretrained(str(vlm_dir))
    cfg = tiny_vlm_config(vocab=1024)
    (vlm_dir / "config.json").write_text(cfg.to_json_string())
    vlm = SmolVLMForConditionalGeneration(cfg)
    sd = {}
    for k, v in vlm.state_dict().items():  # LeRobot keeps the first KEEP text layers only
        if ".text_model.layers." in k and int(k.split(".text_model.layers.")[1].split(".")[0]) >= KEEP:
            continue
        noise = torch.randn(v.shape, generator=g) * 0.1
        sd[VLM + k] = (1 + noise) if k.endswith("norm.weight") or "layernorm" in k else noise
    lin = lambda o, i: torch.randn(o, i, generator=g) / math.sqrt(i)  # noqa: E731
    for i in range(KEEP):
        p = f"{EXP}layers.{i}."
        kv_in = EXPERT_W if i % 2 == 0 else KV * HD  # cross layers re-project the VLM's keys / values
        shapes = {"self_attn.q_proj": (HEADS * HD, EXPERT_W), "self_attn.k_proj": (KV * HD, kv_in),
                  "self_attn.v_proj": (KV * HD, kv_in), "self_attn.o_proj": (EXPERT_W, HEADS * HD),
                  "mlp.gate_proj": (EXPERT_MLP, EXPERT_W), "mlp.up_proj": (EXPERT_MLP, EXPERT_W),
                  "mlp.down_proj": (EXPERT_W, EXPERT_MLP)}
        sd |= {f"{p}{name}.weight": lin(*shape) for name, shape in shapes.items()}
        sd |= {f"{p}{name}.weight": 1 + 0.1 * torch.randn(EXPERT_W, generator=g)
               for name in ("input_layernorm", "post_attention_layernorm")}
    sd[EXP + "norm.weight"] = 1 + 0.1 * torch.randn(EXPERT_W, generator=g)
    for name, (o, i) in {"state_proj": (D, MAX_DIM), "action_in_proj": (EXPERT_W, MAX_DIM),
                         "action_out_proj": (MAX_DIM, EXPERT_W), "action_time_mlp_in": (EXPERT_W, 2 * EXPERT_W),
                         "action_time_mlp_out": (EXPERT_W, EXPERT_W)}.items():
        sd[f"model.{name}.weight"], sd[f"model.{name}.bias"] = lin(o, i), 0.1 * torch.randn(o, generator=g)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src / "model.safetensors"))
    features = {image_key(c): {"type": "VISUAL", "shape": [3, 24, 40]} for c in CAMS}
    features[OBS_STATE] = {"type": "STATE", "shape": [STATE]}
    (src / "config.json").write_text(json.dumps({
        "type": "smolvla", "n_obs_steps": 1, "chunk_size": CHUNK, "n_action_steps": CHUNK, "input_features": features,
        "output_features": {ACTION: {"type": "ACTION", "shape": [ACT]}},
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
        "max_state_dim": MAX_DIM, "max_action_dim": MAX_DIM, "resize_imgs_with_padding": [IMG, IMG],
        "empty_cameras": 0, "adapt_to_pi_aloha": False, "tokenizer_max_length": 48, "num_steps": 10,
        "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct", "add_image_special_tokens": False,
        "attention_mode": "cross_attn", "prefix_length": -1, "num_expert_layers": -1, "num_vlm_layers": KEEP,
        "self_attn_every_n_layers": 2, "expert_width_multiplier": 0.75, "min_period": 4e-3, "max_period": 4.0}))
    rng = np.random.default_rng(seed)
    stats = {"state": {"mean": rng.normal(size=STATE), "std": rng.uniform(0.5, 2, STATE)},
             "action": {"mean": rng.normal(size=ACT), "std": rng.uniform(0.5, 2, ACT)}}
    for name, step, key in (("policy_preprocessor", "normalizer_processor", OBS_STATE),
                            ("policy_postprocessor", "unnormalizer_processor", ACTION)):
        s = stats["state" if key == OBS_STATE else "action"]
        state_file = f"{name}_step_1_{step}.safetensors"
        save_file({f"{key}.{n}": torch.tensor(v, dtype=torch.float32) for n, v in s.items()}, str(src / state_file))
        (src / f"{name}.json").write_text(json.dumps({"name": name, "steps": [
            {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
            {"registry_name": step, "config": {"eps": 1e-8}, "state_file": state_file}]}))
    return src, vlm_dir, sd, stats, tok


# ---------------------------------------------------------------- the reference (documented architecture)
def rms(x, w, eps=1e-5):
    x = x.float()
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, pos):
    half = x.shape[-1] // 2
    timescale = 10000.0 ** (torch.arange(half, dtype=torch.float32) * 2 / x.shape[-1])
    r = pos.float()[..., None, None] / timescale
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * r.cos() - x2 * r.sin(), x2 * r.cos() + x1 * r.sin()], -1)


def attention(q, k, v, mask):  # q (B, Lq, H, hd), k/v (B, Lk, KV, hd), mask (B, Lq, Lk) -> (B, Lq, H*hd)
    k, v = (t.repeat_interleave(HEADS // KV, 2) for t in (k, v))
    w = torch.einsum("bqhd,bkhd->bhqk", q, k) * HD**-0.5
    w = torch.where(mask[:, None], w, torch.finfo(torch.float32).min).softmax(-1)
    return torch.einsum("bhqk,bkhd->bqhd", w, v).flatten(2)


def mlp(x, w, p):
    return F.linear(F.silu(F.linear(x, w[p + "gate_proj.weight"])) * F.linear(x, w[p + "up_proj.weight"]),
                    w[p + "down_proj.weight"])


def sincos(t, dim):
    frac = torch.linspace(0, 1, dim // 2, dtype=torch.float64)
    period = 4e-3 * (4.0 / 4e-3) ** frac
    a = t.double()[:, None] * 2 * math.pi / period
    return torch.cat([a.sin(), a.cos()], -1).float()


def ref_velocity(w, prefix, pad, att, x, t):
    """One joint forward over [prefix ; suffix] without a cache -> velocity (B, H, MAX_DIM)."""
    a = F.linear(x, w["model.action_in_proj.weight"], w["model.action_in_proj.bias"])
    h = torch.cat([a, sincos(t, EXPERT_W)[:, None].expand_as(a)], -1)
    h = F.linear(h, w["model.action_time_mlp_in.weight"], w["model.action_time_mlp_in.bias"])
    s = F.linear(F.silu(h), w["model.action_time_mlp_out.weight"], w["model.action_time_mlp_out.bias"])
    b, p, n = prefix.shape[0], prefix.shape[1], s.shape[1]
    pad_all = torch.cat([pad, torch.ones(b, n, dtype=torch.bool)], 1)
    cum = torch.cat([att, torch.ones(b, n, dtype=torch.long)], 1).cumsum(1)
    mask = (cum[:, None, :] <= cum[:, :, None]) & pad_all[:, None, :] & pad_all[:, :, None]
    pos = pad_all.long().cumsum(1) - 1
    hp = prefix
    for i in range(KEEP):
        v, e = f"{VLM}model.text_model.layers.{i}.", f"{EXP}layers.{i}."
        xp = rms(hp, w[v + "input_layernorm.weight"])
        qp, kp, vp = (F.linear(xp, w[f"{v}self_attn.{n}_proj.weight"]).view(b, p, -1, HD) for n in "qkv")
        qp, kp = rope(qp, pos[:, :p]), rope(kp, pos[:, :p])
        xs = rms(s, w[e + "input_layernorm.weight"])
        qs = F.linear(xs, w[e + "self_attn.q_proj.weight"]).view(b, n, -1, HD)
        if i % 2 == 0:  # self-attention: one joint attention over prefix and actions
            ks = rope(F.linear(xs, w[e + "self_attn.k_proj.weight"]).view(b, n, -1, HD), pos[:, p:])
            vs = F.linear(xs, w[e + "self_attn.v_proj.weight"]).view(b, n, -1, HD)
            out = attention(torch.cat([qp, rope(qs, pos[:, p:])], 1), torch.cat([kp, ks], 1),
                            torch.cat([vp, vs], 1), mask)
            op, os_ = out[:, :p], out[:, p:]
        else:  # cross-attention: the VLM alone; the expert re-projects its post-RoPE keys and values
            op = attention(qp, kp, vp, mask[:, :p, :p])
            ks = F.linear(kp.flatten(2), w[e + "self_attn.k_proj.weight"]).view(b, p, -1, HD)
            vs = F.linear(vp.flatten(2), w[e + "self_attn.v_proj.weight"]).view(b, p, -1, HD)
            qpos = pos[:, p:] - pos[:, p:].min(1, keepdim=True).values
            os_ = attention(rope(qs, qpos), ks, vs, mask[:, p:, :p])
        hp = hp + F.linear(op, w[v + "self_attn.o_proj.weight"])
        hp = hp + mlp(rms(hp, w[v + "post_attention_layernorm.weight"]), w, v + "mlp.")
        s = s + F.linear(os_, w[e + "self_attn.o_proj.weight"])
        s = s + mlp(rms(s, w[e + "post_attention_layernorm.weight"]), w, e + "mlp.")
    return F.linear(rms(s, w[EXP + "norm.weight"]), w["model.action_out_proj.weight"], w["model.action_out_proj.bias"])


def resize_pad_topleft(img, size):  # uint8 (H, W, 3) -> (3, size, size) in [0, 1], pad left/top with black
    x = torch.from_numpy(img).float().permute(2, 0, 1)[None] / 255
    h, w = x.shape[-2:]
    ratio = max(w / size, h / size)
    x = F.interpolate(x, size=(int(h / ratio), int(w / ratio)), mode="bilinear", align_corners=False)
    return F.pad(x, (size - x.shape[-1], 0, size - x.shape[-2], 0))[0]


def ref_prefix(w, cfg, images, ids, text_mask, state):
    """Prefix embeddings, pad mask and block starts: [image tokens ...] [prompt] [state]."""
    vlm = SmolVLMForConditionalGeneration(cfg)
    vlm.model.text_model.layers = vlm.model.text_model.layers[:KEEP]
    vlm.load_state_dict({k[len(VLM):]: v for k, v in w.items() if k.startswith(VLM)})
    with torch.no_grad():
        feats = [vlm.model.connector(vlm.model.vision_model(pixel_values=im * 2 - 1).last_hidden_state) * D**0.5
                 for im in images]
    lang = F.embedding(ids, w[VLM + "model.text_model.embed_tokens.weight"]) * D**0.5
    st = F.linear(F.pad(state, (0, MAX_DIM - state.shape[1])), w["model.state_proj.weight"], w["model.state_proj.bias"])
    b = ids.shape[0]
    prefix = torch.cat([*feats, lang, st[:, None]], 1)
    n_img = sum(f.shape[1] for f in feats)
    pad = torch.cat([torch.ones(b, n_img, dtype=torch.bool), text_mask.bool(), torch.ones(b, 1, dtype=torch.bool)], 1)
    att = torch.zeros(b, prefix.shape[1], dtype=torch.long)
    att[:, -1] = 1
    return prefix, pad, att


def ref_sample(w, prefix, pad, att, noise, steps=10):
    x, dt = noise, -1.0 / steps
    for i in range(steps):
        x = x + dt * ref_velocity(w, prefix, pad, att, x, torch.full((x.shape[0],), 1.0 + i * dt))
    return x


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return write_lerobot_smolvla(tmp_path_factory.mktemp("smolvla"))


@pytest.fixture(scope="module")
def imported(released, tmp_path_factory):
    from vlaforge.policy import VLAPolicy
    from vlaforge.weights.common import write_checkpoint
    from vlaforge.weights.lerobot import import_lerobot

    src, vlm_dir = released[0], released[1]
    out = tmp_path_factory.mktemp("imported") / "ckpt"
    write_checkpoint(import_lerobot(src, dtype="float32", tokenizer=str(vlm_dir)), out)
    return VLAPolicy.from_pretrained(out)


def _batch(policy, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 500, (2, 7), generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    images = [torch.rand(2, 3, IMG, IMG, generator=g) for _ in CAMS]
    batch = {image_key(c): im for c, im in zip(CAMS, images, strict=True)}
    batch |= {"input_ids": ids, "attention_mask": mask, OBS_STATE: torch.randn(2, STATE, generator=g)}
    return batch, images


def test_cached_expert_equals_joint_forward_and_reference(released, imported):
    """One velocity and a whole 10-step Euler sample on the prefix cache equal the joint no-cache reference."""
    w, cfg = released[2], tiny_vlm_config(1024)
    batch, images = _batch(imported)
    prefix, pad, att = ref_prefix(w, cfg, images, batch["input_ids"], batch["attention_mask"], batch[OBS_STATE])
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, CHUNK, MAX_DIM, generator=g)
    with torch.no_grad():
        ctx = imported.encode(batch)
        assert ctx.kv_cache.get_seq_length() == prefix.shape[1]  # [images] [prompt + pads] [state]
        t = torch.tensor([0.3, 0.9])
        v = imported.head.velocity(noise, t, imported.head._prefix(ctx), ctx.mask, ctx.extras["prefix_next_position"])
        torch.testing.assert_close(v, ref_velocity(w, prefix, pad, att, noise, t), atol=1e-5, rtol=1e-5)
        actions = imported.sample(batch, noise=noise)
        expected = ref_sample(w, prefix, pad, att, noise)
    torch.testing.assert_close(actions, expected[..., :ACT], atol=1e-5, rtol=1e-5)
    assert ctx.kv_cache.get_seq_length() == prefix.shape[1]  # the expert never grows the cache


def test_import_lerobot_end_to_end_with_processors(released, imported):
    """Raw observations (non-square uint8 images, robot-unit state, the task) -> robot-unit actions, against the
    reference's own resize-with-pad (left/top), [-1, 1] pixels, task + newline, mean/std (std + 1e-8)."""
    _, _, w, stats, tok = released
    rng = np.random.default_rng(3)
    obs = {image_key(c): rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for c in CAMS}
    obs |= {OBS_STATE: rng.normal(size=STATE).astype(np.float32), "task": TASK}
    noise = torch.randn(1, CHUNK, MAX_DIM, generator=torch.Generator().manual_seed(2))
    got = imported.predict_actions([obs], noise=noise)[0]
    images = [resize_pad_topleft(obs[image_key(c)], IMG)[None] for c in CAMS]
    ids = torch.tensor([tok(TASK + "\n")["input_ids"]])
    s = stats["state"]
    state = torch.tensor((obs[OBS_STATE] - s["mean"]) / (s["std"] + 1e-8), dtype=torch.float32)[None]
    prefix, pad, att = ref_prefix(w, tiny_vlm_config(1024), images, ids, torch.ones_like(ids), state)
    with torch.no_grad():
        x = ref_sample(w, prefix, pad, att, noise)[0, :, :ACT].numpy()
    a = stats["action"]
    np.testing.assert_allclose(got, x * (a["std"] + 1e-8) + a["mean"], atol=1e-5, rtol=1e-5)
    assert imported.cfg.head.max_action_dim == MAX_DIM and imported.cfg.chunk == CHUNK
    assert (imported.cfg.normalization[OBS_STATE], imported.cfg.normalization[ACTION]) == ("mean_std", "mean_std")


def test_resize_with_pad_topleft_on_a_fixed_array():
    from vlaforge.processors.image import resize_image

    img = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10
    out = resize_image(img, 4, "pad_topleft")  # ratio 1: no resampling, two black rows on top
    assert out.shape == (3, 4, 4)
    np.testing.assert_array_equal(out[:, :2], 0)
    np.testing.assert_allclose(out[:, 2:], img.transpose(2, 0, 1) / 255, atol=1e-7)
    tall = resize_image(np.full((8, 4, 3), 255, np.uint8), 4, "pad_topleft")  # -> 4 x 2, black columns on the left
    np.testing.assert_array_equal(tall[:, :, :2], 0)
    np.testing.assert_allclose(tall[:, :, 2:], 1.0)


def test_import_refusals(released, tmp_path):
    from vlaforge.weights.common import LayoutError
    from vlaforge.weights.lerobot import import_lerobot

    src = released[0]
    with pytest.raises(LayoutError, match="--tokenizer"):
        import_lerobot(src)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"type": "act"}))
    with pytest.raises(LayoutError, match="policy type 'act'"):
        import_lerobot(bad)


def test_smolvla_tiny_trains_with_falling_loss(tmp_path):
    """vlaforge's trainer on the tiny preset: on learnable actions (one per instruction) the flow-matching loss on
    every frame (fixed noise and times) falls well below a fresh model's in 12 steps."""
    from helpers import TASKS, write_dataset
    from vlaforge.data.lerobot import LeRobotDataset
    from vlaforge.policy import VLAPolicy
    from vlaforge.presets import get_preset
    from vlaforge.processors.base import collate
    from vlaforge.train.trainer import train

    targets = {"open the drawer": [0.6, -0.4, 0.2, 0.8], "press the button from the top": [-0.5, 0.3, -0.7, -0.2]}
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    write_dataset(data, cams=("front",), extra_values=lambda i, n: {
        ACTION: (np.tile(targets[TASKS[i]], (n, 1)) + rng.normal(0, 0.02, (n, 4))).astype(np.float32)})
    cfg = get_preset("smolvla_tiny")
    assert cfg.policy.head.type == "smolvla_expert" and cfg.policy.backbone.lm_layers == 2
    policy = cfg.policy.replace(chunk=4, exec_steps=4, backbone=cfg.policy.backbone.replace(image_size=32))
    cfg = cfg.replace(policy=policy, data=cfg.data.replace(path=str(data)), out=str(tmp_path / "run"), steps=12,
                      batch_size=8, save_every=12, log_every=4, threads=1,
                      optim=cfg.optim.replace(lr=5e-3, warmup_steps=2))
    trained = VLAPolicy.from_pretrained(train(cfg, show_progress=False))
    reader = LeRobotDataset(data, chunk=4)
    every_frame = collate([trained.inputs(reader[i]) for i in range(len(reader))])
    torch.manual_seed(0)
    fresh = VLAPolicy(trained.cfg).eval()

    def loss(model):
        torch.manual_seed(1)
        with torch.no_grad():
            return model.loss(every_frame)["loss"].item()

    before, after = loss(fresh), loss(trained)
    assert after < 0.5 * before, (before, after)


def test_full_preset_is_the_published_architecture():
    from accelerate import init_empty_weights

    from vlaforge.policy import VLAPolicy
    from vlaforge.presets import PRESETS, get_preset

    cfg = get_preset("smolvla")
    assert PRESETS.get("smolvla").__doc__ and "GB" in PRESETS.get("smolvla").__doc__
    bb = cfg.policy.backbone
    assert (bb.size, bb.lm_layers, bb.embed_scale, bb.image_special_tokens) == ("500m", 16, True, False)
    assert (cfg.policy.chunk, cfg.policy.head.max_action_dim, cfg.precision) == (50, 32, "bf16")
    with init_empty_weights():
        policy = VLAPolicy(cfg.policy.replace(cameras=("top",), state_dim=6, action_dim=6))
    assert policy.backbone.lm_spec().num_layers == 16 and policy.backbone.image_size == 512
    assert policy.head.expert.width == 720 and len(policy.head.expert.layers) == 16
    assert policy.head.expert.layers[1].self_attn.k_proj.weight.shape == (320, 320)  # 5 kv heads x 64
    assert policy.head.expert.layers[0].mlp.gate_proj.weight.shape == (2048, 720)


def test_prefix_lm_block_mask_hides_the_state_token_from_images_and_prompt():
    """attention=prefix_lm with the state after the prompt: changing the state changes only the state token's
    output; changing the last prompt token changes the image tokens' outputs (they attend to the whole prompt)."""
    from vlaforge.backbones.base import BACKBONES

    bb = BACKBONES.get("smolvlm")(size="tiny", image_size=IMG, lm_layers=2, proprio="linear",
                                  proprio_position="after_prompt", attention="prefix_lm", image_special_tokens=False,
                                  embed_scale=True).build(["top"], STATE)
    g = torch.Generator().manual_seed(0)
    batch = {image_key("top"): torch.rand(1, 3, IMG, IMG, generator=g), OBS_STATE: torch.randn(1, STATE, generator=g),
             "input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    with torch.no_grad():
        h = bb.encode(batch).hidden
        moved = bb.encode({**batch, OBS_STATE: batch[OBS_STATE] + 1}).hidden
        reworded = bb.encode({**batch, "input_ids": torch.tensor([[5, 6, 8]])}).hidden
    torch.testing.assert_close(moved[:, :-1], h[:, :-1], rtol=0, atol=0)
    assert not torch.allclose(moved[:, -1], h[:, -1])
    assert not torch.allclose(reworded[:, 0], h[:, 0])  # the first image token sees the last prompt token
