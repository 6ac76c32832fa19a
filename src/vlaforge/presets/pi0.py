"""pi0 and pi0.5 as published: PaliGemma-3B + a Gemma-300M action expert in joint attention (the ``pi0`` head).

``pi0`` / ``pi05`` build the published architecture at its size with random weights; start from released weights
with ``--init_from`` a checkpoint written by ``vlaforge import openpi`` (or train from a PaliGemma directory with
``--policy.backbone.pretrained=DIR``). ``*_tiny``: the same recipe on the tiny PaliGemma and a 64-wide expert,
fp32, for CPU. The lighter ``pi0_like`` preset (``flow`` head: a small expert on the prefix KV cache, learned
positions, no state token) stays in :mod:`vlaforge.presets.seeds`.
"""

from __future__ import annotations

from vlaforge.backbones.base import BACKBONES
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig
from vlaforge.presets import PRESETS
from vlaforge.presets.seeds import TINY_IMAGE, _train
from vlaforge.train.config import DataConfig, OptimConfig, TrainConfig
from vlaforge.types import ACTION, OBS_STATE

PI05_PROMPT = "Task: {task}, State: {state};\nAction: "  # openpi's PaligemmaTokenizer, discrete_state_input


def pi0_backbone(pi05: bool, size: str = "3b", **options):
    """openpi's prefix on vlaforge's PaliGemma: ``[images] [bos] prompt "\\n"`` (pi0) or the pi0.5 prompt with the
    state as 256 bins; the instruction as given (not lower-cased); resize with pad, pixels in [-1, 1]."""
    prompt = dict(prompt_template=PI05_PROMPT, prompt_state_bins=256, max_prompt_tokens=200) if pi05 else \
        dict(prompt_template="{task}\n", max_prompt_tokens=48)
    return BACKBONES.get("paligemma")(**{"size": size, "proprio": "none", "prompt_lowercase": False,
                                         "image_resize": "pad", **prompt, **options})


def pi0_head(pi05: bool, tiny: bool = False, **options):
    """The Gemma-300M expert (width 1024, GeGLU 4096) or a 64-wide one; states/actions padded to 32 dims."""
    return HEADS.get("pi0")(**{"width": 64 if tiny else 1024, "mlp_dim": 128 if tiny else 4096,
                               "time_conditioning": "adarms" if pi05 else "concat", "model_action_dim": 32,
                               "num_steps": 10, **options})


def _pi0(pi05: bool, tiny: bool) -> TrainConfig:
    backbone = pi0_backbone(pi05, "tiny" if tiny else "3b", gradient_checkpointing=not tiny,
                            **({"image_size": TINY_IMAGE} if tiny else {}))
    norm = "q01_q99" if pi05 else "mean_std"
    policy = PolicyConfig(backbone=backbone, head=pi0_head(pi05, tiny), chunk=50, exec_steps=5,
                          normalization={OBS_STATE: norm, ACTION: norm})
    if pi05:  # pi05_libero: warmup 10k to 5e-5, then constant; EMA 0.999
        optim = OptimConfig(lr=5e-5, weight_decay=1e-10, betas=(0.9, 0.95), warmup_steps=10_000, min_lr_ratio=1.0,
                            grad_clip=1.0)
    else:  # openpi TrainConfig defaults
        optim = OptimConfig(lr=2.5e-5, weight_decay=1e-10, betas=(0.9, 0.95), warmup_steps=1000, min_lr_ratio=0.1,
                            grad_clip=1.0)
    return _train(policy, tiny, optim=optim, steps=30_000, batch_size=32, precision="bf16",
                  ema=0.999 if pi05 else 0.99, data=DataConfig(shift_pad=0, crop_scale=0.9, rotate_deg=5.0,
                                                               color_jitter=0.3))


@PRESETS.register("pi0")
def pi0() -> TrainConfig:
    """pi0 (openpi): PaliGemma-3B (SigLIP So400m/14 at 224 px + Gemma 2B) + Gemma-300M action expert.

    Size ≈ 3.3 B parameters (PaliGemma 2.9 B + expert 0.3 B); chunk 50, actions/state padded to 32, 10 Euler
    steps, t ~ Beta(1.5, 1), mean/std normalization, prompt ``{task}\\n``, state through ``state_proj``. Recipe
    (openpi ``TrainConfig`` defaults): AdamW b2 0.95, weight decay 1e-10, clip 1.0, cosine 2.5e-5 → 2.5e-6 after 1k
    warmup, 30k steps, batch 32, EMA 0.99, bf16. Memory (openpi README): full fine-tune > 70 GB (A100/H100 80 GB),
    LoRA > 22.5 GB, inference > 8 GB (bf16 weights ≈ 6.6 GB).
    """
    return _pi0(pi05=False, tiny=False)


@PRESETS.register("pi0_tiny")
def pi0_tiny() -> TrainConfig:
    """pi0's architecture and recipe on the tiny PaliGemma with a 64-wide Gemma expert (CPU)."""
    return _pi0(pi05=False, tiny=True)


@PRESETS.register("pi05")
def pi05() -> TrainConfig:
    """pi0.5 (openpi): pi0's PaliGemma-3B + Gemma-300M expert with adaRMSNorm on the flow time, no state token.

    Size ≈ 3.3 B parameters (the expert's norms gain ``dense`` time projections); the state is written into the
    prompt as 256 bins (``Task: …, State: …;\\nAction: ``, up to 200 tokens), q01/q99 normalization, chunk 50,
    10 Euler steps. Recipe (openpi ``pi05_libero``): AdamW clip 1.0, warmup 10k to 5e-5 then constant, EMA 0.999,
    30k steps (openpi: batch 256 across GPUs; 32 per device here), bf16. Memory: as pi0 (openpi README:
    full fine-tune > 70 GB, LoRA > 22.5 GB, inference > 8 GB).
    """
    return _pi0(pi05=True, tiny=False)


@PRESETS.register("pi05_tiny")
def pi05_tiny() -> TrainConfig:
    """pi0.5's architecture and recipe on the tiny PaliGemma with a 64-wide adaRMS Gemma expert (CPU)."""
    return _pi0(pi05=True, tiny=True)
