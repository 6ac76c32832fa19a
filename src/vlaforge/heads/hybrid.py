"""HybridVLA's hybrid of a token head and a continuous head, with the confidence-gated ``diff+ar`` ensemble.

Paper: HybridVLA (Liu et al., 2025); reference: ``scripts/sim.py`` (the gate) and ``train.py`` (the joint loss).
Both heads train on the same prefix encode with a weighted sum of their losses. At inference ``mode`` selects
``ar`` (the token head), ``diff`` (the continuous head) or ``diff+ar``: when the token head's mean
max-probability over the action tokens (gripper dims excluded) is above ``threshold``, the two predictions are
averaged — gripper dims then snapped to open/closed — otherwise the continuous prediction is used. HybridVLA
sums 6 max-probabilities against 5.8, i.e. a mean of 0.9667, the default here. Difference: the token head reads
the bare prefix rather than the prefix plus the noisy diffusion block, so the AR tokens never condition on
noise; any continuous head (in-LLM diffusion, DiT, UNet, flow, MLP) can be paired with any token binning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from vlaforge.config import ConfigError
from vlaforge.heads.base import HEADS, ActionHead, ComponentHeadConfig, HeadConfig
from vlaforge.types import Context, LMSpec

MODES = ("ar", "diff", "diff+ar")


def _default_token() -> HeadConfig:
    return HEADS.get("tokens")()


def _default_continuous() -> HeadConfig:
    return HEADS.get("inllm_diffusion")()


@HEADS.register("hybrid")
@dataclass(frozen=True)
class HybridHeadConfig(HeadConfig):
    """HybridVLA: a token head + a continuous head trained jointly; ar | diff | diff+ar (confidence gate)."""

    composite: ClassVar[bool] = True

    token: ComponentHeadConfig = field(default_factory=_default_token)
    continuous: ComponentHeadConfig = field(default_factory=_default_continuous)
    token_weight: float = 1.0
    continuous_weight: float = 1.0
    mode: str = "diff+ar"
    threshold: float = 5.8 / 6  # mean max-probability above which the two predictions are averaged
    gripper_dims: tuple[int, ...] = (-1,)  # excluded from the confidence; snapped to +-1 when averaging

    def validate(self) -> None:
        self.check(self.mode in MODES, "mode", f"one of {MODES}")
        self.check(0 <= self.threshold <= 1, "threshold", "in [0, 1]")
        if self.token.type != "tokens":
            raise ConfigError("head.token.type", "'tokens'", self.token.type)
        if self.continuous.type in ("tokens", "hybrid"):
            raise ConfigError("head.continuous.type", "a continuous head", self.continuous.type)

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> HybridHead:
        kw = {"action_dim": action_dim, "chunk": chunk, "state_dim": state_dim, "lm": lm}
        return HybridHead(self, action_dim, chunk, self.token.build(**kw), self.continuous.build(**kw))


def hybrid_gate(ar: Tensor, diff: Tensor, confidence: Tensor, threshold: float,
                gripper_dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """HybridVLA's ensemble. ``confidence``: (B, H, Da) max-probability of each action token.

    Returns the actions (B, H, Da) and which rows were averaged (B,).
    """
    grip = torch.zeros(ar.shape[-1], dtype=torch.bool, device=ar.device)
    grip[list(gripper_dims)] = True
    conf = confidence[..., ~grip] if grip.any() and confidence.dim() == 3 else confidence
    use_avg = conf.float().flatten(1).mean(1) > threshold
    avg = (ar + diff) / 2
    avg[..., grip] = torch.where(avg[..., grip] > 0, 1.0, -1.0)
    return torch.where(use_avg[:, None, None], avg, diff), use_avg


class HybridHead(ActionHead):
    def __init__(self, cfg: HybridHeadConfig, action_dim: int, chunk: int, token: ActionHead,
                 continuous: ActionHead) -> None:
        super().__init__(cfg, action_dim, chunk)
        self.token, self.continuous = token, continuous
        self.in_sequence = True
        self.uses_kv_cache = continuous.uses_kv_cache

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        t = self.token.loss(ctx, batch)
        c = self.continuous.loss(ctx, batch)
        loss = self.cfg.token_weight * t["loss"] + self.cfg.continuous_weight * c["loss"]
        return {"loss": loss, "token_loss": t["loss"].detach(), "continuous_loss": c["loss"].detach(),
                **{f"token_{k}": v for k, v in t.items() if k != "loss"}}

    @torch.no_grad()
    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               mode: str | None = None, **options: Any) -> Tensor:
        mode = mode or self.cfg.mode
        if mode not in MODES:
            raise ValueError(f"hybrid mode: expected one of {MODES}, got {mode!r}")
        if mode == "ar":
            return self.token.sample(ctx, batch, generator=generator)
        diff = self.continuous.sample(ctx, batch, generator=generator, **options)
        if mode == "diff":
            return diff
        ar = self.token.sample(ctx, batch, generator=generator)
        actions, averaged = hybrid_gate(ar, diff, ctx.extras["token_confidence"], self.cfg.threshold,
                                        self.cfg.gripper_dims)
        ctx.extras["hybrid_averaged"] = averaged
        return actions
