"""Tiny directories shaped like real released VLM checkpoints, written by transformers' own classes.

Each has what the real one has and vlaforge's random-init sizes don't: the family's real special tokens added on
top of the base vocabulary (so image/chat wrapper tokens sit among the last ids, as in SmolVLM or Qwen), an LM
head padded past the tokenizer where the real one is (LLaVA's and OpenVLA's 32064 rows, Qwen's 151936), untied
output layers where the real model has them, bf16 weights in several safetensors shards with an index, and the
processor files its processor class writes (``preprocessor_config.json``, or transformers 5's
``processor_config.json``). Nothing here calls vlaforge's model code; only the code-built BPE is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers as tf

from vlaforge.backbones.tokenizer import build_tokenizer

SMOL_SPECIAL = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
KOSMOS_SPECIAL = ["<image>", "</image>", "<grounding>", "<phrase>", "</phrase>", "<object>", "</object>"] + [
    f"<patch_index_{i:04d}>" for i in range(32)]
VIT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
LM = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          max_position_embeddings=1024)
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}


def tokenizer(specials: list[str], pad_to: int = 0) -> Any:
    """A base BPE vocabulary with the family's special tokens added on top (ids >= the base vocab size)."""
    tok = build_tokenizer(vocab_size=384)
    tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


def _rows(tok: Any, pad: int) -> int:
    """LM-head rows: the tokenizer's length padded up to a multiple of ``pad`` (0: no padding)."""
    n = len(tok)
    return -(-n // pad) * pad if pad else n


@dataclass
class Family:
    model_cls: Any
    expected_image_size: int
    expected_mean: tuple[float, ...]


def _smol(tok: Any, idefics: bool) -> Any:
    ids = tok.convert_tokens_to_ids
    cls = tf.Idefics3Config if idefics else tf.SmolVLMConfig
    return cls(vision_config=dict(VIT, image_size=64, patch_size=16),
               text_config=dict(LM, model_type="llama", vocab_size=_rows(tok, 0), tie_word_embeddings=False,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=ids("<end_of_utterance>")),
               scale_factor=2, image_token_id=ids("<image>"), tie_word_embeddings=False)


def _qwen(tok: Any, version: str) -> Any:
    ids = tok.convert_tokens_to_ids
    text = dict(LM, vocab_size=_rows(tok, 64), rope_parameters=dict(MROPE), pad_token_id=ids("<|endoftext|>"),
                bos_token_id=None, eos_token_id=ids("<|im_end|>"), tie_word_embeddings=True)
    if version == "2":
        cls, vision = tf.Qwen2VLConfig, dict(depth=2, embed_dim=64, num_heads=4, mlp_ratio=2, hidden_size=128)
    elif version == "2.5":
        cls, vision = tf.Qwen2_5_VLConfig, dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                                                window_size=56, fullatt_block_indexes=[1], out_hidden_size=128)
    else:
        cls = tf.Qwen3VLConfig
        vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=16,
                      num_position_embeddings=64, deepstack_visual_indexes=[0], out_hidden_size=128)
        text = dict(text, head_dim=32, rope_parameters=dict(MROPE, mrope_interleaved=True))
    return cls(vision_config=vision, text_config=text, image_token_id=ids("<|image_pad|>"),
               video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
               vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=True)


def _processor(kind: str, path: Path, tok: Any) -> None:
    """What the real checkpoint's processor writes."""
    if kind == "smolvlm":  # SmolVLM: one 64-px tile (max_image_size) and the SigLIP 0.5 normalization
        tf.SmolVLMImageProcessorPil(size={"longest_edge": 256}, max_image_size={"longest_edge": 64},
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    elif kind == "qwen":  # Qwen2-VL bounds images by their pixel count; 112 x 112 at most here
        tf.Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}).save_pretrained(path)
    elif kind == "qwen3":
        tf.Qwen2VLImageProcessorPil(size={"shortest_edge": 64 * 64, "longest_edge": 128 * 128}, patch_size=16,
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    elif kind == "paligemma":  # transformers 5: one processor_config.json holding the image processor
        tf.PaliGemmaProcessor(image_processor=tf.SiglipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=tok).save_pretrained(path)
    elif kind == "llava":
        tf.LlavaProcessor(image_processor=tf.CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                                   crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=8).save_pretrained(path)
    elif kind == "onevision":
        tf.LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=[[32, 32]],
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    elif kind == "clip":
        tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
            path)


def _save(model: torch.nn.Module, tok: Any, path: Path) -> Path:
    """bf16, sharded with an index, plus the tokenizer."""
    torch.manual_seed(0)
    model.to(torch.bfloat16).save_pretrained(path, max_shard_size="300KB")
    tok.save_pretrained(path)
    return path


CLIP = (0.48145466, 0.4578275, 0.40821073)
FAMILIES: dict[str, Family] = {
    "smolvlm": Family(tf.SmolVLMForConditionalGeneration, 64, (0.5,) * 3),
    "idefics3": Family(tf.Idefics3ForConditionalGeneration, 64, (0.5,) * 3),
    "paligemma": Family(tf.PaliGemmaForConditionalGeneration, 32, (0.5,) * 3),
    "qwen2_vl": Family(tf.Qwen2VLForConditionalGeneration, 112, CLIP),
    "qwen2_5_vl": Family(tf.Qwen2_5_VLForConditionalGeneration, 112, CLIP),
    "qwen3_vl": Family(tf.Qwen3VLForConditionalGeneration, 128, (0.5,) * 3),
    "llava": Family(tf.LlavaForConditionalGeneration, 32, CLIP),
    "llava_onevision": Family(tf.LlavaOnevisionForConditionalGeneration, 32, (0.5,) * 3),
    "kosmos2": Family(tf.Kosmos2ForConditionalGeneration, 32, CLIP),
    "prismatic": Family(None, 32, (0.0,) * 3),  # each tower normalizes its own input
}


def write(family: str, path: Path) -> Path:
    """Write the real-shaped tiny directory of ``family`` at ``path``."""
    torch.manual_seed(0)
    if family in ("smolvlm", "idefics3"):
        tok = tokenizer(SMOL_SPECIAL)
        cfg = _smol(tok, family == "idefics3")
        _save(FAMILIES[family].model_cls(cfg), tok, path)
        _processor("smolvlm", path, tok)
    elif family.startswith("qwen"):
        tok = tokenizer(QWEN_SPECIAL)
        tok.bos_token = None  # Qwen's tokenizer has no BOS
        cfg = _qwen(tok, {"qwen2_vl": "2", "qwen2_5_vl": "2.5", "qwen3_vl": "3"}[family])
        _save(FAMILIES[family].model_cls(cfg), tok, path)
        _processor("qwen3" if family == "qwen3_vl" else "qwen", path, tok)
    elif family == "paligemma":
        tok = tokenizer(["<image>"] + [f"<loc{i:04d}>" for i in range(16)])
        text = dict(LM, model_type="gemma", head_dim=32, num_key_value_heads=1, vocab_size=_rows(tok, 64),
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        cfg = tf.PaliGemmaConfig(vision_config=dict(VIT, model_type="siglip_vision_model", image_size=32,
                                                    patch_size=8, projection_dim=128),
                                 text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                                 projection_dim=128)
        _save(tf.PaliGemmaForConditionalGeneration(cfg), tok, path)
        _processor("paligemma", path, tok)
    elif family in ("llava", "llava_onevision"):
        onevision = family == "llava_onevision"
        tok = tokenizer(["<image>", "<video>"] if onevision else ["<image>"])
        text = dict(LM, model_type="qwen2" if onevision else "llama", vocab_size=_rows(tok, 64),
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        vision = dict(VIT, model_type="siglip_vision_model" if onevision else "clip_vision_model", image_size=32,
                      patch_size=8)
        ids = tok.convert_tokens_to_ids
        if onevision:
            cfg = tf.LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=ids("<image>"),
                                          video_token_id=ids("<video>"), vision_feature_layer=-1,
                                          vision_feature_select_strategy="full", image_grid_pinpoints=[[32, 32]])
        else:  # llava-hf: untied lm_head, 64 padding rows past the tokenizer
            cfg = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=ids("<image>"),
                                 vision_feature_layer=-2, vision_feature_select_strategy="default",
                                 tie_word_embeddings=False)
        _save(FAMILIES[family].model_cls(cfg), tok, path)
        _processor("onevision" if onevision else "llava", path, tok)
    elif family == "kosmos2":
        tok = tokenizer(KOSMOS_SPECIAL)
        cfg = tf.Kosmos2Config(vision_config=dict(VIT, image_size=32, patch_size=8),
                               text_config=dict(embed_dim=128, ffn_dim=256, layers=2, attention_heads=4,
                                                vocab_size=_rows(tok, 0), max_position_embeddings=1024,
                                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                                eos_token_id=tok.eos_token_id),
                               latent_query_num=16)
        _save(tf.Kosmos2ForConditionalGeneration(cfg), tok, path)
        _processor("clip", path, tok)
    elif family == "prismatic":
        write_prismatic(path)
    else:
        raise KeyError(family)
    return path


def write_prismatic(path: Path) -> Path:
    """``dino/``, ``siglip/``, ``llm/`` (Llama with OpenVLA's ``<PAD>`` and 64-row padding), projector weights."""
    from safetensors.torch import save_file

    tok = tokenizer([])
    tok.add_special_tokens({"pad_token": "<PAD>"})
    dino = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(**VIT, image_size=32, patch_size=8,
                                                                    num_register_tokens=4))
    siglip = tf.SiglipVisionModel(tf.SiglipVisionConfig(**VIT, image_size=32, patch_size=8))
    llm = tf.LlamaForCausalLM(tf.LlamaConfig(**LM, vocab_size=_rows(tok, 64), pad_token_id=tok.pad_token_id,
                                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                             tie_word_embeddings=False))
    _save(dino, tok, path / "dino")
    _save(siglip, tok, path / "siglip")
    _save(llm, tok, path / "llm")
    vis, d = 128, 128
    g = torch.Generator().manual_seed(1)
    shapes = {"0": (4 * vis, vis), "2": (d, 4 * vis), "4": (d, d)}
    save_file({f"{k}.{p}": torch.randn(s if p == "weight" else s[:1], generator=g) * 0.02
               for k, s in shapes.items() for p in ("weight", "bias")}, str(path / "projector.safetensors"))
    return path
