"""Tiny checkpoints in the original layouts of released VLAs (file names, key names, shape rules, sharding with an
index, statistics files), written from the documented facts in shared/reference/released_checkpoints.md — not by
vlaforge. The tests read them back with their own reference forward passes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from helpers import TASKS
from vlaforge.backbones.tokenizer import _CORPUS as WORDS

DINO, SIGLIP, HIDDEN, IMAGE, PATCH = 64, 48, 64, 32, 8
HEADS = 16  # the released towers' head count (ViT-L/14 and so400m): 16
TIMM_IDS = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
CORPUS = [f"In: What action should the robot take to {t}?\nOut:" for t in TASKS] + [
    "pick up the red block and place it in the bowl", "push the button", "open the top drawer of the cabinet",
    "what action should the robot take", "close the microwave door", "put the spoon on the towel"] * 3 + WORDS


def llama_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-2-like tokenizer: sentencepiece-style ``▁`` word pieces, <unk>/<s>/</s> at ids 0-2, and the pad
    token OpenVLA adds (``<PAD>``) as the first id past the base vocabulary."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    from tokenizers import decoders

    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=480, special_tokens=["<unk>", "<s>", "</s>"],
                                                        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.add_special_tokens({"pad_token": "<PAD>"})
    assert fast.convert_tokens_to_ids("▁") != fast.unk_token_id
    return fast


def _randn(g: torch.Generator, *shape: int, scale: float = 0.1) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def timm_vit(g: torch.Generator, d: int, depth: int, kind: str) -> dict[str, torch.Tensor]:
    """timm VisionTransformer keys: DINOv2-reg4 (cls + 4 registers, no class position, LayerScale as OpenVLA's
    HF export names it) or SigLIP (no class token, attention-pool head)."""
    sd = {"patch_embed.proj.weight": _randn(g, d, 3, PATCH, PATCH), "patch_embed.proj.bias": _randn(g, d),
          "pos_embed": _randn(g, 1, (IMAGE // PATCH) ** 2, d), "norm.weight": 1 + _randn(g, d),
          "norm.bias": _randn(g, d)}
    if kind == "dino":
        sd.update({"cls_token": _randn(g, 1, 1, d), "reg_token": _randn(g, 1, 4, d)})
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + _randn(g, d), b + "norm1.bias": _randn(g, d),
                   b + "attn.qkv.weight": _randn(g, 3 * d, d, scale=0.2), b + "attn.qkv.bias": _randn(g, 3 * d),
                   b + "attn.proj.weight": _randn(g, d, d, scale=0.2), b + "attn.proj.bias": _randn(g, d),
                   b + "norm2.weight": 1 + _randn(g, d), b + "norm2.bias": _randn(g, d),
                   b + "mlp.fc1.weight": _randn(g, 2 * d, d, scale=0.2), b + "mlp.fc1.bias": _randn(g, 2 * d),
                   b + "mlp.fc2.weight": _randn(g, d, 2 * d, scale=0.2), b + "mlp.fc2.bias": _randn(g, d)})
        if kind == "dino":
            sd.update({b + "ls1.scale_factor": 0.5 + _randn(g, d), b + "ls2.scale_factor": 0.5 + _randn(g, d)})
    if kind == "siglip":
        a = "attn_pool."
        sd.update({a + "latent": _randn(g, 1, 1, d), a + "q.weight": _randn(g, d, d), a + "q.bias": _randn(g, d),
                   a + "kv.weight": _randn(g, 2 * d, d), a + "kv.bias": _randn(g, 2 * d),
                   a + "proj.weight": _randn(g, d, d), a + "proj.bias": _randn(g, d),
                   a + "norm.weight": 1 + _randn(g, d), a + "norm.bias": _randn(g, d),
                   a + "mlp.fc1.weight": _randn(g, 2 * d, d), a + "mlp.fc1.bias": _randn(g, 2 * d),
                   a + "mlp.fc2.weight": _randn(g, d, 2 * d), a + "mlp.fc2.bias": _randn(g, d)})
    return sd


def llama(g: torch.Generator, tok: PreTrainedTokenizerFast) -> tuple[dict, dict[str, torch.Tensor]]:
    """OpenVLA's text_config (LlamaConfig diff: vocab padded to a multiple of 64, pad id) and Llama weights whose
    action-token rows are boosted, so that greedy decoding mostly (not always) picks action tokens."""
    rows = -(-(len(tok) + 2) // 64) * 64  # padded to a multiple of 64 (as OpenVLA); room for HybridVLA's 2 rows
    text = {"model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": rows, "pad_token_id": tok.pad_token_id,
            "max_position_embeddings": 512, "torch_dtype": "bfloat16"}
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    sd = LlamaForCausalLM(LlamaConfig(**text)).state_dict()
    v = tok.vocab_size
    sd["lm_head.weight"][v - 256 : v] *= 4.0
    return text, sd


def norm_stats(action_dim: int, seed: int, proprio_dim: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def block(n: int, mask: bool) -> dict:
        lo = rng.uniform(-2, -0.5, n)
        hi = lo + rng.uniform(0.5, 2, n)
        d = {"mean": ((lo + hi) / 2).tolist(), "std": rng.uniform(0.1, 1, n).tolist(), "min": (lo - 0.1).tolist(),
             "max": (hi + 0.1).tolist(), "q01": lo.tolist(), "q99": hi.tolist()}
        if mask:
            d["mask"] = [True] * (n - 1) + [False]
        return d

    out = {"action": block(action_dim, True), "num_transitions": 100, "num_trajectories": 4}
    if proprio_dim:
        out["proprio"] = block(proprio_dim, False)
    return out


def save_sharded(sd: dict[str, torch.Tensor], path: Path, shards: int = 2, dtype=torch.bfloat16) -> None:
    """HF-style ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``."""
    names = sorted(sd)
    weight_map = {}
    for k in range(shards):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n].to(dtype).contiguous() for n in names[k::shards]}
        save_file(part, str(path / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_openvla(path: Path, action_dim: int = 7, seed: int = 0, keys=("bridge_orig", "fractal20220817_data")
                  ) -> Path:
    """A tiny ``openvla/openvla-7b``: HF-format shards, config.json with norm_stats, the tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tok = llama_tokenizer()
    text, lm = llama(g, tok)
    vis = DINO + SIGLIP
    sd = {f"vision_backbone.featurizer.{k}": v for k, v in timm_vit(g, DINO, 3, "dino").items()}
    sd.update({f"vision_backbone.fused_featurizer.{k}": v for k, v in timm_vit(g, SIGLIP, 3, "siglip").items()})
    for i, (o, n) in enumerate(((4 * vis, vis), (HIDDEN, 4 * vis), (HIDDEN, HIDDEN)), 1):
        sd[f"projector.fc{i}.weight"], sd[f"projector.fc{i}.bias"] = _randn(g, o, n, scale=n**-0.5), _randn(g, o)
    sd.update({f"language_model.{k}": v for k, v in lm.items()})
    save_sharded(sd, path)
    config = {"model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"],
              "vision_backbone_id": "dinosiglip-vit-so-224px", "llm_backbone_id": "llama2-7b-pure",
              "arch_specifier": "no-align+fused-gelu-mlp", "use_fused_vision_backbone": True,
              "image_resize_strategy": "resize-naive", "timm_model_ids": TIMM_IDS, "image_sizes": [IMAGE, IMAGE],
              "n_action_bins": 256, "pad_token_id": tok.pad_token_id, "pad_to_multiple_of": 64,
              "text_config": text, "torch_dtype": "bfloat16",
              "norm_stats": {k: norm_stats(action_dim, seed + i) for i, k in enumerate(keys)}}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(path)
    return path


def write_openvla_oft(path: Path, seed: int = 0, key: str = "libero_spatial_no_noops", chunk: int = 8,
                      action_dim: int = 7, proprio_dim: int = 8, width: int = 32) -> Path:
    """A tiny OpenVLA-OFT run directory: the merged HF-format model, ``action_head--N_checkpoint.pt`` and
    ``proprio_projector--N_checkpoint.pt`` (state dicts of DDP-wrapped modules: ``module.`` prefix) and
    ``dataset_statistics.json`` (which replaces config.json's norm_stats)."""
    write_openvla(path, action_dim, seed, keys=("bridge_orig",))
    g = torch.Generator().manual_seed(seed + 100)
    inp = action_dim * HIDDEN
    head = {"model.layer_norm1.weight": 1 + _randn(g, inp), "model.layer_norm1.bias": _randn(g, inp),
            "model.fc1.weight": _randn(g, width, inp, scale=inp**-0.5), "model.fc1.bias": _randn(g, width),
            "model.layer_norm2.weight": 1 + _randn(g, width), "model.layer_norm2.bias": _randn(g, width),
            "model.fc2.weight": _randn(g, action_dim, width, scale=width**-0.5),
            "model.fc2.bias": _randn(g, action_dim)}
    for i in range(2):
        b = f"model.mlp_resnet_blocks.{i}.ffn."
        head.update({b + "0.weight": 1 + _randn(g, width), b + "0.bias": _randn(g, width),
                     b + "1.weight": _randn(g, width, width, scale=width**-0.5), b + "1.bias": _randn(g, width)})
    torch.save({f"module.{k}": v for k, v in head.items()}, path / "action_head--150000_checkpoint.pt")
    proprio = {"fc1.weight": _randn(g, HIDDEN, proprio_dim, scale=0.5), "fc1.bias": _randn(g, HIDDEN),
               "fc2.weight": _randn(g, HIDDEN, HIDDEN, scale=HIDDEN**-0.5), "fc2.bias": _randn(g, HIDDEN)}
    torch.save({f"module.{k}": v for k, v in proprio.items()}, path / "proprio_projector--150000_checkpoint.pt")
    stats = {key: norm_stats(action_dim, seed + 7, proprio_dim)}
    (path / "dataset_statistics.json").write_text(json.dumps(stats, indent=2))
    return path


def write_hybridvla(run: Path, seed: int = 0, key: str = "rlbench", action_dim: int = 7) -> tuple[Path, Path]:
    """A tiny HybridVLA run: ``checkpoints/step-000100-epoch-01-loss=0.1.pt`` = ``{"model": {part: state_dict}}``
    (timm towers under ``dino_featurizer.`` / ``siglip_featurizer.``, ``projector.0/2/4``, ``llm.`` + Llama with
    ``<BOD>``/``<EOD>`` rows, the diffusion modules), ``dataset_statistics.json`` and ``config.json``; and the
    Llama-2-like tokenizer directory (the run ships none). Returns (run, tokenizer dir)."""
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tok = llama_tokenizer()
    text, lm = llama(g, tok)
    assert text["vocab_size"] >= tok.vocab_size + 3  # room for <PAD>, <BOD>, <EOD>
    base_dir = run.parent / "llama2-tokenizer"
    base = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    base.save_pretrained(base_dir)
    vis, d = DINO + SIGLIP, HIDDEN
    vision = {f"dino_featurizer.{k.replace('scale_factor', 'gamma')}": v
              for k, v in timm_vit(g, DINO, 3, "dino").items()}
    vision.update({f"siglip_featurizer.{k}": v for k, v in timm_vit(g, SIGLIP, 3, "siglip").items()})
    projector = {}
    for i, (o, n) in zip((0, 2, 4), ((4 * vis, vis), (d, 4 * vis), (d, d)), strict=True):
        projector[f"projector.{i}.weight"], projector[f"projector.{i}.bias"] = _randn(g, o, n, scale=n**-0.5), \
            _randn(g, o)

    def mlp(i: int, o: int) -> dict[str, torch.Tensor]:
        return {"mlp.fc1.weight": _randn(g, o, i, scale=i**-0.5), "mlp.fc1.bias": _randn(g, o),
                "mlp.fc2.weight": _randn(g, o, o, scale=o**-0.5), "mlp.fc2.bias": _randn(g, o)}

    model = {"vision_backbone": vision, "projector": projector, "llm_backbone": {f"llm.{k}": v for k, v in lm.items()},
             "x_embedder": mlp(action_dim, d), "proprio_embedder": mlp(action_dim, d),
             "t_embedder": {"mlp.0.weight": _randn(g, d, 256, scale=1 / 16), "mlp.0.bias": _randn(g, d),
                            "mlp.2.weight": _randn(g, d, d, scale=d**-0.5), "mlp.2.bias": _randn(g, d)},
             "final_layer": {"norm_final.weight": 1 + _randn(g, d),
                             "mlp.fc1.weight": _randn(g, d, d, scale=d**-0.5), "mlp.fc1.bias": _randn(g, d),
                             "mlp.fc2.weight": _randn(g, action_dim, d, scale=d**-0.5),
                             "mlp.fc2.bias": _randn(g, action_dim)}}
    torch.save({"model": model}, run / "checkpoints" / "step-000100-epoch-01-loss=0.1000.pt")
    stats = norm_stats(action_dim, seed + 3, action_dim)
    stats["proprio"]["mask"] = [True] * (action_dim - 1) + [False]
    (run / "dataset_statistics.json").write_text(json.dumps({key: stats}, indent=2))
    (run / "config.json").write_text(json.dumps({"vla": {"base_vlm": "prism-dinosiglip-224px+7b"}}))
    (base_dir / "config.json").write_text(json.dumps(text))  # the base LLM's config (Llama-2-7b-hf's, tiny here)
    return run, base_dir


# ---------------------------------------------------------------- LLaVA-VLA
CLIP_WIDTH = 128  # 2 heads of 64, CLIP's head size
CALVIN_STATE = 15


def llava_tokenizer() -> PreTrainedTokenizerFast:
    """Llama's tokenizer as LLaVA-1.5 ships it: ``▁`` word pieces, <unk>/<s>/</s> at ids 0-2, single rare
    characters at the end of the vocabulary, BOS added by ``tokenizer(text)``, pad = <unk> (LLaVA's v1 setting),
    no added tokens (vocab_size = the LM's rows)."""
    from tokenizers import decoders, processors

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator([*CORPUS, "A chat between a curious user and an artificial intelligence robot."],
                            trainers.BpeTrainer(vocab_size=480, special_tokens=["<unk>", "<s>", "</s>"],
                                                show_progress=False))
    # Llama's vocabulary ends with single rare characters (CJK among them): the ids LLaVA-VLA's bins count down from
    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    for ch in (chr(0x4E00 + i) for i in range(300)):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer.from_str(json.dumps(state))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


def write_llava_vla(path: Path, seed: int = 0, state_dim: int = CALVIN_STATE, action_dim: int = 7
                    ) -> tuple[Path, Path, Path]:
    """A tiny LLaVA-VLA trainer folder in LLaVA-1.5's original naming (``model.embed_tokens``, ``model.layers.*``,
    ``model.norm``, ``lm_head``, ``model.mm_projector.0/2``, ``model.vision_tower.vision_tower.vision_model.*``),
    3 shards + index, LLaVA's config.json (Llama fields + mm_*), the tokenizer; the CLIP directory its
    ``mm_vision_tower`` names (same tower weights, ``vision_model.*``); CALVIN's ``statistics.yaml``.
    Returns (trainer folder, CLIP directory, statistics.yaml)."""
    import yaml
    from transformers import CLIPVisionConfig, CLIPVisionModel

    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tok = llava_tokenizer()
    v = tok.vocab_size
    text = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "vocab_size": v, "rms_norm_eps": 1e-5, "max_position_embeddings": 1024,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16"}
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    lm = LlamaForCausalLM(LlamaConfig(**{k: x for k, x in text.items() if k not in ("architectures", "model_type")}))
    sd = dict(lm.state_dict())
    sd["lm_head.weight"][v - 256 : v] *= 4.0  # greedy decoding picks action tokens most of the time
    vc = CLIPVisionConfig(hidden_size=CLIP_WIDTH, intermediate_size=2 * CLIP_WIDTH, num_hidden_layers=3,
                          num_attention_heads=CLIP_WIDTH // 64, image_size=IMAGE, patch_size=PATCH,
                          hidden_act="quick_gelu", layer_norm_eps=1e-5)
    tower = CLIPVisionModel(vc)
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(_randn(g, *p.shape, scale=0.05))
    tw = {f"vision_model.{k}": x for k, x in tower.state_dict().items()}  # the original (transformers 4) names
    sd.update({f"model.vision_tower.vision_tower.{k}": x for k, x in tw.items()})
    for i, (o, n) in zip((0, 2), ((HIDDEN, CLIP_WIDTH), (HIDDEN, HIDDEN)), strict=True):
        sd[f"model.mm_projector.{i}.weight"], sd[f"model.mm_projector.{i}.bias"] = _randn(g, o, n, scale=n**-0.5), \
            _randn(g, o)
    save_sharded(sd, path, shards=3)
    config = {**text, "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": CLIP_WIDTH,
              "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
              "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": "pad",
              "tokenizer_padding_side": "right", "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(path)
    clip = path.parent / "clip-vit-large-patch14-336"  # a CLIPModel directory: vision + text towers
    clip.mkdir(exist_ok=True)
    save_file({**tw, "text_model.embeddings.token_embedding.weight": _randn(g, 8, 16),
               "logit_scale": torch.ones(())}, str(clip / "model.safetensors"), metadata={"format": "pt"})
    (clip / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": vc.to_dict(),
                                                  "text_config": {"hidden_size": 16}, "projection_dim": 16}))
    (clip / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": IMAGE, "width": IMAGE}, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": {"shortest_edge": IMAGE}}))
    rng = np.random.default_rng(seed)
    stats = {"robot_obs": [{"_target_": "calvin_agent.utils.transforms.NormalizeVector",
                            "mean": rng.uniform(-0.5, 0.5, state_dim).tolist(),
                            "std": rng.uniform(0.05, 0.5, state_dim).tolist()}],
             "act_min_bound": rng.uniform(-1.5, -0.5, action_dim).tolist(),
             "act_max_bound": rng.uniform(0.5, 1.5, action_dim).tolist()}
    yml = path.parent / "statistics.yaml"
    yml.write_text(yaml.safe_dump(stats))
    return path, clip, yml


# ---------------------------------------------------------------- DexVLA: official Qwen2-VL + stage-1 ScaleDP
SCALEDP_WIDTH, SCALEDP_DEPTH, SCALEDP_HEADS = 256, 4, 4  # vlaforge's "tiny" DiT (ScaleDP-H 1280x32x16, L 1024x24x16)
SCALEDP_COMBINE = 64  # the combine MLP's width (ScaleDP: 1024)


def scaledp_state_dict(cond_dim: int, action_dim: int, state_dim: int, chunk: int,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """ScaleDP's ``noise_pred_net`` keys and shape rules (modeling_scaledp.py), random values."""
    g = torch.Generator().manual_seed(seed)
    d, w = SCALEDP_WIDTH, SCALEDP_COMBINE
    sd = {"combine.0.weight": _randn(g, w, cond_dim + state_dim), "combine.0.bias": _randn(g, w),
          "combine.2.weight": _randn(g, w, w), "combine.2.bias": _randn(g, w),
          "combine.4.weight": _randn(g, cond_dim, w), "combine.4.bias": _randn(g, cond_dim),
          "cond_obs_emb.weight": _randn(g, d, cond_dim), "cond_obs_emb.bias": _randn(g, d),
          "x_embedder.weight": _randn(g, d, action_dim), "x_embedder.bias": _randn(g, d),
          "t_embedder.mlp.0.weight": _randn(g, d, 256), "t_embedder.mlp.0.bias": _randn(g, d),
          "t_embedder.mlp.2.weight": _randn(g, d, d, scale=0.05), "t_embedder.mlp.2.bias": _randn(g, d),
          "pos_embed": _randn(g, 1, chunk, d), "final_layer.linear.weight": _randn(g, action_dim, d),
          "final_layer.linear.bias": _randn(g, action_dim),
          "final_layer.adaLN_modulation.1.weight": _randn(g, 2 * d, d),
          "final_layer.adaLN_modulation.1.bias": _randn(g, 2 * d)}
    for i in range(SCALEDP_DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "attn.qkv.weight": _randn(g, 3 * d, d), b + "attn.qkv.bias": _randn(g, 3 * d),
                   b + "attn.proj.weight": _randn(g, d, d, scale=0.05), b + "attn.proj.bias": _randn(g, d),
                   b + "mlp.fc1.weight": _randn(g, 4 * d, d, scale=0.05), b + "mlp.fc1.bias": _randn(g, 4 * d),
                   b + "mlp.fc2.weight": _randn(g, d, 4 * d, scale=0.05), b + "mlp.fc2.bias": _randn(g, d),
                   b + "adaLN_modulation.1.weight": _randn(g, 6 * d, d, scale=0.05),
                   b + "adaLN_modulation.1.bias": _randn(g, 6 * d)})
    return sd


def write_scaledp(path: Path, cond_dim: int, action_dim: int, state_dim: int, chunk: int) -> dict[str, torch.Tensor]:
    """The stage-1 release: a torch pickle ``{"nets": {"nets": {policy.noise_pred_net.* + the stage-1 vision
    encoder}}}``; returns the ``noise_pred_net`` tensors without the prefix."""
    sd = scaledp_state_dict(cond_dim, action_dim, state_dim, chunk)
    nets = {f"policy.noise_pred_net.{k}": v for k, v in sd.items()}
    nets["policy.backbones.0.body.conv1.weight"] = torch.zeros(4, 3, 3, 3)  # dropped by DexVLA's loader
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"nets": {"nets": nets}, "epoch": 7}, path)
    return sd


def write_qwen2vl_base(path: Path) -> tuple[Path, dict[str, torch.Tensor], int]:
    """Qwen2-VL as the hub ships it (transformers 4.x names: ``model.*`` language model, ``visual.*``, no
    ``lm_head`` since the 2B ties it; bf16 shards + index) with DexVLA's replaced flat config.json
    (``model_type qwen2_vla``, ``policy_head_type scale_dp_policy``, ``rope_scaling`` with the M-RoPE sections).
    Returns the directory, its tensors (hub names) and the LM width."""
    import transformers as tf

    import hf_dirs

    path.mkdir(parents=True)
    tok = hf_dirs.tokenizer(hf_dirs.QWEN_SPECIAL)
    tok.bos_token = None
    torch.manual_seed(0)
    cfg = hf_dirs._qwen(tok, "2")
    model = tf.Qwen2VLForConditionalGeneration(cfg)
    legacy = {}
    for k, v in model.state_dict().items():
        if k != "lm_head.weight":
            legacy[k.replace("model.language_model.", "model.").replace("model.visual.", "visual.")] = v
    save_sharded(legacy, path)
    text = cfg.text_config.to_dict()
    flat = {k: text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                 "num_key_value_heads", "vocab_size", "rms_norm_eps", "max_position_embeddings",
                                 "hidden_act", "bos_token_id", "eos_token_id")}
    flat.update(architectures=["Qwen2VLForConditionalGenerationForVLA"], model_type="qwen2_vla",
                policy_head_type="scale_dp_policy", rope_theta=10000.0, tie_word_embeddings=True,
                rope_scaling={"type": "mrope", "mrope_section": hf_dirs.MROPE["mrope_section"]},
                vision_config=cfg.vision_config.to_dict(), image_token_id=cfg.image_token_id,
                video_token_id=cfg.video_token_id, vision_start_token_id=cfg.vision_start_token_id,
                vision_end_token_id=cfg.vision_end_token_id, torch_dtype="bfloat16")
    (path / "config.json").write_text(json.dumps(flat))
    tok.save_pretrained(path)
    hf_dirs._processor("qwen", path, tok)
    return path, {k: v.detach().to(torch.bfloat16).clone() for k, v in legacy.items()}, text["hidden_size"]


def dexvla_stats(action_dim: int, state_dim: int, seed: int = 3) -> dict[str, np.ndarray]:
    """train_vla.py's ``dataset_stats.pkl`` content: min/max already widened by 1e-4, std clipped at 1e-2."""
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-2, 0, action_dim).astype(np.float32)
    return {"action_mean": np.zeros(action_dim, np.float32), "action_std": np.ones(action_dim, np.float32),
            "action_min": lo - 1e-4, "action_max": lo + rng.uniform(0.5, 3, action_dim).astype(np.float32) + 1e-4,
            "qpos_mean": rng.normal(0, 1, state_dim).astype(np.float32),
            "qpos_std": rng.uniform(0.01, 2, state_dim).astype(np.float32),
            "example_qpos": np.zeros((3, state_dim), np.float32)}
