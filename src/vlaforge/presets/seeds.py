"""Recipes mirroring the seed systems (HybridVLA, DexVLA/DiVLA, LLaVA-VLA, RoboVLMs) and two anchors (pi0, OFT).

Every recipe comes in two variants:

* ``NAME`` — the published recipe: the seed's head, chunking, normalization, optimizer, schedule, batch size,
  steps, precision (bf16), freezing / LoRA and gradient checkpointing. The backbone is the family's largest
  random-init architecture defined here (``256m``, see :mod:`vlaforge.backbones.sizes`) because the published
  weights are not bundled; pass ``--policy.backbone.pretrained=DIR`` (a converted checkpoint) to get the
  published model. Each docstring gives the published model's size and its training memory.
* ``NAME_tiny`` — the same recipe on the family's ``tiny`` architecture, 32 px images (56 for Qwen2-VL, whose
  patch merger needs multiples of 28) and a small head, fp32 and no checkpointing: it trains in seconds on a CPU
  (``tests/unit/test_presets.py``, ``bench/train.py``).

Memory figures are quoted from the seed's README/issues where they exist (sources: the feature inventory
``seed_systems.md`` and ``anchors.md``); otherwise they are computed and marked so: bf16 autocast keeps fp32
weights, so a trainable parameter costs 16 bytes (weights 4 + gradients 4 + AdamW moments 8), a frozen one 4,
plus activations; ZeRO-2 shards gradients + moments, ZeRO-3 / FSDP full-shard everything, across the GPUs.

``batch_size`` is per device, as in the seeds' scripts; multiply by the GPU count for the global batch.
Where a seed uses DeepSpeed, the preset asks for ``distributed="fsdp"`` (torch's fully_shard, ZeRO-3-like),
except DexVLA, which uses ``ddp`` (≈ 3.2 B parameters: 51 GB of states + a 13 GB EMA fit an 80 GB GPU with bf16
autocast). The seeds' own engine is one flag away: ``--distributed=deepspeed
--deepspeed_config=configs/deepspeed/zero2.json`` (or ``zero3.json``; verified on CPU processes only, and without
EMA, which DeepSpeed's partitioned bf16 parameters do not allow).
"""

from __future__ import annotations

from typing import Any

from vlaforge.backbones.base import BACKBONES, LoraConfig
from vlaforge.backbones.llava import LLAVA_VLA_AFTER_IMAGE, LLAVA_VLA_BEFORE_IMAGE, LLAVA_VLA_IMAGE_SIZE
from vlaforge.heads.base import HEADS
from vlaforge.heads.reasoning import ReasoningConfig
from vlaforge.policy import PolicyConfig
from vlaforge.presets import PRESETS
from vlaforge.train.config import DataConfig, OptimConfig, TrainConfig
from vlaforge.types import ACTION, OBS_STATE

FULL_SIZE = "256m"  # the largest random-init size every family defines
TINY_IMAGE = 32
GRIPPER = (-1,)  # the last action/state dim: left in raw units where the seed masks it out of normalization
HF_BETAS = (0.9, 0.999)  # torch / HF Trainer AdamW defaults, used by all four seeds


def _backbone(family: str, tiny: bool, **options: Any):
    """The family's backbone at the full (``256m``) or the ``tiny`` size; tiny turns checkpointing off."""
    if tiny:
        options["gradient_checkpointing"] = False
        options.setdefault("image_size", TINY_IMAGE)
        if options.get("lora") is not None:  # a tiny rank keeps the recipe's LoRA path exercised
            lora = options["lora"]
            options["lora"] = lora.replace(r=4, alpha=max(1, 4 * lora.alpha // lora.r))  # same alpha / r
    return BACKBONES.get(family)(size="tiny" if tiny else FULL_SIZE, **options)


def _train(policy: PolicyConfig, tiny: bool, *, optim: OptimConfig, steps: int, batch_size: int,
           data: DataConfig | None = None, **kw: Any) -> TrainConfig:
    """The TrainConfig; tiny variants: fp32, a CPU batch of 8, no sharding (the recipe is otherwise the same)."""
    if tiny:
        kw.update(precision="fp32", distributed="none", deepspeed_config="")
        warm = optim.warmup_steps
        optim = optim.replace(warmup_steps=min(warm, 10))
        steps, batch_size = min(steps, 200), 8
    return TrainConfig(policy=policy, data=data or DataConfig(shift_pad=0), optim=optim, steps=steps,
                       batch_size=batch_size, save_every=max(1, min(steps, 5000)), log_every=10, **kw)


# ---------------------------------------------------------------- HybridVLA
def _hybridvla(tiny: bool) -> TrainConfig:
    backbone = _backbone("prismatic", tiny, proprio="none", readout="last", freeze=("vision",),
                         gradient_checkpointing=True,
                         **{**OPENVLA_BACKBONE, "prompt_lowercase": True, "add_tokens": ("▁", "<BOD>", "<EOD>")})
    diffusion = HEADS.get("inllm_diffusion")(num_train_timesteps=100, num_steps=4, beta_schedule="squaredcos_cap_v2",
                                             repeated_diffusion_steps=4, clip_sample=None, markers="vocab")
    head = HEADS.get("hybrid")(token=HEADS.get("tokens")(binning="uniform_edges", n_bins=256, decode_over="vocab"),
                               continuous=diffusion, token_weight=1.0, continuous_weight=1.0, mode="diff+ar",
                               threshold=5.8 / 6, gripper_dims=GRIPPER, gripper_values=(0.0, 1.0),
                               binarize_gripper=True, clip=True, ar_context="diffusion_block", ar_suffix="▁")
    policy = PolicyConfig(backbone=backbone, head=head, chunk=1, exec_steps=1,
                          normalization={OBS_STATE: "q01_q99", ACTION: "q01_q99"},
                          normalize_skip={OBS_STATE: GRIPPER, ACTION: GRIPPER})
    optim = OptimConfig(lr=2e-5, weight_decay=0.0, betas=HF_BETAS, warmup_steps=0, min_lr_ratio=1.0, grad_clip=1.0)
    return _train(policy, tiny, optim=optim, steps=20_000, batch_size=32, precision="bf16", distributed="fsdp")


@PRESETS.register("hybridvla")
def hybridvla() -> TrainConfig:
    """HybridVLA: Prismatic (DINOv2 + SigLIP + Llama-2) with AR action tokens and diffusion inside the LLM.

    Published: ``prism-dinosiglip-224px+7b`` ≈ 7.3 B parameters (Llama-2-7B 6.7 B + DINOv2-L 0.3 B + SigLIP
    So400m 0.4 B); the architecture ``vlaforge import hybridvla`` builds (OpenVLA's prompt and tokens, ``<BOD>`` /
    ``<EOD>`` vocabulary rows, the proprio token inside the diffusion block, tokens decoded after the noisy block,
    the gripper in {0, 1}). Recipe (``train.py``, README): hybrid loss CE(256-bin tokens) + MSE(ε), weights 1:1;
    the batch tiled ``repeated_diffusion_steps=4`` times; DDPM 100 steps (squaredcos), 4 DDIM steps at inference; the
    ``diff+ar`` gate at 5.8/6; q01/q99 ``BOUNDS_Q99`` with the gripper left unnormalized (``normalize_skip``);
    chunk 1 (``FUTURE_ACTION_STEPS=0``); vision frozen ("finetune" stage); AdamW lr 2e-5 constant, weight decay
    0, clip 1.0; FSDP full-shard, bf16, gradient checkpointing; 32 per GPU on 8×A100 (global 256). The seed
    trains for epochs (300 on RLBench); ``steps`` here is a placeholder — set it for your data.
    Memory (computed): 6.7 B trainable × 16 B + 0.7 B frozen × 4 B ≈ 110 GB of states, ≈ 14 GB/GPU
    FSDP-sharded over 8×A100-80GB plus checkpointed activations (the repo documents no number, issue #14).
    """
    return _hybridvla(tiny=False)


@PRESETS.register("hybridvla_tiny")
def hybridvla_tiny() -> TrainConfig:
    """HybridVLA's recipe on the tiny Prismatic (CPU smoke tests and benchmarks)."""
    return _hybridvla(tiny=True)


# ---------------------------------------------------------------- DexVLA / DiVLA (Qwen2-VL)
def _dexvla_data() -> DataConfig:
    # RandomCrop 95 % (≈ 0.9 of the area) + resize, RandomRotation ±5°, ColorJitter(0.3, 0.4, 0.5).
    return DataConfig(shift_pad=0, crop_scale=0.9, rotate_deg=5.0, color_jitter=0.3)


def _dexvla(tiny: bool, stage: int) -> TrainConfig:
    backbone = _backbone("qwen2_vl", tiny, proprio="none", readout="mean", gradient_checkpointing=True,
                         image_size=None)  # tiny: the family's 56 px (multiples of 28 for the patch merger)
    # the published ScaleDP (vlaforge import dexvla): its combine condition MLP, bf16 timestep sinusoid and
    # DexVLA's projected FiLM; --policy.head.condition=sum --policy.head.time_precision=float32
    # --policy.reasoning.film=pooled --policy.head.size=L give the earlier vlaforge variant
    head = HEADS.get("dit")(size="tiny" if tiny else "H", cross_attention=False, num_train_timesteps=100,
                            num_steps=10, beta_schedule="squaredcos_cap_v2", clip_sample=1.0,
                            repeated_diffusion_steps=1, condition="combine", combine_hidden=64 if tiny else 1024,
                            time_precision="bfloat16")
    policy = PolicyConfig(backbone=backbone, head=head, chunk=50, exec_steps=16,
                          normalization={OBS_STATE: "mean_std", ACTION: "min_max"},
                          reasoning=ReasoningConfig(max_tokens=8 if tiny else 256, loss_weight=1.0, film="projected"))
    if stage == 2:  # train_dexvla_stage2.sh: lr 2e-5 constant, warmup 1 %, 100k steps
        optim = OptimConfig(lr=2e-5, weight_decay=0.0, betas=HF_BETAS, warmup_steps=1000, min_lr_ratio=1.0)
        steps = 100_000
    else:  # train_dexvla_stage3.sh: from stage 2, cosine lr 2e-5, warmup 0.1 %, 80k steps
        optim = OptimConfig(lr=2e-5, weight_decay=0.0, betas=HF_BETAS, warmup_steps=80, min_lr_ratio=0.0)
        steps = 80_000
    return _train(policy, tiny, optim=optim, steps=steps, batch_size=12, data=_dexvla_data(), precision="bf16",
                  ema=0.9999, distributed="ddp", init_from=None)


@PRESETS.register("dexvla_stage2")
def dexvla_stage2() -> TrainConfig:
    """DexVLA stage 2 (embodied curriculum): Qwen2-VL + ScaleDP-H diffusion expert, sub-step reasoning, EMA.

    Published: Qwen2-VL-2B (2.2 B) + ScaleDP-H (1280 × 32, ≈ 1 B) ≈ 3.2 B ("about 3 B"), in DexVLA's exact
    variant: the ``combine`` MLP over [condition, state], the bf16 timestep sinusoid, the projected FiLM with its
    identity term. Start from the released parts: ``vlaforge import dexvla SCALEDP_CKPT --base QWEN2VL_DIR --out
    CKPT``, then ``vlaforge train dexvla_stage2 --init_from CKPT --data DIR --out DIR`` (``--policy.head.size=L``
    for ScaleDP-L without an import). Recipe (``train_dexvla_stage2.sh``): VLM and head fully trained (vision
    tower and LLM unfrozen), chunk 50 (16 executed per query), 10 DDIM steps of a 100-step squaredcos schedule,
    ε-MSE + reasoning CE (weight 1), actions min/max and state mean/std, the 95 % crop / ±5° / colour-jitter
    augmentation; AdamW lr 2e-5 constant with 1 % warmup, 100k steps, 12 per GPU × 8 GPUs, DeepSpeed ZeRO-2,
    bf16, gradient checkpointing, EMA 0.9999 (optional in the seed). Stage 1 (pre-training the expert alone) is
    not part of this recipe (its result is what the import brings). Memory (README, one A6000, batch 2): full
    training 38 GB (ScaleDP-L: 33 GB); DeepSpeed CPU offload 20–29 GB. Computed: 3.2 B × 16 B ≈ 51 GB of
    states, ≈ 18 GB/GPU with ZeRO-2 on 8 GPUs, plus 13 GB for the EMA copy and activations.
    """
    return _dexvla(tiny=False, stage=2)


@PRESETS.register("dexvla_stage2_tiny")
def dexvla_stage2_tiny() -> TrainConfig:
    """DexVLA stage 2's recipe on the tiny Qwen2-VL with a tiny DiT."""
    return _dexvla(tiny=True, stage=2)


@PRESETS.register("dexvla_stage3")
def dexvla_stage3() -> TrainConfig:
    """DexVLA stage 3 (task-specific adaptation), meant to start from stage 2's checkpoint.

    Run it with ``vlaforge train dexvla_stage3 --init_from RUN/checkpoints/last --data DIR --out DIR``, where RUN
    is the stage-2 run (``init_from`` is left empty here: the checkpoint then fixes the architecture).
    Differences from stage 2, as ``train_dexvla_stage3.sh``: a cosine schedule decaying to 0 instead of a
    constant lr (peak 2e-5), warmup 0.1 % (80 steps), 80k steps; FiLM reasoning injection on (DexVLA's
    projected variant, as in stage 2 here). The VLM stays unfrozen in the script (the paper is ambiguous about
    freezing, issue #5). Published size as :func:`dexvla_stage2` (≈ 3.2 B with ScaleDP-H); memory the same:
    38 GB full training on one A6000 at batch 2 (README), ≈ 18 GB/GPU of states with ZeRO-2 on 8 GPUs (computed).
    """
    return _dexvla(tiny=False, stage=3)


@PRESETS.register("dexvla_stage3_tiny")
def dexvla_stage3_tiny() -> TrainConfig:
    """DexVLA stage 3's recipe on the tiny Qwen2-VL (``--init_from`` a tiny stage-2 run to chain them)."""
    return _dexvla(tiny=True, stage=3)


def _divla(tiny: bool) -> TrainConfig:
    lora = LoraConfig(r=64, alpha=256, dropout=0.05, full=("projector",))
    backbone = _backbone("qwen2_vl", tiny, proprio="none", readout="mean", freeze=("vision",), lora=lora,
                         gradient_checkpointing=True, image_size=None)
    head = HEADS.get("unet1d")(down_dims=(32, 64) if tiny else (256, 512, 1024), kernel_size=5, n_groups=8,
                               cond_dim=64 if tiny else 256, time_dim=32 if tiny else 256,
                               num_train_timesteps=100, num_steps=10, beta_schedule="squaredcos_cap_v2",
                               clip_sample=1.0, repeated_diffusion_steps=1)
    policy = PolicyConfig(backbone=backbone, head=head, chunk=16, exec_steps=16,
                          normalization={OBS_STATE: "mean_std", ACTION: "min_max"})
    optim = OptimConfig(lr=2e-5, lr_head=2e-4, lr_projector=2e-4, weight_decay=0.0, betas=HF_BETAS,
                        warmup_steps=600, min_lr_ratio=0.0)
    return _train(policy, tiny, optim=optim, steps=60_000, batch_size=12, data=_dexvla_data(), precision="bf16",
                  distributed="fsdp")


@PRESETS.register("divla")
def divla() -> TrainConfig:
    """DiVLA: Qwen2-VL with LoRA + a Diffusion-Policy 1-D UNet head (``train_divla.sh``).

    Published: DiVLA-2B ≈ 2.2 B (Qwen2-VL-2B) + UNet (down dims 256/512/1024, ≈ 0.07 B); 82 Hz on one A6000
    (paper). Recipe: LoRA r 64 / alpha 256 / dropout 0.05 on the LLM, vision tower frozen, projector (merger)
    and head trained fully at ``non_lora_lr`` 2e-4 (``lr_projector`` / ``lr_head``), LoRA at 2e-5; cosine,
    60k steps; chunk 16, 100-step squaredcos DDPM with 10 DDIM steps; actions min/max, state mean/std into the
    head (not the VLM); ZeRO-2, bf16, gradient checkpointing. Memory (README, one A6000 batch 2): LoRA-VLM
    24 GB. Computed: 2.2 B frozen × 4 B ≈ 9 GB + ≈ 0.2 B trainable × 16 B ≈ 3 GB, plus activations.
    """
    return _divla(tiny=False)


@PRESETS.register("divla_tiny")
def divla_tiny() -> TrainConfig:
    """DiVLA's recipe (LoRA + UNet) on the tiny Qwen2-VL."""
    return _divla(tiny=True)


# ---------------------------------------------------------------- LLaVA-VLA
def _llava_vla(tiny: bool) -> TrainConfig:
    backbone = _backbone("llava", tiny, views="stitch", stitch_view_size=LLAVA_VLA_IMAGE_SIZE, image_resize="squash",
                         image_interpolation="bicubic", proprio="text", proprio_bins="uniform_edges",
                         prompt_before_image=LLAVA_VLA_BEFORE_IMAGE, prompt_template=LLAVA_VLA_AFTER_IMAGE,
                         prompt_lowercase=False,
                         max_prompt_tokens=128, action_tokens="add", freeze=("vision",),
                         gradient_checkpointing=True)
    head = HEADS.get("tokens")(binning="uniform_edges", n_bins=256, decode_over="vocab")
    policy = PolicyConfig(backbone=backbone, head=head, chunk=5, exec_steps=5,
                          normalization={OBS_STATE: "mean_3std", ACTION: "min_max"})
    optim = OptimConfig(lr=2e-5, weight_decay=0.0, betas=HF_BETAS, warmup_steps=300, min_lr_ratio=0.0)
    return _train(policy, tiny, optim=optim, steps=10_000, batch_size=32, precision="bf16", distributed="fsdp")


@PRESETS.register("llava_vla")
def llava_vla() -> TrainConfig:
    """LLaVA-VLA: LLaVA-1.5 with the cameras stitched into one image, proprio and actions as 256-bin tokens.

    As published (``vlaforge import llava_vla`` reads the released weights into the same options): the two views
    resized to 334 x 167 (Lanczos) and stacked, then bicubic to the tower; the Vicuna-v1 conversation with the
    robot system prompt around the image; the state normalized to 3 sigmas (``mean_3std``), binned on OpenVLA's
    edges, decoded to text and re-tokenised in the prompt (``proprio="text"``), greedy over the whole vocabulary.
    The release counts its action ids down from Llama's vocabulary (``action_tokens=count_down``, rare characters
    there); the random-init tokenizers end in common merges that the prompt uses, so the preset adds 256 tokens
    (``count_down`` with ``--policy.backbone.pretrained`` = a real LLaVA-1.5). The earlier variant stays one set
    of options away: ``--policy.backbone.proprio=tokens --policy.backbone.prompt_template='"{task}"'
    --policy.backbone.prompt_before_image= --policy.backbone.stitch_view_size=0 --policy.head.binning=uniform``
    (state embedded as action tokens, bins as equal halves).

    Published: LLaVA-VLA-7B ≈ 7.1 B (Vicuna-7B 6.7 B + CLIP ViT-L/14-336 0.3 B + MLP projector); a 0.5 B
    OneVision variant exists (use ``llava_onevision``). Recipe (``calvin_finetune_obs.sh``): static + gripper
    cameras stitched vertically, the binned proprio written in the prompt, a chunk of 5 actions = 35 tokens
    (all executed), next-token CE; LLM + projector fully fine-tuned, vision tower frozen; AdamW lr 2e-5 cosine,
    warmup 3 %, weight decay 0; 32 per GPU on 8×A100-80G, DeepSpeed ZeRO-3, bf16, gradient checkpointing; the
    seed trains 1 epoch of CALVIN ABC (≈ 7 h) — ``steps`` is a placeholder. Normalization: the seed uses CALVIN's
    pre-scaled actions (no extra normalization) and mean/std proprio; min/max here for arbitrary data.
    Memory (computed): 6.9 B trainable × 16 B + 0.3 B × 4 B ≈ 112 GB of states, ≈ 14 GB/GPU with ZeRO-3
    on 8 GPUs, plus activations (README: 8×A100-80G; "8G memory" claim for the 0.5 B model).
    """
    return _llava_vla(tiny=False)


@PRESETS.register("llava_vla_tiny")
def llava_vla_tiny() -> TrainConfig:
    """LLaVA-VLA's recipe on the tiny LLaVA."""
    return _llava_vla(tiny=True)


# ---------------------------------------------------------------- RoboVLMs
def _robovlms(tiny: bool) -> TrainConfig:
    # the options of RoboVLMs' released KosMos P.H. (vlaforge.weights.robovlms imports it with them): image tokens
    # right after BOS without <image> markers, its grounding prompt, the LSTM on the [ACT] feature itself,
    # separate arm (tanh) / gripper MLPs, padding frames left out of the window. The previous variant stays
    # reachable: --policy.backbone.image_markers=true --policy.backbone.prompt_template={task}
    # --policy.head.input_proj=true --policy.head.mlp=gelu --policy.head.window_pads=fuse
    from vlaforge.weights.robovlms import BACKBONE_OPTIONS, HEAD_OPTIONS

    backbone = _backbone("kosmos2", tiny, gradient_checkpointing=True, **BACKBONE_OPTIONS)
    head = HEADS.get("lstm")(hidden=64 if tiny else 1024, layers=4, gripper_weight=0.01,
                             mlp_widths=(64, 32, 16) if tiny else (1024, 512, 256), **HEAD_OPTIONS)
    policy = PolicyConfig(backbone=backbone, head=head, chunk=10, exec_steps=1, history=8,
                          normalization={OBS_STATE: "mean_std", ACTION: "q01_q99"},
                          normalize_skip={ACTION: GRIPPER})
    optim = OptimConfig(lr=2e-5, weight_decay=0.0, betas=HF_BETAS, warmup_steps=2_500, min_lr_ratio=0.01)
    return _train(policy, tiny, optim=optim, steps=50_000, batch_size=4,
                  data=DataConfig(shift_pad=2 if tiny else 10), precision="bf16", distributed="fsdp")


@PRESETS.register("robovlms")
def robovlms() -> TrainConfig:
    """RoboVLMs (RoboKosMos, policy-head history): Kosmos-2 per frame, an [ACT] token, an LSTM over 8 frames.

    Published: kosmos-2-patch14-224 ≈ 1.66 B + LSTM decoder (4 × 1024, ≈ 0.03 B) + MLP heads, as ``vlaforge import
    robovlms`` builds it. Recipe (``configs/calvin_finetune/*kosmos*ph*``): window 8, each frame encoded alone
    (``history="per_frame"``), image tokens right after BOS, ``<grounding>An image of a robot {task}``, a learnable
    [ACT] token read out, the LSTM on its 2048-d feature, separate arm (tanh) and gripper MLPs (1024-512-256),
    chunk 10 (``fwd_pred_next_n``), the first action executed per step, padding frames before the episode start
    left out of the window; Huber on the arm dims + 0.01 × BCE on the gripper logits; full fine-tune; AdamW
    lr 2e-5, weight decay 0, cosine to 0.01 × lr with a warmup; 50k steps (OXE ``max_steps``), 4 per GPU,
    DeepSpeed stage 2, bf16; random-shift augmentation with 10 px padding; q01/q99 actions with the gripper
    raw (the OXE recipe; the CALVIN runs clip to fixed ±0.65 bounds, which the import sets). Memory (computed):
    1.7 B × 16 B ≈ 27 GB of states, ≈ 9 GB/GPU with ZeRO-2 on 8 GPUs, plus activations of 8 frames per sample
    (the repo documents no number).
    """
    return _robovlms(tiny=False)


@PRESETS.register("robovlms_tiny")
def robovlms_tiny() -> TrainConfig:
    """RoboVLMs' recipe (per-frame history 8, LSTM) on the tiny Kosmos-2."""
    return _robovlms(tiny=True)


# ---------------------------------------------------------------- anchors
def _pi0_like(tiny: bool) -> TrainConfig:
    backbone = _backbone("paligemma", tiny, proprio="none", gradient_checkpointing=True)
    head = HEADS.get("flow")(width=64 if tiny else 1024, num_steps=10, repeated_diffusion_steps=1,
                             time_alpha=1.5, time_beta=1.0)
    policy = PolicyConfig(backbone=backbone, head=head, chunk=50, exec_steps=5,
                          normalization={OBS_STATE: "mean_std", ACTION: "mean_std"})
    optim = OptimConfig(lr=2.5e-5, weight_decay=1e-10, betas=(0.9, 0.95), warmup_steps=1000, min_lr_ratio=0.1,
                        grad_clip=1.0)
    return _train(policy, tiny, optim=optim, steps=30_000, batch_size=32, precision="bf16", ema=0.99,
                  data=DataConfig(shift_pad=0, crop_scale=0.9, rotate_deg=5.0, color_jitter=0.3))


@PRESETS.register("pi0_like")
def pi0_like() -> TrainConfig:
    """pi0-like: PaliGemma + a flow-matching action expert on the prefix KV cache.

    Published: pi0 ≈ 3.3 B (PaliGemma 2 B + Gemma-300M expert, width 1024), chunk 50. Recipe (openpi
    ``TrainConfig`` defaults): AdamW b2 0.95, weight decay 1e-10, clip 1.0, cosine lr 2.5e-5 → 2.5e-6 with 1k
    warmup, 30k steps, batch 32, EMA 0.99, bf16, mean/std normalization (pi0 does not use quantiles), 10 Euler
    steps, t ~ Beta(1.5, 1); LIBERO re-plans every 5 steps. Memory (openpi README): full fine-tune > 70 GB
    (A100-80GB / H100), LoRA > 22.5 GB, inference > 8 GB.
    """
    return _pi0_like(tiny=False)


@PRESETS.register("pi0_like_tiny")
def pi0_like_tiny() -> TrainConfig:
    """pi0's recipe on the tiny PaliGemma with a 64-wide expert."""
    return _pi0_like(tiny=True)


# The options OpenVLA's released models use (vlaforge.weights.openvla imports them with these): squashed
# bicubic images, the instruction as given, "▁" after the prompt (added to tokenizers that lack it: the
# random-init ones), bins counted down from the base vocabulary, 256 edges / 255 centres, greedy over the whole
# vocabulary.
OPENVLA_BACKBONE = dict(prompt_template="In: What action should the robot take to {task}?\nOut:",
                        prompt_lowercase=False, prompt_suffix="▁", add_tokens=("▁",), image_resize="squash",
                        image_interpolation="bicubic", action_tokens="count_down", max_prompt_tokens=96)


def _openvla(tiny: bool) -> TrainConfig:
    backbone = _backbone("prismatic", tiny, proprio="none", readout="last", lora=LoraConfig(r=32, alpha=16,
                         dropout=0.0), **OPENVLA_BACKBONE)
    head = HEADS.get("tokens")(binning="uniform_edges", n_bins=256, decode_over="vocab")
    policy = PolicyConfig(backbone=backbone, head=head, chunk=1, exec_steps=1, normalization={ACTION: "q01_q99"},
                          normalize_skip={ACTION: GRIPPER})
    optim = OptimConfig(lr=5e-4, weight_decay=0.0, betas=HF_BETAS, warmup_steps=0, min_lr_ratio=1.0)
    return _train(policy, tiny, optim=optim, steps=200_000, batch_size=16, precision="bf16", distributed="ddp",
                  data=DataConfig(shift_pad=0, crop_scale=0.9, color_jitter=0.2))


@PRESETS.register("openvla")
def openvla() -> TrainConfig:
    """OpenVLA: Prismatic (DINOv2 + SigLIP + Llama-2) writing 7 action tokens, as ``vlaforge import openvla`` builds it.

    Published: ``openvla/openvla-7b`` ≈ 7.5 B (Llama-2-7B 6.7 B + DINOv2-L 0.3 B + SigLIP So400m 0.4 B), 224 px,
    256-bin action tokens counted down from the Llama vocabulary, chunk 1. Recipe (``vla-scripts/finetune.py``):
    LoRA r 32 (alpha 16), AdamW lr 5e-4 constant, batch 16 per GPU, image augmentation (random-resized crop 0.9,
    colour jitter), q01/q99 with the gripper raw, bf16. Start from a converted checkpoint with
    ``--init_from`` (``vlaforge import openvla``). Memory (OpenVLA README): LoRA fine-tuning ≈ 27 GB at batch 1,
    ≈ 72 GB at batch 16; inference ≈ 15 GB in bf16.
    """
    return _openvla(tiny=False)


@PRESETS.register("openvla_tiny")
def openvla_tiny() -> TrainConfig:
    """OpenVLA's architecture and recipe on the tiny Prismatic."""
    return _openvla(tiny=True)


def _openvla_oft(tiny: bool) -> TrainConfig:
    backbone = _backbone("prismatic", tiny, proprio="mlp", readout="last", attention="bidirectional",
                         image_crop=0.9, lora=LoraConfig(r=32, alpha=16, dropout=0.0),
                         **{**OPENVLA_BACKBONE, "prompt_lowercase": True})
    head = HEADS.get("mlp")(readout="placeholders", mlp="resnet", hidden=64 if tiny else 4096, layers=2, loss="l1")
    policy = PolicyConfig(backbone=backbone, head=head, chunk=8, exec_steps=8,
                          normalization={OBS_STATE: "q01_q99", ACTION: "q01_q99"},
                          normalize_skip={ACTION: GRIPPER})
    optim = OptimConfig(lr=5e-4, weight_decay=0.01, betas=HF_BETAS, warmup_steps=0, min_lr_ratio=0.1)
    return _train(policy, tiny, optim=optim, steps=150_000, batch_size=8, precision="bf16", distributed="ddp",
                  data=DataConfig(shift_pad=0, crop_scale=0.9, color_jitter=0.2))


@PRESETS.register("openvla_oft")
def openvla_oft() -> TrainConfig:
    """OpenVLA-OFT: OpenVLA + parallel decoding of a chunk of 8, as ``vlaforge import openvla_oft`` builds it.

    Published: ≈ 7.5 B (OpenVLA) + an MLP-ResNet action head (hidden 4096, 2 blocks) + proprio projector.
    Architecture: the Llama attends bidirectionally; chunk x action_dim zero-embedded placeholder tokens and EOS
    follow the prompt and the head reads their hidden states in one pass (``readout=placeholders``); proprio is
    one token after the image patches; third-person + wrist cameras; LIBERO frames centre-cropped to 90 %.
    Recipe (LIBERO): L1 loss, LoRA r 32 (alpha 16), AdamW lr 5e-4 (the seed steps it ×0.1 after 100k; a cosine
    to 0.1 × lr here), 150k steps, 8 per GPU on 8 GPUs with DDP, bf16, q01/q99 (BOUNDS_Q99) with the gripper
    raw, random-resized-crop 0.9 + colour jitter. Memory (LIBERO.md): ≈ 62 GB/GPU at batch 8, ≈ 25 GB at
    batch 1; inference ≈ 16 GB.
    """
    return _openvla_oft(tiny=False)


@PRESETS.register("openvla_oft_tiny")
def openvla_oft_tiny() -> TrainConfig:
    """OpenVLA-OFT's architecture and recipe on the tiny Prismatic."""
    return _openvla_oft(tiny=True)


SEED_PRESETS = ("hybridvla", "dexvla_stage2", "dexvla_stage3", "divla", "llava_vla", "robovlms", "pi0_like",
                "openvla", "openvla_oft")
