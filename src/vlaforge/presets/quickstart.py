"""CPU quick-start recipes: a tiny SmolVLM-architecture VLA trained from scratch on Meta-World demos.

Sized so that collect -> train -> eval on Meta-World MT10 fits in 30 minutes on 2 CPU cores (see README). They train
with ``precision=auto``: bf16 autocast where the CPU has bf16 units (AMX, AVX512-BF16: 1.47x per step on the Xeon,
``bench/results/levers_xeon_amx.json``), fp32 elsewhere (without them bf16 is 20x slower).
"""

from __future__ import annotations

from vlaforge.backbones.base import BACKBONES
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig
from vlaforge.presets import PRESETS
from vlaforge.train.config import DataConfig, OptimConfig, TrainConfig

# The recipe of issue 15's ablation on MT10 (bench/results/ablate_mt10.md), about half the cost per sample of the tiny
# VLM as it is: a convolutional stem (16..128 channels) under 2 of the 4 ViT layers and 2 of the 4 LM layers, no image
# wrapper tokens, and 32 spatial-softmax keypoints per view that reach the readout both as prefix tokens and past the LM
LEAN = dict(vision_stem="conv", stem_width=16, vision_layers=2, lm_layers=2, image_special_tokens=False,
            keypoints=32, keypoints_to_readout=True, readout="act")


def _quickstart(head: str, backbone: dict[str, object] | None = None, steps: int = 2000, env_state_loss: float = 0.0,
                **head_options: object) -> TrainConfig:
    policy = PolicyConfig(backbone=BACKBONES.get("smolvlm")(size="tiny", proprio="mlp", **(backbone or {})),
                          head=HEADS.get(head)(**head_options), chunk=8, exec_steps=2, env_state_loss=env_state_loss)
    return TrainConfig(policy=policy, data=DataConfig(shift_pad=4), optim=OptimConfig(lr=3e-4, warmup_steps=100),
                       steps=steps, batch_size=32, save_every=500, log_every=10, precision="auto")


@PRESETS.register("quickstart_mlp")
def quickstart_mlp() -> TrainConfig:
    """The quick start's default: the lean tiny VLM (conv stem, keypoints into the readout) and an L1 MLP on a
    learned act token, which also learns to say where the objects and the goal are (``env_state_loss``: the
    demos' ``observation.environment_state``, a training target only; ``--policy.env_state_loss=0`` trains on data
    without it). 4,000 steps is an upper bound: the quick start fits its schedule to the training budget."""
    return _quickstart("mlp", LEAN, steps=4000, env_state_loss=1.0)


@PRESETS.register("quickstart_tokens")
def quickstart_tokens() -> TrainConfig:
    """Discrete action tokens (256 bins) decoded by the tiny VLM."""
    return _quickstart("tokens")


@PRESETS.register("quickstart_dit")
def quickstart_dit() -> TrainConfig:
    """The quick start's recipe (lean tiny VLM, environment-state target) with a DiT diffusion head instead of the
    L1 MLP: adaLN-Zero on the readout + state, the whole chunk as one token (no cross-attention: about as fast per
    step as the MLP with 8 noise draws per backbone pass), predicting the clean chunk, and 10 DDIM steps from zeros
    (a deterministic policy). On MT10 within 15 CPU minutes it scores 78-82 % where ScaleDP's defaults (a token per
    step, cross-attention, noise prediction, 4 draws) scored 74 % (bench/results/peer_vs_vla_mt10_xeon.md)."""
    return _quickstart("dit", LEAN, steps=4000, env_state_loss=1.0, tokens="chunk", cross_attention=False,
                       repeated_diffusion_steps=8, prediction_type="sample", init_noise=0.0)
