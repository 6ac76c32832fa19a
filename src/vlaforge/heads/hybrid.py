"""HybridVLA's hybrid of a token head and a continuous head, with the confidence-gated ``diff+ar`` ensemble.

Paper: HybridVLA (Liu et al., 2025); reference: ``scripts/sim.py`` (the gate) and ``train.py`` (the joint loss).
Both heads train on the same prefix encode with a weighted sum of their losses. At inference ``mode`` selects
``ar`` (the token head), ``diff`` (the continuous head) or ``diff+ar``: when the token head's mean
max-probability over the action tokens (gripper dims excluded) is above ``threshold``, the two predictions are
averaged — gripper dims then snapped to open/closed — otherwise the continuous prediction is used. HybridVLA
sums 6 max-probabilities against 5.8, i.e. a mean of 0.9667, the default here. By default the token head reads
the bare prefix, so the AR tokens never condition on noise, and any continuous head (in-LLM diffusion, DiT, UNet,
flow, MLP) can be paired with any token binning. HybridVLA's released models need three options:
``ar_context="diffusion_block"`` decodes the tokens after ``<BOD> proprio t x <EOD> ▁`` with a random ``t`` and
pure-noise ``x`` (its ``predict_ar``; an in-LLM diffusion head provides the block), ``binarize_gripper`` with
``gripper_values=(0, 1)`` snaps each path's gripper at 0.5 before the average (its ``unnormalize_actions``) and
``clip`` clamps both paths to [-1, 1]. Difference that remains: in training the token loss still reads the bare
prefix (HybridVLA's training sequence puts the noisy block before the action tokens).
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
    sampling: ClassVar[tuple[str, ...]] = ("mode", "threshold")

    token: ComponentHeadConfig = field(default_factory=_default_token)
    continuous: ComponentHeadConfig = field(default_factory=_default_continuous)
    token_weight: float = 1.0
    continuous_weight: float = 1.0
    mode: str = "diff+ar"
    threshold: float = 5.8 / 6  # mean max-probability above which the two predictions are averaged
    gripper_dims: tuple[int, ...] = (-1,)  # excluded from the confidence; snapped when averaging
    gripper_values: tuple[float, float] = (-1.0, 1.0)  # closed / open; snapped at their midpoint (strictly above)
    binarize_gripper: bool = False  # snap each path's gripper before averaging and in ar / diff modes (HybridVLA)
    clip: bool = False  # clamp both paths to [-1, 1] first (HybridVLA's un-normalisation)
    ar_context: str = "prefix"  # "prefix" | "diffusion_block": tokens decoded after the noisy diffusion block
    ar_suffix: str = ""  # a token between the block and the action tokens (HybridVLA: "▁")

    def validate(self) -> None:
        self.check(self.mode in MODES, "mode", f"one of {MODES}")
        self.check(self.ar_context in ("prefix", "diffusion_block"), "ar_context", "prefix | diffusion_block")
        self.check(not self.ar_suffix or self.ar_context == "diffusion_block", "ar_suffix",
                   "empty unless ar_context=diffusion_block")
        self.check(len(self.gripper_values) == 2 and self.gripper_values[0] < self.gripper_values[1],
                   "gripper_values", "(closed, open) with closed < open")
        self.check(0 <= self.threshold <= 1, "threshold", "in [0, 1]")
        if self.token.type != "tokens":
            raise ConfigError("head.token.type", "'tokens'", self.token.type)
        if self.continuous.type in ("tokens", "hybrid"):
            raise ConfigError("head.continuous.type", "a continuous head", self.continuous.type)

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> HybridHead:
        kw = {"action_dim": action_dim, "chunk": chunk, "state_dim": state_dim, "lm": lm}
        return HybridHead(self, action_dim, chunk, self.token.build(**kw), self.continuous.build(**kw))


def _grip_mask(dims: tuple[int, ...], n: int, device: torch.device) -> Tensor:
    grip = torch.zeros(n, dtype=torch.bool, device=device)
    grip[list(dims)] = True
    return grip


def snap_gripper(a: Tensor, gripper_dims: tuple[int, ...], values: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Gripper dims -> ``values[1]`` strictly above the midpoint of ``values``, else ``values[0]``."""
    grip = _grip_mask(gripper_dims, a.shape[-1], a.device)
    out = a.clone()
    out[..., grip] = torch.where(a[..., grip] > sum(values) / 2, values[1], values[0]).to(a.dtype)
    return out


def hybrid_gate(ar: Tensor, diff: Tensor, confidence: Tensor, threshold: float, gripper_dims: tuple[int, ...],
                gripper_values: tuple[float, float] = (-1.0, 1.0)) -> tuple[Tensor, Tensor]:
    """HybridVLA's ensemble. ``confidence``: (B, H, Da) max-probability of each action token.

    Returns the actions (B, H, Da) and which rows were averaged (B,).
    """
    grip = _grip_mask(gripper_dims, ar.shape[-1], ar.device)
    conf = confidence[..., ~grip] if grip.any() and confidence.dim() == 3 else confidence
    use_avg = conf.float().flatten(1).mean(1) > threshold
    avg = snap_gripper((ar + diff) / 2, gripper_dims, gripper_values)
    return torch.where(use_avg[:, None, None], avg, diff), use_avg


class HybridHead(ActionHead):
    def __init__(self, cfg: HybridHeadConfig, action_dim: int, chunk: int, token: ActionHead,
                 continuous: ActionHead) -> None:
        super().__init__(cfg, action_dim, chunk)
        self.token, self.continuous = token, continuous
        self.in_sequence = True
        self.uses_kv_cache = continuous.uses_kv_cache
        if cfg.ar_context == "diffusion_block" and not continuous.provides_block:
            raise ValueError(f"head.ar_context=diffusion_block needs a continuous head that builds an in-sequence "
                             f"block (inllm_diffusion), got {cfg.continuous.type!r}")

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
        ar = self._ar(ctx, batch, generator) if mode != "diff" else None  # first, as HybridVLA's diff+ar does
        if mode == "ar":
            return self._finish(ar)
        diff = self._finish(self.continuous.sample(ctx, batch, generator=generator, **options))
        if mode == "diff":
            return diff
        actions, averaged = hybrid_gate(self._finish(ar), diff, ctx.extras["token_confidence"], self.cfg.threshold,
                                        self.cfg.gripper_dims, self.cfg.gripper_values)
        ctx.extras["hybrid_averaged"] = averaged
        return actions

    def required_tokens(self) -> list[str]:
        return [self.cfg.ar_suffix] if self.cfg.ar_suffix else []

    def _finish(self, a: Tensor) -> Tensor:
        """Each path as HybridVLA un-normalizes it: clamped to [-1, 1], the gripper snapped (when configured)."""
        a = a.clamp(-1, 1) if self.cfg.clip else a
        return snap_gripper(a, self.cfg.gripper_dims, self.cfg.gripper_values) if self.cfg.binarize_gripper else a

    def _ar(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None) -> Tensor:
        if self.cfg.ar_context == "prefix":
            return self.token.sample(ctx, batch, generator=generator)
        lm, b, dev = ctx.lm, ctx.mask.shape[0], ctx.mask.device
        t = torch.randint(0, self.cfg.continuous.num_train_timesteps, (b,), generator=generator, device=dev)
        x = torch.randn((b, self.chunk, self.action_dim), generator=generator, device=dev)
        seq, _ = self.continuous.block(ctx, x, t)
        if self.cfg.ar_suffix:
            seq = torch.cat([seq, lm.embed_tokens(torch.tensor([[lm.token_id(self.cfg.ar_suffix)]], device=dev))
                             .to(seq.dtype).expand(b, -1, -1)], 1)
        h = lm.extend(ctx, seq, torch.ones(seq.shape[:2], device=dev))[:, -1]
        return self.token.sample(ctx, batch, generator=generator, start=h)
