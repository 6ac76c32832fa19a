"""Latency per action chunk of every head, batch 1, CPU; and what caching the prefix saves iterative samplers.

For each head: the median time of ``policy.sample`` (prefix encode + the head's decoding / denoising), actions
per second (chunk length / latency), at the ``tiny`` backbone size and at a realistic ``256m`` one (random
weights). For the iterative heads (DiT, UNet, flow, in-LLM diffusion) it also measures, in the same run, a naive
sampler that re-encodes the prefix at every one of its S steps — S single-step samples back to back — and
reports naive / cached as a ratio. Writes ``bench/results/inference.json`` and prints a Markdown table.

    python bench/inference.py [--backbone qwen2_vl] [--sizes tiny,256m] [--heads dit,flow] [--repeats 5]

``--released openvla,openvla_oft,hybridvla`` instead times the released models' architectures at their published
sizes (7.5 B parameters, bf16, random weights; ≈ 16 GB of memory each, one at a time) as ``vlaforge import``
builds them — OpenVLA's autoregressive token decoding against OFT's one-pass parallel decoding of a chunk of 8 —
into ``bench/results/released.json``. ``robovlms`` is KosMos P.H. (Kosmos-2 1.66 B, a full window of 8 frames,
chunk 10). ``smolvla`` is SmolVLA (≈ 450 M, one 512 px camera, chunk 50; ``--dtype float32``: bf16 is slower on
CPUs without bf16 units); ``pi0`` / ``pi05`` are PaliGemma-3B + the Gemma-300M expert (3.3 B, chunk 50; ≈ 8 GB). For
the experts on the prefix cache the row also gives what re-encoding the prefix at each of the 10 Euler steps would
cost (steps × one timed encode + the rest of the chunk), as a ratio.

``llava_vla`` is LLaVA-VLA on LLaVA-1.5-7B (CLIP ViT-L/14-336 + Vicuna-7B, 7.06 B, bf16: 14.1 GB of weights,
≈ 15 GB in all): CALVIN's static and gripper views stacked into one 336 px image (576 visual tokens), the 15-d state
written as text, then greedy decoding of its reply for a chunk of 5 actions: 2 leading tokens, the 35 action tokens
and </s>, 38 steps over the 32000-token vocabulary. ``dexvla`` is DexVLA: Qwen2-VL-2B (2.21 B, bf16) + the stage-1
ScaleDP-H head (1280 wide x 32 deep, 0.96 B, float32 as vlaforge runs heads), 3.18 B, 8.3 GB of weights, ≈ 9 GB in
all: three 320 x 240 views at 280 px (100 visual tokens each), 32 greedy reasoning tokens, the reasoning FiLM, then
10 DDIM steps for a chunk of 50 14-d actions. Greedy decoding stops at EOS, which random weights never choose, so
the bench fixes the count a trained model decodes (LLaVA-VLA: exactly 38; DexVLA: 32 is an assumed length of its
one-sentence sub-step reasoning; its ``evaluate()`` allows 256); the rows record the steps run
(``decoded_tokens`` / ``reasoning_tokens``). Both are built by the importers' ``llava_vla_policy`` /
``dexvla_policy`` from the published config.json values below, with code-built stand-ins for the Llama / Qwen
tokenizers (timing only):

    python bench/inference.py --released dexvla --repeats 1 --out bench/results/released_dexvla.json   # one per file
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from vlaforge.backbones.base import BACKBONES
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig, VLAPolicy
from vlaforge.processors import collate
from vlaforge.types import ACTION, OBS_IS_PAD, OBS_STATE, TASK, RobotSpec, image_key

CAMERAS = {"front": (224, 224), "wrist": (224, 224)}
CHUNK, ACTION_DIM, STATE_DIM = 8, 7, 8
ITERATIVE = {"dit": 10, "unet1d": 10, "flow": 10, "inllm_diffusion": 4}  # steps (each head's default)
HEAD_OPTIONS = {"tokens_fast": ("tokens", {"binning": "fast"})}


def build(backbone: str, size: str, head: str) -> tuple[VLAPolicy, dict]:
    name, options = HEAD_OPTIONS.get(head, (head, {}))
    robot = RobotSpec(cameras=CAMERAS, state_dim=STATE_DIM, action_dim=ACTION_DIM)
    cfg = PolicyConfig(backbone=BACKBONES.get(backbone)(size=size), head=HEADS.get(name)(**options),
                       chunk=CHUNK, exec_steps=CHUNK // 2).with_robot(robot)
    torch.manual_seed(0)
    policy = VLAPolicy(cfg)
    rng = np.random.default_rng(0)
    stats = {k: {"mean": np.zeros(d), "std": np.ones(d), "q01": -np.ones(d), "q99": np.ones(d), "min": -np.ones(d),
                 "max": np.ones(d)} for k, d in ((OBS_STATE, STATE_DIM), (ACTION, ACTION_DIM))}
    policy.make_pipelines(stats, robot)
    if policy.head.needs_fit:
        class Reader:  # smooth synthetic chunks are enough to train a FAST tokenizer for timing
            def __len__(self) -> int:
                return 512

            def __getitem__(self, i: int) -> dict:
                t = np.linspace(0, 1, CHUNK)[:, None]
                return {ACTION: 0.5 * np.sin(6 * t + rng.uniform(0, 6, ACTION_DIM)).astype(np.float32)}
        policy.fit(Reader())
    obs = {image_key(c): rng.integers(0, 255, (*hw, 3), dtype=np.uint8) for c, hw in CAMERAS.items()}
    obs.update({OBS_STATE: rng.normal(size=STATE_DIM).astype(np.float32), TASK: "put the red block in the bowl"})
    return policy.eval(), collate([policy.inputs(obs)])


def timed(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


def measure(backbone: str, size: str, head: str, repeats: int) -> dict:
    policy, batch = build(backbone, size, head)
    with torch.inference_mode():
        encode_ms = timed(lambda: policy.backbone.encode(batch, use_cache=True), repeats)
        sample_ms = timed(lambda: policy.sample(batch), repeats)
        row = {"backbone": backbone, "size": size, "head": head, "chunk": CHUNK, "encode_ms": round(encode_ms, 1),
               "chunk_ms": round(sample_ms, 1), "actions_per_s": round(CHUNK / sample_ms * 1000, 1),
               "params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 2)}
        steps = ITERATIVE.get(head)
        if steps:
            one = timed(lambda: policy.sample(batch, num_steps=1), repeats)
            naive = timed(lambda: [policy.sample(batch, num_steps=1) for _ in range(steps)], max(1, repeats // 2))
            row.update({"steps": steps, "one_step_ms": round(one, 1), "reencode_every_step_ms": round(naive, 1),
                        "cache_speedup": round(naive / sample_ms, 2)})
    return row


# The published architectures (OpenVLA-7B = Prismatic dinosiglip-224px + Llama-2-7B), as the importers build them.
DINO_L = dict(model_type="dinov2_with_registers", hidden_size=1024, mlp_ratio=4, num_hidden_layers=24,
              num_attention_heads=16, image_size=224, patch_size=14, num_register_tokens=4, layer_norm_eps=1e-6,
              hidden_act="gelu")
SIGLIP_SO400M = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                     num_attention_heads=16, image_size=224, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu")
LLAMA2_7B = dict(model_type="llama", vocab_size=32064, pad_token_id=32000, rms_norm_eps=1e-6)
INSTRUCTION = "put the red block in the bowl"  # --released rows' task
KOSMOS2_WINDOW, KOSMOS2_CHUNK = 8, 10  # RoboVLMs' CALVIN KosMos P.H. (ws-8, act-10)


def _robovlms() -> tuple[Any, Any]:
    """RoboVLMs' KosMos P.H.: kosmos-2-patch14-224 (transformers' Kosmos2Config defaults are its sizes)."""
    from transformers import Kosmos2Config

    from vlaforge.backbones.kosmos2 import CLIP_MEAN_STD
    from vlaforge.weights.robovlms import BACKBONE_OPTIONS, HEAD_OPTIONS

    hf = Kosmos2Config().to_dict()
    backbone = BACKBONES.get("kosmos2")(arch={"hf_config": hf, "image_mean": list(CLIP_MEAN_STD[0]),
                                              "image_std": list(CLIP_MEAN_STD[1])},
                                        dtype="bfloat16", add_tokens=("<grounding>",), **BACKBONE_OPTIONS)
    return backbone, HEADS.get("lstm")(hidden=1024, layers=4, mlp_widths=(1024, 512, 256), **HEAD_OPTIONS)


def paligemma_3b_arch() -> dict:
    """The ``paligemma`` backbone's ``3b`` size (pi0's VLM) as a checkpoint ``arch``."""
    from transformers import PaliGemmaConfig

    from vlaforge.backbones.paligemma import SIZES
    from vlaforge.backbones.tokenizer import build_tokenizer

    tok, size = build_tokenizer(), SIZES["3b"]
    text = dict(size["text"], pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)
    d = text["hidden_size"]
    hf = PaliGemmaConfig(vision_config={"model_type": "siglip_vision_model", **size["vision"], "projection_dim": d},
                         text_config=text, projection_dim=d, image_token_id=text["vocab_size"])
    return {"hf_config": hf.to_dict(), "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


# LLaVA-VLA's VLM: llava-v1.5-7b's config.json (Vicuna-7B v1.5 = Llama-2-7B shapes) and its mm_vision_tower,
# openai/clip-vit-large-patch14-336; LLaVA-VLA feeds CALVIN's 200 px static and 84 px gripper views.
LLAVA_V15_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                    hidden_act="silu", mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                    mm_vision_select_feature="patch", mm_hidden_size=1024, mm_use_im_start_end=False,
                    mm_use_im_patch_token=False)
CLIP_L_336 = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16, patch_size=14, image_size=336, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                  projection_dim=768)
LLAVA_VLA_STATE, LLAVA_VLA_CAMERAS = 15, {"static": (200, 200), "gripper": (84, 84)}  # CALVIN robot_obs, views
# DexVLA: its docs/config.json (Qwen2-VL-2B-Instruct's with model_type qwen2_vla; token ids come from the tokenizer)
# and the stage-1 ScaleDP-H as DexVLA's stage-2 script loads it (action / state 14, chunk 50, combine MLP 1024 wide);
# three AgileX views of 320 x 240.
DEXVLA_QWEN2VL_2B = dict(model_type="qwen2_vla", policy_head_type="scale_dp_policy", hidden_act="silu",
                         hidden_size=1536, intermediate_size=8960, max_position_embeddings=32768, max_window_layers=28,
                         num_attention_heads=12, num_hidden_layers=28, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_theta=1e6, sliding_window=32768, tie_word_embeddings=True, use_sliding_window=False,
                         vocab_size=151936, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                         vision_config=dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, in_chans=3,
                                            hidden_size=1536, patch_size=14, spatial_merge_size=2,
                                            temporal_patch_size=2))
SCALEDP_H = dict(width=1280, depth=32, mlp_ratio=4, combine_hidden=1024, chunk=50, action_dim=14, state_dim=14)
DEXVLA_CAMERAS = {c: (240, 320) for c in ("cam_high", "cam_left_wrist", "cam_right_wrist")}
# Tokens decoded per chunk. Greedy decoding stops at EOS, which random weights never choose, so the bench fixes the
# count a trained model decodes: LLaVA-VLA's reply is 2 leading tokens, 35 action tokens and </s> (parsed [2:-1]);
# DexVLA's sub-step reasoning (one short sentence; its evaluate() allows 256) is taken as 32 tokens.
DEXVLA_REASONING_TOKENS = 32
# tiny=True (tests/e2e/test_bench.py's smoke test): the same architectures shrunk to a few layers of width 64-256
# (image sizes kept).
TINY = {"llava": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=1024),
        "clip": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        "qwen": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=1024, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
                     vision_config=dict(DEXVLA_QWEN2VL_2B["vision_config"], depth=2, embed_dim=64, num_heads=4,
                                        hidden_size=128)),
        "scaledp": dict(width=256, depth=4, combine_hidden=64)}


def llama_like_tokenizer(vocab_size: int) -> Any:
    """A stand-in for Llama-2's tokenizer (no hub here) with the properties LLaVA-VLA's prompt depends on: ``▁`` word
    pieces, <unk>/<s>/</s> at ids 0-2, BOS added, pad = <unk>, and single rare characters (CJK, Hangul) at the top of
    its ``vocab_size`` ids, where the state and action bins count down: each bin decodes to one character that
    re-tokenises to one token, never a prompt token."""
    import json as _json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from vlaforge.backbones.llava import LLAVA_VLA_SYSTEM

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator([LLAVA_VLA_SYSTEM, "USER: ASSISTANT:", INSTRUCTION],  # common words: one piece each
                            trainers.BpeTrainer(vocab_size=min(480, vocab_size // 2), show_progress=False,
                                                special_tokens=["<unk>", "<s>", "</s>"]))
    state = _json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    rare = (chr(c) for c in [*range(0x4E00, 0xA000), *range(0xAC00, 0xD7A4)])
    while len(vocab) < vocab_size:
        vocab.setdefault(next(rare), len(vocab))
    tok = Tokenizer.from_str(_json.dumps(state))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


def _llava_vla(tok: Any, dtype: str, tiny: bool) -> PolicyConfig:
    """LLaVA-VLA on LLaVA-1.5-7B, as ``vlaforge import llava_vla`` builds it (``llava_vla_policy``)."""
    from vlaforge.backbones.base import with_token_ids
    from vlaforge.backbones.llava import CLIP_MEAN_STD
    from vlaforge.weights.llava_vla import CHUNK as LLAVA_CHUNK
    from vlaforge.weights.llava_vla import KEEP, llava_hf_config, llava_text_config, llava_vla_policy

    raw, vision = (dict(LLAVA_V15_7B, **TINY["llava"]), dict(CLIP_L_336, **TINY["clip"])) if tiny else \
        (LLAVA_V15_7B, CLIP_L_336)
    text = with_token_ids(llava_text_config(raw, "llava-v1.5-7b config.json"), tok)
    policy = llava_vla_policy(llava_hf_config(raw, vision, text), *CLIP_MEAN_STD, state_dim=LLAVA_VLA_STATE,
                              action_dim=ACTION_DIM, cameras=tuple(LLAVA_VLA_CAMERAS), dtype=dtype)
    reply = KEEP[0] + LLAVA_CHUNK * ACTION_DIM + 1
    return policy.replace(head=policy.head.replace(max_new_tokens=reply))


def _dexvla(tok: Any, dtype: str, tiny: bool) -> PolicyConfig:
    """DexVLA (Qwen2-VL-2B + stage-1 ScaleDP-H), as ``vlaforge import dexvla`` builds it (``dexvla_policy``)."""
    from vlaforge.backbones.qwen_vl import CLIP_MEAN_STD
    from vlaforge.weights.dexvla import dexvla_policy, dexvla_qwen_config

    ids = tok.convert_tokens_to_ids
    raw = dict(DEXVLA_QWEN2VL_2B, **(TINY["qwen"] if tiny else {}), bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, image_token_id=ids("<|image_pad|>"),
               video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
               vision_end_token_id=ids("<|vision_end|>"))
    shape = dict(SCALEDP_H, **(TINY["scaledp"] if tiny else {}))
    policy = dexvla_policy(dexvla_qwen_config(raw, "DexVLA docs/config.json"), shape, *CLIP_MEAN_STD,
                           cameras=tuple(DEXVLA_CAMERAS), dtype=dtype)
    return policy.replace(reasoning=policy.reasoning.replace(max_tokens=DEXVLA_REASONING_TOKENS))


def empty_released(system: str, tmp: Path, dtype: str = "bfloat16", tiny: bool = False
                   ) -> tuple[VLAPolicy, RobotSpec]:
    """A released architecture on the meta device (no memory: parameter counts), and the robot it is built for.

    ``tiny``: ``llava_vla`` / ``dexvla`` with their shape table shrunk (:data:`TINY`), for the smoke test."""
    from accelerate import init_empty_weights

    from vlaforge.backbones.qwen_vl import SPECIAL
    from vlaforge.backbones.tokenizer import build_tokenizer
    from vlaforge.presets.pi0 import pi0_backbone, pi0_head
    from vlaforge.presets.smolvla import smolvla_policy
    from vlaforge.weights.openvla import openvla_backbone

    arch = {"configs": {"dino": DINO_L, "siglip": SIGLIP_SO400M, "llm": LLAMA2_7B}, "image_mean": [0.0] * 3,
            "image_std": [1.0] * 3}
    extra = {"add_tokens": ("▁",)}  # the code-built tokenizer stands in for Llama-2's (timing only)
    if tiny and system not in ("llava_vla", "dexvla"):
        raise ValueError(f"--released {system}: no tiny shape table (only llava_vla, dexvla)")
    history, action_dim, built, tok = 1, ACTION_DIM, None, None
    if system == "openvla":
        cams, state, chunk = ("primary",), 0, 1
        backbone = openvla_backbone(arch, "bfloat16", proprio="none", readout="last", **extra)
        head = HEADS.get("tokens")(binning="uniform_edges", n_bins=256, decode_over="vocab")
    elif system == "openvla_oft":
        cams, state, chunk = ("primary", "wrist"), 8, 8
        backbone = openvla_backbone(arch, "bfloat16", proprio="mlp", readout="last", attention="bidirectional",
                                    image_crop=0.9, **extra)
        head = HEADS.get("mlp")(readout="placeholders", mlp="resnet", hidden=4096, layers=2, loss="l1")
    elif system == "hybridvla":
        cams, state, chunk = ("front",), 7, 1
        backbone = openvla_backbone(arch, "bfloat16", proprio="none", readout="last",
                                    add_tokens=("▁", "<BOD>", "<EOD>"))
        head = HEADS.get("hybrid")(
            token=HEADS.get("tokens")(binning="uniform_edges", n_bins=256, decode_over="vocab"),
            continuous=HEADS.get("inllm_diffusion")(num_train_timesteps=100, num_steps=4, clip_sample=None,
                                                    markers="vocab"),
            threshold=0.0, gripper_values=(0.0, 1.0), binarize_gripper=True, clip=True, ar_context="diffusion_block",
            ar_suffix="▁")  # threshold 0: always both paths, as a confident model runs
    elif system == "robovlms":
        cams, state, chunk, history = ("static",), 0, KOSMOS2_CHUNK, KOSMOS2_WINDOW
        backbone, head = _robovlms()
    elif system == "smolvla":
        cams, state, chunk = ("front",), 8, 50
        published = smolvla_policy(tiny=False)
        backbone, head = published.backbone.replace(dtype=dtype), published.head
    elif system in ("pi0", "pi05"):  # PaliGemma-3B + the Gemma-300M expert, as `vlaforge import openpi` builds it
        arch = paligemma_3b_arch()
        cams, state, chunk = ("base_0_rgb", "left_wrist_0_rgb"), 8, 50
        backbone = pi0_backbone(system == "pi05", arch=arch, dtype=dtype)
        head = pi0_head(system == "pi05")
    elif system == "llava_vla":  # the bins count down from Llama's 32000 ids
        tok = llama_like_tokenizer((TINY["llava"] if tiny else LLAVA_V15_7B)["vocab_size"])
        cams, built = LLAVA_VLA_CAMERAS, _llava_vla(tok, dtype, tiny)
    elif system == "dexvla":  # Qwen's chat / vision tokens: the config takes their ids
        tok = build_tokenizer(extra_special=SPECIAL)
        cams, built = DEXVLA_CAMERAS, _dexvla(tok, dtype, tiny)
    else:
        raise ValueError(f"--released: unknown system {system!r} (openvla, openvla_oft, hybridvla, robovlms, "
                         "smolvla, pi0, pi05, llava_vla, dexvla)")
    if built is not None:  # the whole policy config (normalisation, cameras, reasoning) as the importer writes it
        state, chunk, action_dim = built.state_dim, built.chunk, built.action_dim
    else:
        built = PolicyConfig(backbone=backbone, head=head, chunk=chunk, exec_steps=1 if history > 1 else chunk,
                             history=history)
    sizes = cams if isinstance(cams, dict) else {c: (224, 224) for c in cams}
    robot = RobotSpec(cameras=sizes, state_dim=state, action_dim=action_dim)
    cfg = built.with_robot(robot)
    tok = build_tokenizer() if tok is None else tok
    tok.add_tokens(list(cfg.backbone.add_tokens), special_tokens=True)  # built from `assets`: the tokenizer has them
    tok.save_pretrained(str(tmp / system))
    with init_empty_weights(include_buffers=False):  # a random-init size (no arch) builds its own tokenizer
        policy = VLAPolicy(cfg, assets=tmp / system if cfg.backbone.arch is not None else None)
    for module in policy.modules():  # meta construction skips transformers' tying (Qwen2-VL-2B, Gemma: lm_head)
        if isinstance(module, PreTrainedModel):
            module.tie_weights()
    return policy, robot


def build_released(system: str, tmp: Path, dtype: str = "bfloat16", tiny: bool = False
                   ) -> tuple[VLAPolicy, dict, int]:
    """A released architecture with random weights (never initialised twice: built empty, then filled), a batch of
    one observation, and its chunk length."""
    policy, robot = empty_released(system, tmp, dtype, tiny)
    state, history = robot.state_dim, policy.cfg.history
    gen = torch.Generator().manual_seed(0)
    filled: dict[int, tuple[torch.Tensor, torch.nn.Parameter]] = {}  # a tied parameter is filled once, stays shared
    for mod_name, module in policy.named_modules():  # parameters only: buffers (position ids …) are real already
        for name, p in list(module._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in filled:
                if p.dim() > 1:
                    value = torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(p.dtype)
                else:
                    one = any(s in f"{mod_name}.{name}" for s in ("norm", "layer_scale", "lambda"))
                    value = torch.full(p.shape, 1.0 if one else 0.0, dtype=p.dtype)
                filled[id(p)] = p, torch.nn.Parameter(value, requires_grad=p.requires_grad)  # p kept: ids unique
            module._parameters[name] = filled[id(p)][1]
    rng = np.random.default_rng(0)
    d = {k: {"mean": np.zeros(n), "std": np.ones(n), "q01": -np.ones(n), "q99": np.ones(n), "min": -np.ones(n),
             "max": np.ones(n)} for k, n in ((OBS_STATE, max(state, 1)), (ACTION, robot.action_dim))}
    policy.make_pipelines(d if state else {ACTION: d[ACTION]}, robot)
    lead = (history,) if history > 1 else ()
    obs = {image_key(c): rng.integers(0, 255, (*lead, *hw, 3), dtype=np.uint8) for c, hw in robot.cameras.items()}
    if history > 1:  # a full window: every frame is real
        obs[OBS_IS_PAD] = np.zeros(history, bool)
    obs[TASK] = INSTRUCTION
    if state:
        obs[OBS_STATE] = rng.normal(size=state).astype(np.float32)
    return policy.eval(), collate([policy.inputs(obs)]), policy.cfg.chunk


def time_released(system: str, tmp: Path, repeats: int, dtype: str = "bfloat16") -> dict:
    t0 = time.perf_counter()
    policy, batch, chunk = build_released(system, tmp, dtype)
    build_s = time.perf_counter() - t0
    info: dict[str, Any] = {}
    with torch.inference_mode():
        # minutes per call at 7.5 B on a CPU: a warm-up call would change nothing but the wall time
        ms = timed(lambda: policy.sample(batch, generator=torch.Generator().manual_seed(0), info=info), repeats,
                   warmup=False)
    row = {"system": system, "params_b": round(sum(p.numel() for p in policy.parameters()) / 1e9, 2),
           "chunk": chunk, "chunk_ms": round(ms, 1), "actions_per_s": round(chunk / ms * 1000, 3),
           "build_s": round(build_s, 1)}
    for key, name in (("token_ids", "decoded_tokens"), ("reasoning_ids", "reasoning_tokens")):
        if key in info:  # the greedy steps inside chunk_ms (a token head's reply, DexVLA's reasoning)
            row[name] = len(info[key][0])
    steps = getattr(policy.cfg.head, "num_steps", None) if policy.head.uses_kv_cache else None
    if steps:  # an expert on the prefix cache: what re-encoding the prefix at every Euler step would cost
        with torch.inference_mode():
            enc = timed(lambda: policy.encode(batch), repeats, warmup=False)
        naive = steps * enc + (ms - enc)  # S encodes + the same S expert steps (measured: chunk - one encode)
        row.update(prefix_encode_ms=round(enc, 1), steps=steps, reencode_every_step_ms=round(naive, 1),
                   cache_speedup=round(naive / ms, 2))
    return row


def measure_released(systems: list[str], repeats: int, out: Path, dtype: str = "bfloat16") -> None:
    import gc
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for system in systems:
            rows.append(time_released(system, Path(tmp), repeats, dtype))
            print(json.dumps(rows[-1]), flush=True)
            gc.collect()
    base = next((r for r in rows if r["system"] == "openvla"), None)
    for r in rows:
        r["actions_per_s_vs_openvla"] = round(r["actions_per_s"] / base["actions_per_s"], 2) if base else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": 1,
                                        "dtype": dtype, "image": 224, "weights": "random"}, "results": rows},
                              indent=2))
    print("\n| system | params (B) | chunk | ms / chunk | actions / s | vs OpenVLA |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        vs = f"{r['actions_per_s_vs_openvla']}x" if r["actions_per_s_vs_openvla"] is not None else "-"
        cache = f" (prefix cache {r['cache_speedup']}x)" if "cache_speedup" in r else ""
        for key, what in (("decoded_tokens", "tokens decoded"), ("reasoning_tokens", "reasoning tokens")):
            cache += f" ({r[key]} {what})" if key in r else ""
        print(f"| {r['system']} | {r['params_b']} | {r['chunk']} | {r['chunk_ms']}{cache} | {r['actions_per_s']} | "
              f"{vs} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="qwen2_vl")
    ap.add_argument("--sizes", default="tiny,256m")
    ap.add_argument("--heads", default="tokens,tokens_fast,mlp,lstm,gpt,dit,unet1d,flow,inllm_diffusion,hybrid")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--released", default="",
                    help="openvla,openvla_oft,hybridvla,robovlms,smolvla,pi0,pi05,llava_vla,dexvla at published "
                         "size (see above)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="--released weights' dtype")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(__file__).parent / "results"
    if args.released:
        measure_released(args.released.split(","), args.repeats, Path(args.out or results / "released.json"),
                         args.dtype)
        return
    args.out = args.out or str(results / "inference.json")
    rows = []
    for size in args.sizes.split(","):
        for head in args.heads.split(","):
            rows.append(measure(args.backbone, size, head, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"torch": torch.__version__, "threads": args.threads, "batch": 1,
                                        "cameras": len(CAMERAS), "image": 224}, "results": rows}, indent=2))
    print("\n| size | head | ms / chunk | actions / s | steps | re-encode every step ms | cached speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = (f"{r['steps']} | {r['reencode_every_step_ms']} | {r['cache_speedup']}x" if "steps" in r
                 else "- | - | -")
        print(f"| {r['size']} | {r['head']} | {r['chunk_ms']} | {r['actions_per_s']} | {extra} |")


if __name__ == "__main__":
    main()
