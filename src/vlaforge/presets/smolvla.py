"""SmolVLA (Shukor et al., 2025) as published: SmolVLM2 truncated to 16 text layers + a 0.75-wide action expert.

``smolvla`` builds the published architecture at random init (``--policy.backbone.pretrained=DIR`` starts from a
SmolVLM2 snapshot, ``vlaforge import lerobot`` from LeRobot's released weights); ``smolvla_tiny`` is the same
architecture and recipe on the tiny SmolVLM for CPU tests and benchmarks.
"""

from __future__ import annotations

from typing import Any

from vlaforge.backbones.base import BACKBONES
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig
from vlaforge.presets import PRESETS
from vlaforge.train.config import DataConfig, OptimConfig, TrainConfig
from vlaforge.types import ACTION, OBS_STATE

# The backbone options SmolVLA's VLM uses (vlaforge.weights.lerobot imports with these): the prefix is
# [image tokens of each view, bare] [task + "\n", right-padded] [state], the images and prompt attending to each
# other, the state token after them; embeddings x sqrt(hidden); RoPE base 10000; resize-with-pad (left/top) to 512.
SMOLVLA_BACKBONE: dict[str, Any] = dict(
    proprio="linear", proprio_position="after_prompt", attention="prefix_lm", image_special_tokens=False,
    embed_scale=True, rope_theta=10000.0, prompt_template="{task}\n", prompt_lowercase=False, max_prompt_tokens=48,
    prompt_special_tokens=True,
    image_resize="pad_topleft", readout="last")


def smolvla_policy(tiny: bool, **backbone: Any) -> PolicyConfig:
    """SmolVLA's policy config: the backbone options above, the expert, chunk 50, mean/std normalization."""
    options = {**SMOLVLA_BACKBONE, **backbone}
    if tiny:
        options = {"size": "tiny", "image_size": 64, "lm_layers": 2, **options}
    else:
        options = {"size": "500m", "lm_layers": 16, "freeze": ("vision", "projector", "lm"), "dtype": "bfloat16",
                   **options}
    head = HEADS.get("smolvla_expert")(max_action_dim=32 if not tiny else 0)
    return PolicyConfig(backbone=BACKBONES.get("smolvlm")(**options), head=head, chunk=50, exec_steps=50,
                        normalization={OBS_STATE: "mean_std", ACTION: "mean_std"})


def _smolvla(tiny: bool) -> TrainConfig:
    # LeRobot SmolVLAConfig: AdamW lr 1e-4, betas (0.9, 0.95), weight decay 1e-10, clip 10, 1k warmup then cosine
    # to 2.5e-6 over 30k steps; docs: batch 64, 20k steps for a fine-tune.
    optim = OptimConfig(lr=1e-4, weight_decay=1e-10, betas=(0.9, 0.95), warmup_steps=10 if tiny else 1000,
                        min_lr_ratio=0.025, grad_clip=10.0)
    policy = smolvla_policy(tiny)
    if tiny:
        return TrainConfig(policy=policy, data=DataConfig(shift_pad=0), optim=optim, steps=200, batch_size=8,
                           save_every=200, log_every=10, precision="fp32")
    return TrainConfig(policy=policy, data=DataConfig(shift_pad=0), optim=optim, steps=20_000, batch_size=64,
                       save_every=5000, log_every=10, precision="bf16")


@PRESETS.register("smolvla")
def smolvla() -> TrainConfig:
    """SmolVLA: SmolVLM2-500M cut to its first 16 text layers + a 0.75-wide flow-matching action expert.

    Published: ``lerobot/smolvla_base`` ≈ 450 M parameters (this build: 350 M in the truncated VLM — SigLIP-B/16
    at 512 px 86 M, connector 12 M, 16 SmolLM2-360M layers with their embedding 205 M, LM head 47 M — and 100 M in
    the expert and projections). Recipe (LeRobot ``SmolVLAConfig`` + docs): the VLM frozen (``train_expert_only``),
    the state projection and the expert trained; chunk 50, all 50 executed; mean/std for state and actions, padded
    to 32 dims; AdamW lr 1e-4, betas (0.9, 0.95), weight decay 1e-10, clip 10, 1k warmup, cosine to 2.5e-6;
    batch 64, 20k steps (≈ 4 h on one A100, LeRobot docs); bf16; 10 Euler steps. Memory (computed): 100 M
    trainable × 16 B + 350 M frozen bf16 × 2 B ≈ 2.3 GB of weights and optimizer states, plus activations (not
    measured here); inference ≈ 1 GB in bf16.
    """
    return _smolvla(tiny=False)


@PRESETS.register("smolvla_tiny")
def smolvla_tiny() -> TrainConfig:
    """SmolVLA's architecture and recipe on the tiny SmolVLM (2 of 4 layers kept, 64 px), fp32, for CPU."""
    return _smolvla(tiny=True)
