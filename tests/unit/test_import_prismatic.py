"""`vlaforge import openvla`: a tiny checkpoint in OpenVLA's released layout gives OpenVLA's actions.

The reference below is written from the documented architecture (shared/reference/released_checkpoints.md and
OpenVLA's modeling/processing code as described there), not with vlaforge's modules: timm ViT blocks with fused
qkv and LayerScale, DINOv2's class/register tokens without a class position, the second-to-last block's patch
tokens, the GELU MLP projector, image patches after BOS, the ``▁`` token after the prompt, greedy decoding over
the whole vocabulary, ``vocab_size - id`` bins, and q01/q99 un-normalisation with the mask. The language model
is transformers' own Llama loaded from the original ``language_model.*`` weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

import released
from vlaforge.policy import VLAPolicy
from vlaforge.types import image_key
from vlaforge.weights.common import LayoutError, write_checkpoint
from vlaforge.weights.openvla import import_openvla

DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _original(path):
    sd = {}
    for f in sorted(path.glob("model-*.safetensors")):
        sd.update({k: v.float() for k, v in load_file(f).items()})
    return sd


def _vit(sd, prefix, x, dino):
    """timm ViT forward up to the second-to-last block, prefix tokens dropped."""
    w = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    depth = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    p = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=released.PATCH)
    h = p.flatten(2).transpose(1, 2) + w["pos_embed"]
    b, _, d = h.shape
    if dino:
        h = torch.cat([w["cls_token"].expand(b, -1, -1), w["reg_token"].expand(b, -1, -1), h], 1)
    hd = d // released.HEADS
    for i in range(depth - 1):
        blk = {k[len(f"blocks.{i}."):]: v for k, v in w.items() if k.startswith(f"blocks.{i}.")}
        y = F.layer_norm(h, (d,), blk["norm1.weight"], blk["norm1.bias"], eps=1e-6)
        q, k, v = (F.linear(y, blk["attn.qkv.weight"], blk["attn.qkv.bias"]).view(b, -1, 3, released.HEADS, hd)
                   .permute(2, 0, 3, 1, 4))
        att = ((q @ k.transpose(-1, -2)) * hd**-0.5).softmax(-1) @ v
        a = F.linear(att.transpose(1, 2).reshape(b, -1, d), blk["attn.proj.weight"], blk["attn.proj.bias"])
        h = h + (blk["ls1.scale_factor"] * a if dino else a)
        y = F.layer_norm(h, (d,), blk["norm2.weight"], blk["norm2.bias"], eps=1e-6)
        m = F.linear(F.gelu(F.linear(y, blk["mlp.fc1.weight"], blk["mlp.fc1.bias"])), blk["mlp.fc2.weight"],
                     blk["mlp.fc2.bias"])
        h = h + (blk["ls2.scale_factor"] * m if dino else m)
    return h[:, 5:] if dino else h


def _pixels(img):
    """OpenVLA's processor: PIL bicubic squash to the tower size, [0, 1]; per-tower normalization later."""
    small = Image.fromarray(img).resize((released.IMAGE, released.IMAGE), Image.BICUBIC)
    return torch.from_numpy(np.asarray(small)).float().div(255).permute(2, 0, 1)[None]


def _patches(sd, x):
    """Both towers on [0, 1] pixels, concatenated per patch, through the fused GELU projector."""
    dino = _vit(sd, "vision_backbone.featurizer.", (x - torch.tensor(DINO_MEAN).view(3, 1, 1))
                / torch.tensor(DINO_STD).view(3, 1, 1), dino=True)
    sig = _vit(sd, "vision_backbone.fused_featurizer.", (x - 0.5) / 0.5, dino=False)
    h = torch.cat([dino, sig], -1)
    for i in (1, 2, 3):
        h = F.linear(h, sd[f"projector.fc{i}.weight"], sd[f"projector.fc{i}.bias"])
        h = F.gelu(h) if i < 3 else h
    return h


def _llama(cfg, sd):
    lm = LlamaForCausalLM(LlamaConfig(**cfg["text_config"])).eval()
    lm.load_state_dict({k[len("language_model."):]: v for k, v in sd.items() if k.startswith("language_model.")})
    return lm


def reference(src, img, instruction, unnorm_key, n_actions):
    cfg = json.loads((src / "config.json").read_text())
    sd = _original(src)
    h = _patches(sd, _pixels(img))
    lm = _llama(cfg, sd)
    tok = released.llama_tokenizer()
    prompt = f"In: What action should the robot take to {instruction}?\nOut:"
    ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"], tok.convert_tokens_to_ids("▁")]
    emb = lm.get_input_embeddings()
    seq = torch.cat([emb(torch.tensor(ids[:1]))[None], h, emb(torch.tensor(ids[1:]))[None]], 1)
    out = []
    with torch.no_grad():
        for _ in range(n_actions):
            nxt = int(lm(inputs_embeds=seq).logits[0, -1].argmax())
            out.append(nxt)
            seq = torch.cat([seq, emb(torch.tensor([[nxt]]))], 1)
    bins = np.linspace(-1, 1, 256)
    centres = (bins[:-1] + bins[1:]) / 2
    a = centres[np.clip(tok.vocab_size - np.array(out) - 1, 0, 254)]
    st = cfg["norm_stats"][unnorm_key]["action"]
    lo, hi, mask = np.array(st["q01"]), np.array(st["q99"]), np.array(st["mask"])
    return h, out, np.where(mask, 0.5 * (a + 1) * (hi - lo) + lo, a)


@pytest.fixture(scope="module")
def openvla(tmp_path_factory):
    root = tmp_path_factory.mktemp("openvla")
    src = released.write_openvla(root / "src")
    ckpt = write_checkpoint(import_openvla(src, unnorm_key="fractal20220817_data", dtype="float32"), root / "ckpt")
    return src, ckpt


def test_imported_openvla_matches_the_reference_forward(openvla):
    src, ckpt = openvla
    policy = VLAPolicy.from_pretrained(ckpt)
    rng = np.random.default_rng(0)
    for shape in [(48, 64, 3), (32, 32, 3)]:  # a non-square frame is squashed, not letterboxed
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        task = "Pick up the red block"  # not lower-cased by OpenVLA
        feats, ids, actions = reference(src, img, task, "fractal20220817_data", 7)
        item = policy.inputs({image_key("primary"): img, "task": task})
        pix = torch.from_numpy(item[image_key("primary")])
        torch.testing.assert_close(pix[None], _pixels(img), rtol=0, atol=0)  # bicubic squash, exactly
        with torch.no_grad():
            ours = policy.backbone.embed_images(policy.backbone.normalize_images(pix[None]))
        scale = max(1.0, float(feats.abs().max()))  # fp32 round-off grows with the activations' size
        torch.testing.assert_close(ours, feats, rtol=1e-5, atol=1e-5 * scale)
        info: dict = {}
        got = policy.predict_actions([{image_key("primary"): img, "task": task}], info=info)[0, 0]
        assert info["token_ids"][0] == ids
        np.testing.assert_allclose(got, actions, rtol=1e-5, atol=1e-5)


def test_openvla_token_ids_and_bins_round_trip(openvla):
    _, ckpt = openvla
    policy = VLAPolicy.from_pretrained(ckpt)
    v = policy.backbone.tokenizer.vocab_size
    a = torch.tensor([-1.5, -1.0, -0.999, -0.5, 0.0, 0.3, 0.99, 1.0, 2.0], dtype=torch.float64)
    bins = np.linspace(-1, 1, 256)
    expected_ids = v - np.digitize(np.clip(a.numpy(), -1, 1), bins)  # OpenVLA: vocab_size - digitize
    k = policy.head.tokenizer.encode(a)
    assert policy.backbone.action_token_ids(256)[k].tolist() == expected_ids.tolist()
    centres = (bins[:-1] + bins[1:]) / 2
    decoded = policy.head.tokenizer.decode(k).numpy()
    np.testing.assert_allclose(decoded, centres[np.clip(v - expected_ids - 1, 0, 254)], atol=1e-7)
    # an id past the action range (e.g. <PAD>) or below it clips to the end bins, as OpenVLA's decode does
    ids = torch.tensor([v, v + 5, 3, v - 1, v - 256])
    assert policy.head._nearest_bin(ids, policy.backbone.action_token_ids(256)).tolist() == [0, 0, 255, 0, 255]


def test_openvla_unnormalization_uses_the_chosen_key_and_mask(openvla):
    src, ckpt = openvla
    st = json.loads((src / "config.json").read_text())["norm_stats"]
    policy = VLAPolicy.from_pretrained(ckpt)
    y = np.linspace(-1, 1, 7, dtype=np.float32)
    for key in ("fractal20220817_data", "bridge_orig"):
        p = VLAPolicy.from_pretrained(ckpt, unnorm_key=key) if key != policy.unnorm_key else policy
        s = st[key]["action"]
        lo, hi = np.array(s["q01"]), np.array(s["q99"])
        want = np.where(s["mask"], 0.5 * (y + 1) * (hi - lo) + lo, y)
        np.testing.assert_allclose(p.outputs({"action": y[None]})["action"][0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match=r"unnorm_key: expected one of \['bridge_orig', 'fractal20220817_data'\]"):
        VLAPolicy.from_pretrained(ckpt, unnorm_key="libero")


def test_openvla_import_refusals(tmp_path, openvla):
    src, _ = openvla
    with pytest.raises(LayoutError, match=r"choose one with --unnorm_key \(one of \['bridge_orig', 'fractal"):
        import_openvla(src)
    with pytest.raises(LayoutError, match=r"--unnorm_key 'libero': not in .*available: \['bridge_orig'"):
        import_openvla(src, unnorm_key="libero")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(LayoutError, match="model_type 'llava', expected 'openvla'"):
        import_openvla(bad)
    cfg = json.loads((src / "config.json").read_text())
    del cfg["norm_stats"]
    nostats = tmp_path / "nostats"
    nostats.mkdir()
    for f in src.iterdir():
        (nostats / f.name).write_bytes(f.read_bytes())
    (nostats / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LayoutError, match="no statistics"):
        import_openvla(nostats)


def _tf_center_crop(img, area):
    """TF ``crop_and_resize`` of the centre box with side sqrt(area) (bilinear), as OFT's LIBERO eval calls it,
    then TF's float -> uint8 conversion (x 255.5, truncated); via scipy's map_coordinates."""
    from scipy.ndimage import map_coordinates

    x = img.astype(np.float64) / 255.0
    h, w = x.shape[:2]
    off = (1 - np.sqrt(area)) / 2
    ys = off * (h - 1) + np.arange(h) * (1 - 2 * off) * (h - 1) / (h - 1)
    xs = off * (w - 1) + np.arange(w) * (1 - 2 * off) * (w - 1) / (w - 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    out = np.stack([map_coordinates(x[..., c], [yy, xx], order=1) for c in range(3)], -1)
    return np.floor(np.clip(out, 0, 1) * 255.5).clip(0, 255).astype(np.uint8)


def reference_oft(src, images, proprio, instruction, key):
    """OpenVLA-OFT's forward: both images' patches, the proprio token, the lower-cased prompt + ``▁``, chunk x
    action_dim zero embeddings and EOS, bidirectional attention, the shifted hidden-state slice, MLP-ResNet."""
    cfg = json.loads((src / "config.json").read_text())
    stats = json.loads((src / "dataset_statistics.json").read_text())[key]
    sd = _original(src)
    head = {k.removeprefix("module.model."): v for k, v in torch.load(
        src / "action_head--150000_checkpoint.pt", weights_only=True).items()}
    proj = {k.removeprefix("module."): v for k, v in torch.load(
        src / "proprio_projector--150000_checkpoint.pt", weights_only=True).items()}
    patches = torch.cat([_patches(sd, _pixels(_tf_center_crop(np.asarray(
        Image.fromarray(im).resize((released.IMAGE, released.IMAGE), Image.BICUBIC)), 0.9))) for im in images], 1)
    ps = stats["proprio"]
    lo, hi = np.array(ps["q01"]), np.array(ps["q99"])
    p = torch.tensor(np.clip(2 * (proprio - lo) / (hi - lo + 1e-8) - 1, -1, 1), dtype=torch.float32)
    ptok = F.linear(F.gelu(F.linear(p, proj["fc1.weight"], proj["fc1.bias"])), proj["fc2.weight"], proj["fc2.bias"])
    lm = _llama(cfg, sd)
    tok = released.llama_tokenizer()
    prompt = f"In: What action should the robot take to {instruction.lower()}?\nOut:"
    ids = [*tok(prompt, add_special_tokens=False)["input_ids"], tok.convert_tokens_to_ids("▁")]
    da, chunk = len(stats["action"]["q01"]), 8
    emb = lm.get_input_embeddings()
    seq = torch.cat([emb(torch.tensor([[tok.bos_token_id]])), patches, ptok[None, None],
                     emb(torch.tensor([ids])), torch.zeros(1, chunk * da, released.HIDDEN),
                     emb(torch.tensor([[tok.eos_token_id]]))], 1)
    n = seq.shape[1]
    with torch.no_grad():
        hidden = lm.model(inputs_embeds=seq, attention_mask=torch.ones(1, 1, n, n, dtype=torch.bool)).last_hidden_state
    start = 1 + patches.shape[1] + 1 + len(ids) - 1  # the last prompt token, then the first K - 1 placeholders
    x = hidden[:, start : start + chunk * da].reshape(1, chunk, -1)
    ln = lambda t, n_: F.layer_norm(t, t.shape[-1:], head[f"{n_}.weight"], head[f"{n_}.bias"])  # noqa: E731
    x = torch.relu(F.linear(ln(x, "layer_norm1"), head["fc1.weight"], head["fc1.bias"]))
    for i in range(2):
        b = f"mlp_resnet_blocks.{i}.ffn."
        x = torch.relu(F.linear(ln(x, b + "0"), head[b + "1.weight"], head[b + "1.bias"])) + x
    a = F.linear(ln(x, "layer_norm2"), head["fc2.weight"], head["fc2.bias"])[0].numpy()
    st = stats["action"]
    lo, hi = np.array(st["q01"]), np.array(st["q99"])
    return np.where(st["mask"], 0.5 * (a + 1) * (hi - lo + 1e-8) + lo, a)


def test_imported_openvla_oft_matches_the_reference_forward(tmp_path):
    src = released.write_openvla_oft(tmp_path / "src")
    from vlaforge.weights.openvla import import_openvla_oft

    ckpt = write_checkpoint(import_openvla_oft(src, dtype="float32"), tmp_path / "ckpt")
    policy = VLAPolicy.from_pretrained(ckpt)
    assert policy.cfg.chunk == 8 and policy.cfg.cameras == ("primary", "wrist") and policy.cfg.state_dim == 8
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(2)]
    proprio = rng.normal(0, 1, 8).astype(np.float32)
    task = "Put the Bowl on the plate"
    want = reference_oft(src, images, proprio, task, "libero_spatial_no_noops")
    obs = {image_key("primary"): images[0], image_key("wrist"): images[1], "observation.state": proprio,
           "task": task}
    got = policy.predict_actions([obs])[0]
    assert got.shape == (8, 7)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    crop = policy.inputs(dict(obs))[image_key("primary")]  # the processor's crop equals TF's on a fixed array
    small = np.asarray(Image.fromarray(images[0]).resize((released.IMAGE, released.IMAGE), Image.BICUBIC))
    np.testing.assert_array_equal((crop.transpose(1, 2, 0) * 255).round().astype(np.uint8),
                                  _tf_center_crop(small, 0.9))


def _ddim_alpha_bar(steps=100):
    """The cosine (squaredcos_cap_v2) schedule's cumulative alphas, betas capped at 0.999."""
    f = lambda t: np.cos((t / steps + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    betas = np.minimum(1 - f(np.arange(1, steps + 1)) / f(np.arange(steps)), 0.999)
    return np.cumprod(1 - betas)


def reference_hybridvla(run, tok_dir, img, proprio, instruction, seed, need_to_sub=0, with_ar=True):
    """HybridVLA's predict_action (diff+ar): AR tokens after [BOD][proprio][t][noise][EOD][▁] with t and noise
    drawn first, then 4 DDIM steps over [BOD][proprio][t][x]; each path clamped, gripper snapped at 0.5,
    un-normalized; averaged when the 6 arm confidences sum above 5.8."""
    part = torch.load(next((run / "checkpoints").glob("*.pt")), weights_only=True)["model"]
    sd = {f"vision_backbone.featurizer.{k[len('dino_featurizer.'):].replace('gamma', 'scale_factor')}": v
          for k, v in part["vision_backbone"].items() if k.startswith("dino_featurizer.")}
    sd.update({f"vision_backbone.fused_featurizer.{k[len('siglip_featurizer.'):]}": v
               for k, v in part["vision_backbone"].items() if k.startswith("siglip_featurizer.")})
    sd.update({f"projector.fc{i}.{p}": part["projector"][f"projector.{j}.{p}"]
               for i, j in ((1, 0), (2, 2), (3, 4)) for p in ("weight", "bias")})
    sd.update({f"language_model.{k[4:]}": v for k, v in part["llm_backbone"].items()})
    patches = _patches(sd, _pixels(img))
    lm = _llama({"text_config": json.loads((tok_dir / "config.json").read_text())}, sd)
    stats = json.loads((run / "dataset_statistics.json").read_text())["rlbench"]
    tok = released.llama_tokenizer()
    v = tok.vocab_size
    bod, eod, space = v + 1, v + 2, tok.convert_tokens_to_ids("▁")
    emb = lm.get_input_embeddings()
    prompt = f"In: What action should the robot take to {instruction.lower()}?\nOut:"
    ids = [*tok(prompt, add_special_tokens=False)["input_ids"], space]
    prefix = torch.cat([emb(torch.tensor([[tok.bos_token_id]])), patches, emb(torch.tensor([ids]))], 1)

    def mlp(p, x, act):
        h = act(F.linear(x, p["mlp.fc1.weight"], p["mlp.fc1.bias"]))
        return F.linear(h, p["mlp.fc2.weight"], p["mlp.fc2.bias"])

    tanh_gelu = lambda x: F.gelu(x, approximate="tanh")  # noqa: E731
    ps = stats["proprio"]
    lo, hi = np.array(ps["q01"]), np.array(ps["q99"])
    pn = np.where(ps["mask"], np.clip(2 * (proprio - lo) / (hi - lo + 1e-8) - 1, -1, 1), proprio)
    ptok = mlp(part["proprio_embedder"], torch.tensor(pn, dtype=torch.float32), tanh_gelu)[None, None]

    def t_tok(t):
        freqs = torch.exp(-np.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        args = torch.tensor([float(t)])[:, None] * freqs[None]
        e = torch.cat([torch.cos(args), torch.sin(args)], -1)
        p = part["t_embedder"]
        return F.linear(F.silu(F.linear(e, p["mlp.0.weight"], p["mlp.0.bias"])), p["mlp.2.weight"], p["mlp.2.bias"])

    def block(t, x):
        return torch.cat([emb(torch.tensor([[bod]])), ptok, t_tok(t)[None], mlp(part["x_embedder"], x, tanh_gelu)], 1)

    g = torch.Generator().manual_seed(seed)
    if with_ar:  # the AR path draws its timestep and noise block first
        t_rand = int(torch.randint(0, 100, (1,), generator=g))
        noise = torch.randn((1, 1, 7), generator=g)
        seq = torch.cat([prefix, block(t_rand, noise), emb(torch.tensor([[eod, space]]))], 1)
    out, conf = [], []
    with torch.no_grad():
        for _ in range(7 if with_ar else 0):
            probs = lm(inputs_embeds=seq).logits[0, -1].softmax(-1)
            nxt = int(probs.argmax())
            out.append(nxt)
            conf.append(float(probs[nxt]))
            seq = torch.cat([seq, emb(torch.tensor([[nxt]]))], 1)
        bins = np.linspace(-1, 1, 256)
        centres = (bins[:-1] + bins[1:]) / 2
        ar = centres[np.clip(v - need_to_sub - np.array(out, dtype=int) - 1, 0, 254)] if with_ar else np.zeros(7)
        ab = _ddim_alpha_bar()
        x = torch.randn((1, 1, 7), generator=g, dtype=torch.float32)
        f = part["final_layer"]
        for i, t in enumerate([75, 50, 25, 0]):
            h = lm.model(inputs_embeds=torch.cat([prefix, block(t, x)], 1)).last_hidden_state[:, -1:]
            hn = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * f["norm_final.weight"]
            eps = mlp(f, hn, tanh_gelu)
            prev = ab[[50, 25, 0][i]] if i < 3 else 1.0
            x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
            x = np.sqrt(prev) * x0 + np.sqrt(1 - prev) * eps
    diff = x[0, 0].numpy().astype(np.float64)

    st = stats["action"]
    lo, hi, mask = np.array(st["q01"]), np.array(st["q99"]), np.array(st["mask"])

    def unnorm(a):
        a = np.clip(a, -1, 1)
        a[-1] = 0.0 if a[-1] < 0.5 else 1.0
        return np.where(mask, 0.5 * (a + 1) * (hi - lo) + lo, a)

    a_ar, a_diff = unnorm(ar.copy()), unnorm(diff.copy())
    if with_ar and sum(conf[:6]) > 5.8:
        both = (a_ar + a_diff) / 2
        both[-1] = 1.0 if both[-1] > 0.5 else 0.0
        return out, a_ar, a_diff, both
    return out, a_ar, a_diff, a_diff


def test_imported_hybridvla_matches_the_reference_forward(tmp_path):
    from vlaforge.weights.hybridvla import import_hybridvla

    run, tok_dir = released.write_hybridvla(tmp_path / "run")
    imported = import_hybridvla(run, dtype="float32", tokenizer=tok_dir, llm_config=tok_dir / "config.json",
                                cameras=("front",))
    policy = VLAPolicy.from_pretrained(write_checkpoint(imported, tmp_path / "ckpt"))
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
    proprio = rng.normal(0, 1, 7).astype(np.float32)
    proprio[-1] = 1.0
    task = "Close the Box"
    ids, a_ar, _, both = reference_hybridvla(run, tok_dir, img, proprio, task, seed=5)
    obs = {image_key("front"): img, "observation.state": proprio, "task": task}
    info: dict = {}
    np.testing.assert_allclose(policy.predict_actions([dict(obs)], seed=5, mode="ar", info=info)[0, 0], a_ar,
                               rtol=1e-5, atol=1e-5)
    assert info["token_ids"][0] == ids
    _, _, diff_only, _ = reference_hybridvla(run, tok_dir, img, proprio, task, seed=5, with_ar=False)
    np.testing.assert_allclose(policy.predict_actions([dict(obs)], seed=5, mode="diff")[0, 0], diff_only,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(policy.predict_actions([dict(obs)], seed=5)[0, 0], both, rtol=1e-5, atol=1e-5)


def test_hybridvla_gate_semantics():
    """sum of the 6 arm confidences > 5.8 -> average, the gripper 1 only if both paths say 1 (avg > 0.5)."""
    from vlaforge.heads.hybrid import hybrid_gate, snap_gripper

    ar = snap_gripper(torch.tensor([[[0.2] * 6 + [0.9]], [[0.2] * 6 + [0.9]]]), (-1,), (0.0, 1.0))
    diff = snap_gripper(torch.tensor([[[0.6] * 6 + [0.3]], [[0.6] * 6 + [0.7]]]), (-1,), (0.0, 1.0))
    conf = torch.tensor([[[0.99] * 6 + [0.1]], [[0.95] * 6 + [1.0]]])  # sums 5.94 (> 5.8) and 5.7
    out, averaged = hybrid_gate(ar, diff, conf, 5.8 / 6, (-1,), (0.0, 1.0))
    assert averaged.tolist() == [True, False]
    torch.testing.assert_close(out[0, 0], torch.tensor([0.4] * 6 + [0.0]))  # 1 and 0 average to 0.5 -> closed
    torch.testing.assert_close(out[1, 0], diff[1, 0])


def test_components_refuse_what_they_cannot_use(tmp_path):
    """Refused when the policy is built, not at the first step: bidirectional attention under a head that extends
    the sequence, placeholders after an [ACT] readout, vocabulary markers the tokenizer lacks."""
    from vlaforge.backbones.base import BACKBONES
    from vlaforge.config import ConfigError
    from vlaforge.heads.base import HEADS
    from vlaforge.policy import PolicyConfig
    from vlaforge.types import RobotSpec

    robot = RobotSpec({"front": (32, 32)}, 4, 4)

    def build(head, **bb):
        cfg = PolicyConfig(backbone=BACKBONES.get("prismatic")(size="tiny", **bb), head=head, chunk=2, exec_steps=2)
        return VLAPolicy(cfg.with_robot(robot))

    with pytest.raises(ConfigError, match="backbone.attention"):
        build(HEADS.get("tokens")(), attention="bidirectional")
    with pytest.raises(ConfigError, match="backbone.readout"):
        build(HEADS.get("mlp")(readout="placeholders"), readout="act")
    with pytest.raises(ValueError, match="'<BOD>' is not in the tokenizer"):
        build(HEADS.get("inllm_diffusion")(markers="vocab"))
    build(HEADS.get("inllm_diffusion")(markers="vocab"), add_tokens=("<BOD>", "<EOD>"))
    with pytest.raises(ConfigError, match="ar_suffix"):
        HEADS.get("hybrid")(ar_suffix="▁")


def test_a_failed_import_leaves_no_checkpoint_and_names_missing_weights(tmp_path):
    from vlaforge.weights.openvla import import_openvla_oft

    src = released.write_openvla_oft(tmp_path / "src")
    good = import_openvla_oft(src, dtype="float32")
    good.weights.pop("head.mlp.fc_out.bias")
    with pytest.raises(LayoutError, match=r"missing \['head.mlp.fc_out.bias'\]"):
        write_checkpoint(good, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "ckpt.partial").exists()
    torch.save({"module.fc1.weight": torch.zeros(4, 8)}, src / "proprio_projector--150000_checkpoint.pt")
    with pytest.raises(LayoutError, match=r"proprio_projector--150000_checkpoint.pt: no 'fc1.bias'"):
        import_openvla_oft(src)
