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
    """The joint reference on a vlaforge policy's weights: its prefix is [images, bos, prompt, pads]."""
    m = policy.backbone.model
    vw = {k: v.float() for k, v in m.state_dict().items()}
    hw = {k: v.float() for k, v in policy.head.state_dict().items()}
    with torch.no_grad():
        views = [m.model.multi_modal_projector(m.model.vision_tower((batch[f"observation.images.{c}"] - 0.5) / 0.5)
                                               .last_hidden_state) for c in policy.cfg.cameras]
    bos = torch.full((x_t.shape[0], 1), policy.backbone.tokenizer.bos_token_id)
    ids = torch.cat([bos, batch["input_ids"]], 1)
    pad = torch.cat([torch.ones(ids.shape[0], sum(v.shape[1] for v in views) + 1), batch["attention_mask"].float()], 1)
    return ref_joint(vw, hw, views, ids, pad, x_t, t, batch.get("observation.state"), pi05)


def ref_joint(vw, hw, views, ids, ppad, x_t, t, state, pi05):
    """openpi's joint forward: [images, prompt tokens] then [state?, actions] through both transformers layer by
    layer, mask ``cumsum(ar)[k] <= cumsum(ar)[q]`` and both real, positions ``cumsum(pad) - 1``; no cache.
    ``vw``: the VLM in transformers' names (``model.language_model.*``), ``hw``: the expert (``layers.i.*``, ``norm``,
    the projections)."""
    emb = vw.get("model.language_model.embed_tokens.weight", vw.get("lm_head.weight"))
    prefix = torch.cat([*views, emb[ids] * math.sqrt(emb.shape[1])], 1)
    model_dim = hw["action_in_proj.weight"].shape[1]
    suffix, cond, ar_s = ref_suffix(hw, x_t, t, state, pi05, model_dim)
    pad = torch.cat([ppad, torch.ones(suffix.shape[:2])], 1).bool()
    cum = torch.cumsum(torch.tensor([0] * prefix.shape[1] + ar_s), 0)
    mask = (cum[None, :] <= cum[:, None])[None] & pad[:, None, :] & pad[:, :, None]
    pos = torch.cumsum(pad.long(), 1) - 1
    xs = [prefix, suffix]
    names = [("model.language_model.layers.{}.", vw, None), ("layers.{}.", hw, cond)]
    for i in range(len({k.split(".")[1] for k in hw if k.startswith("layers.")})):
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


# ---------------------------------------------------------------- vlaforge import openpi
STATS = {"state": {"mean": [0.1, -0.2, 0.3, 0.0], "std": [0.5, 1.5, 0.2, 2.0], "q01": [-0.8, -2.0, 0.0, -3.0],
                   "q99": [1.0, 1.6, 0.7, 3.5]},
         "actions": {"mean": [0.05, 0.0, -0.1, 0.5], "std": [0.3, 0.8, 1.2, 0.6], "q01": [-0.5, -1.5, -2.0, -0.2],
                     "q99": [0.6, 1.4, 1.9, 1.1]}}


def write_openpi_checkpoint(root, pi05: bool):
    """A tiny openpi PyTorch checkpoint in the original layout: ``PI0Pytorch``'s state-dict names (transformers 4.53
    PaliGemma under ``paligemma_with_expert.paligemma.``, the expert under ``.gemma_expert.``), only the tied
    ``lm_head`` kept (as ``save_model`` does), ``config.json`` and ``assets/libero/norm_stats.json``.
    Returns the source PaliGemma module (for image features) and the source tensors."""
    from safetensors.torch import save_file
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    from vlaforge.backbones.tokenizer import build_tokenizer

    tok = build_tokenizer(extra_special=("<image>",))
    tok.save_pretrained(str(root / "tokenizer"))
    vocab, d, w, hd, da = 520, 64, 48, 16, 32
    text = dict(model_type="gemma", hidden_size=d, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=hd, vocab_size=vocab, hidden_activation="gelu_pytorch_tanh",
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=1, image_size=32, patch_size=8, vision_use_head=False, projection_dim=d)
    torch.manual_seed(11)
    pg = PaliGemmaForConditionalGeneration(PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=d,
                                                           image_token_id=vocab)).eval()
    with torch.no_grad():  # no zero-initialised norms
        for k, v in pg.named_parameters():
            if "norm" in k:
                v.add_(0.2 * torch.randn_like(v))
    sd = {}
    for k, v in pg.state_dict().items():
        if k == "model.language_model.embed_tokens.weight":
            continue
        k = k.replace("model.vision_tower.", "model.vision_tower.vision_model.")
        sd["paligemma_with_expert.paligemma." + k] = v.clone()
    g = torch.Generator().manual_seed(12)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    ex = "paligemma_with_expert.gemma_expert."
    norm = (lambda p: {p + "dense.weight": r(3 * w, w), p + "dense.bias": r(3 * w)}) if pi05 else \
        (lambda p: {p + "weight": r(w)})
    for i in range(2):
        p = f"{ex}model.layers.{i}."
        sd.update({p + "self_attn.q_proj.weight": r(2 * hd, w), p + "self_attn.k_proj.weight": r(hd, w),
                   p + "self_attn.v_proj.weight": r(hd, w), p + "self_attn.o_proj.weight": r(w, 2 * hd),
                   p + "mlp.gate_proj.weight": r(80, w), p + "mlp.up_proj.weight": r(80, w),
                   p + "mlp.down_proj.weight": r(w, 80), **norm(p + "input_layernorm."),
                   **norm(p + "post_attention_layernorm.")})
    sd.update({**norm(ex + "model.norm."), ex + "lm_head.weight": r(vocab, w), "action_in_proj.weight": r(w, da),
               "action_in_proj.bias": r(w), "action_out_proj.weight": r(da, w), "action_out_proj.bias": r(da)})
    if pi05:
        sd.update({"time_mlp_in.weight": r(w, w), "time_mlp_in.bias": r(w), "time_mlp_out.weight": r(w, w),
                   "time_mlp_out.bias": r(w)})
    else:
        sd.update({"state_proj.weight": r(w, da), "state_proj.bias": r(w), "action_time_mlp_in.weight": r(w, 2 * w),
                   "action_time_mlp_in.bias": r(w), "action_time_mlp_out.weight": r(w, w),
                   "action_time_mlp_out.bias": r(w)})
    src = root / "src"
    (src / "assets" / "libero").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"action_dim": da, "action_horizon": 4, "paligemma_variant": "dummy",
                                                 "action_expert_variant": "dummy", "precision": "float32"}))
    (src / "assets" / "libero" / "norm_stats.json").write_text(json.dumps({"norm_stats": STATS}))
    return pg, sd, tok


def write_lerobot_checkpoint(root, sd, pi05: bool):
    """The same weights in LeRobot's layout: ``model.`` prefix, ``embed_tokens`` copied from ``lm_head``, pi0.5's time
    MLP under pi0's ``action_time_mlp_*`` names (as some conversions have it), config.json and processor files."""
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file

    dst = root / "lerobot"
    dst.mkdir()
    out = {"model." + (k.replace("time_mlp_", "action_time_mlp_") if pi05 else k): v for k, v in sd.items()}
    out["model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"] = \
        sd["paligemma_with_expert.paligemma.lm_head.weight"]
    save_file({k: v.contiguous().clone() for k, v in out.items()}, str(dst / "model.safetensors"))
    mode = "QUANTILES" if pi05 else "MEAN_STD"
    feats = {f"observation.images.{c}": {"type": "VISUAL", "shape": [3, 224, 224]}
             for c in ("base_0_rgb", "left_wrist_0_rgb")}
    (dst / "config.json").write_text(json.dumps({
        "type": "pi05" if pi05 else "pi0", "chunk_size": 4, "n_action_steps": 2, "max_state_dim": 32,
        "input_features": {**feats, "observation.state": {"type": "STATE", "shape": [4]}},
        "output_features": {"action": {"type": "ACTION", "shape": [4]}},
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": mode, "ACTION": mode}}))
    flat = {f"{ours}.{n}": np.asarray(v, dtype=np.float32) for ours, theirs in (("observation.state", "state"),
            ("action", "actions")) for n, v in STATS[theirs].items()}
    save_np(flat, str(dst / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    steps = [{"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
             {"registry_name": "normalizer_processor", "config": {"eps": 1e-8},
              "state_file": "policy_preprocessor_step_3_normalizer_processor.safetensors"}]
    (dst / "policy_preprocessor.json").write_text(json.dumps({"name": "policy_preprocessor", "steps": steps}))
    return dst


@pytest.mark.parametrize("source", ["openpi", "lerobot"])
@pytest.mark.parametrize("pi05", [False, True], ids=["pi0", "pi05"])
def test_released_checkpoint_imports_and_acts_as_the_reference(tmp_path, pi05, source):
    from vlaforge.cli.main import main

    pg, sd, tok = write_openpi_checkpoint(tmp_path, pi05)
    src = tmp_path / "src" if source == "openpi" else write_lerobot_checkpoint(tmp_path, sd, pi05)
    out = tmp_path / "ckpt"
    assert main(["import", source, str(src), "--out", str(out), "--tokenizer", str(tmp_path / "tokenizer"),
                 "--dtype", "float32", "--cameras", "base_0_rgb,left_wrist_0_rgb"]) == 0
    policy = VLAPolicy.from_pretrained(out)
    assert policy.cfg.chunk == 4 and policy.cfg.action_dim == 4 and policy.cfg.head.model_action_dim == 32
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in ("base_0_rgb", "left_wrist_0_rgb")}
    state = np.array([0.4, -1.0, 0.5, 1.0], dtype=np.float32)
    task = "pick up the red block"
    acts = policy.predict_action(images, task, state, seed=5)

    # normalization on fixed arrays, the source's formulas: mean/std (pi0) or q01/q99 (pi0.5); openpi adds 1e-6 to
    # the std / range, LeRobot 1e-8 to the std only
    eps_std, eps_q = (1e-6, 1e-6) if source == "openpi" else (1e-8, 0.0)
    s, a = ({k: np.asarray(v, dtype=np.float64) for k, v in STATS[n].items()} for n in ("state", "actions"))
    state_n = (state - s["q01"]) / (s["q99"] - s["q01"] + eps_q) * 2 - 1 if pi05 else (state - s["mean"]) / (
        s["std"] + eps_std)
    got = policy.inputs.steps[1]({"observation.state": state.copy()})["observation.state"]
    np.testing.assert_allclose(got, state_n, rtol=1e-5, atol=1e-6)

    def unnorm(y):
        return (y + 1) / 2 * (a["q99"] - a["q01"] + eps_q) + a["q01"] if pi05 else y * (a["std"] + eps_std) + a["mean"]

    y = np.linspace(-1, 1, 4)[None].repeat(3, 0)
    np.testing.assert_allclose(policy.outputs({"action": y.astype(np.float32)})["action"], unnorm(y), rtol=1e-5,
                               atol=1e-6)

    # the reference: openpi's prompt, [-1, 1] pixels, the source tensors, 10 Euler steps of the joint forward
    if pi05:
        bins = " ".join(str(i) for i in np.digitize(state_n, np.linspace(-1, 1, 257)[:-1]) - 1)
        ids = [tok.bos_token_id, *tok(f"Task: {task}, State: {bins};\nAction: ", add_special_tokens=False)["input_ids"]]
    else:
        ids = [tok.bos_token_id, *tok(task, add_special_tokens=False)["input_ids"],
               *tok("\n", add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        views = [pg.model.multi_modal_projector(pg.model.vision_tower(
            torch.from_numpy(images[c]).permute(2, 0, 1)[None].float() / 255 * 2 - 1).last_hidden_state)
            for c in ("base_0_rgb", "left_wrist_0_rgb")]
    pre = "paligemma_with_expert.paligemma."
    vw = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    hw = {k.removeprefix("paligemma_with_expert.gemma_expert.model."): v for k, v in sd.items()
          if not k.startswith(pre) and "lm_head" not in k}
    ids_t = torch.tensor([ids])
    pad = torch.ones(1, sum(v.shape[1] for v in views) + len(ids))
    st = torch.tensor(state_n, dtype=torch.float32)[None]
    x = torch.randn((1, 4, 32), generator=torch.Generator().manual_seed(5))
    tt = torch.tensor(1.0)
    for _ in range(10):
        x = x + torch.tensor(-0.1) * ref_joint(vw, hw, views, ids_t, pad, x, tt.expand(1), st, pi05)
        tt = tt + torch.tensor(-0.1)
    np.testing.assert_allclose(acts, unnorm(x[0, :, :4].double().numpy()), rtol=1e-5, atol=1e-5)

    if source == "openpi" and not pi05:  # served over the openpi-style websocket: the in-process actions
        from vlaforge.inference import LocalPolicy
        from vlaforge.serve.client import RemotePolicy
        from vlaforge.serve.server import PolicyServer, ServeConfig, ServerThread

        obs = {**{f"observation.images.{c}": v for c, v in images.items()}, "observation.state": state, "task": task}
        with ServerThread(PolicyServer(LocalPolicy.load(out), ServeConfig(checkpoint=str(out), port=0))) as thread, \
                RemotePolicy(thread.url) as remote:
            served = remote.infer(dict(obs))["actions"]
        np.testing.assert_allclose(served, LocalPolicy.load(out).infer(dict(obs))["actions"], rtol=1e-6, atol=1e-7)


def test_openpi_import_refuses_a_foreign_layout_in_one_line(tmp_path):
    from safetensors.torch import save_file

    from vlaforge.weights.common import LayoutError
    from vlaforge.weights.openpi import import_openpi

    write_openpi_checkpoint(tmp_path, pi05=False)
    with pytest.raises(LayoutError, match="--tokenizer"):
        import_openpi(tmp_path / "src")
    foreign = {"vision_backbone.featurizer.cls_token": torch.zeros(1, 1, 8)}  # an OpenVLA key
    save_file(foreign, str(tmp_path / "src" / "model.safetensors"))
    with pytest.raises(LayoutError, match="not pi0 / pi0.5 weights") as e:
        import_openpi(tmp_path / "src", tokenizer=str(tmp_path / "tokenizer"))
    assert "\n" not in str(e.value)
