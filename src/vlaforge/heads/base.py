"""The action-head contract (DESIGN §3): ``loss(ctx, batch)`` and ``sample(ctx, batch)`` in normalized units.

Generic code reads these capability flags, never a head's name:

* ``in_sequence``: the head extends the LLM sequence through ``ctx.lm.extend`` on the prefix KV cache (action
  tokens, HybridVLA's in-LLM diffusion), so the prefix is encoded once per ``sample``;
* ``uses_kv_cache``: the head reads the prefix KV cache without extending the LLM (pi0's action expert);
* ``needs_fit``: the head learns something from the training actions before training (quantile bins, FAST);
* ``uses_action_tokens``: the head writes actions with the backbone's reserved vocabulary ids, which must then
  be free of the prefix's own tokens (checked when the policy is built).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from vlaforge.config import Choice, ChoiceType
from vlaforge.registry import Registry
from vlaforge.types import ACTION, ACTION_IS_PAD, Context, LMSpec, SequenceModel

HEADS: Registry[type[HeadConfig]] = Registry("heads", lazy={
    "tokens": "vlaforge.heads.tokens", "dit": "vlaforge.heads.dit", "unet1d": "vlaforge.heads.unet1d",
    "mlp": "vlaforge.heads.regression", "lstm": "vlaforge.heads.regression", "gpt": "vlaforge.heads.regression",
    "flow": "vlaforge.heads.flow", "inllm_diffusion": "vlaforge.heads.inllm_diffusion",
    "hybrid": "vlaforge.heads.hybrid", "smolvla_expert": "vlaforge.heads.smolvla", "pi0": "vlaforge.heads.pi0",
})


@dataclass(frozen=True)
class HeadConfig(Choice, ChoiceType):
    registry: ClassVar[Registry] = HEADS
    composite: ClassVar[bool] = False  # a head made of other heads (cannot nest inside another composite)
    # fields that only change how actions are drawn from trained weights: `vlaforge eval --sampling "K=V ..."` and
    # VLAPolicy.from_pretrained(sampling=...) may set them on a saved checkpoint
    sampling: ClassVar[tuple[str, ...]] = ()

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> ActionHead:
        raise NotImplementedError


class ComponentHeadConfig(Choice, ChoiceType):
    """Field type for a head nested inside a composite head: every registered head that is not composite.

    Without the filter the CLI parser would expand ``hybrid.token`` into ``hybrid`` again, forever.
    """

    registry: ClassVar[Registry] = HEADS

    @classmethod
    def get_known_choices(cls) -> dict[str, Any]:
        return {name: c for name, c in cls.registry.items() if not c.composite}


class ActionHead(nn.Module):
    in_sequence: ClassVar[bool] = False
    uses_kv_cache: ClassVar[bool] = False
    needs_fit: ClassVar[bool] = False
    uses_action_tokens: ClassVar[bool] = False
    provides_block: ClassVar[bool] = False  # has block(ctx, x, t): an in-sequence block other heads can read after

    def __init__(self, cfg: HeadConfig, action_dim: int, chunk: int) -> None:
        super().__init__()
        self.cfg, self.action_dim, self.chunk = cfg, action_dim, chunk

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               **options: Any) -> Tensor:
        raise NotImplementedError

    def fit(self, actions: np.ndarray) -> None:
        """Learn from normalized training action chunks (N, H, Da); only called when ``needs_fit``."""

    def required_tokens(self) -> list[str]:
        """Vocabulary tokens the head embeds by name (checked when the policy is built)."""
        return []

    def prefix_suffix(self, lm: SequenceModel, batch_size: int) -> Tensor | None:
        """Embeddings (B, K, D) to encode in the same pass as the prefix, after the prompt (OpenVLA-OFT's
        placeholder tokens); None for heads that read the prefix alone."""
        return None


def prefix_kv(ctx: Context, num_layers: int, head: str) -> list[tuple[Tensor, Tensor]]:
    """Each decoder layer's prefix keys/values (B, kv_heads, N, head_dim) from ``ctx.kv_cache`` (keys after the
    backbone's RoPE), cut to the prefix: what an action expert sharing attention with the VLM layer by layer reads."""
    if ctx.kv_cache is None:
        raise ValueError(f"the {head} head needs the prefix KV cache (encode with use_cache=True)")
    layers = ctx.kv_cache.layers
    if len(layers) != num_layers:
        raise ValueError(f"{head} head has {num_layers} expert layers, the prefix cache {len(layers)}")
    p = ctx.prefix_len
    return [(layer.keys[:, :, :p], layer.values[:, :, :p]) for layer in layers]


def target_and_mask(batch: dict[str, Any], chunk: int, action_dim: int) -> tuple[Tensor, Tensor]:
    """The normalized action chunk (B, H, Da) and its validity mask (B, H), with shape checks."""
    a = batch[ACTION]
    if a.dim() != 3 or a.shape[1:] != (chunk, action_dim):
        raise ValueError(f"{ACTION}: expected (B, {chunk}, {action_dim}), got {tuple(a.shape)}")
    pad = batch.get(ACTION_IS_PAD)
    valid = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device) if pad is None else ~pad.bool()
    return a.float(), valid


def masked_mean(err: Tensor, valid: Tensor) -> Tensor:
    """Mean of per-step errors (B, H) over valid steps."""
    w = valid.to(err.dtype)
    return (err * w).sum() / w.sum().clamp(min=1)


def drop_mask(batch_size: int, p: float, device: torch.device, training: bool) -> Tensor | None:
    """Rows whose condition is dropped (classifier-free guidance training), or None."""
    if not training or p <= 0:
        return None
    return torch.rand(batch_size, device=device) < p


def guided(fn: Any, x: Tensor, cfg_scale: float) -> Tensor:
    """Classifier-free guidance: ``fn(x, drop)``; with ``cfg_scale > 0`` returns ``u + s * (c - u)``.

    ``cfg_scale`` is the guidance weight ``s``; 0 (or 1) means the conditional prediction alone.
    """
    cond = fn(x, None)
    if cfg_scale in (0.0, 1.0):
        return cond
    uncond = fn(x, torch.ones(x.shape[0], dtype=torch.bool, device=x.device))
    return uncond + cfg_scale * (cond - uncond)
