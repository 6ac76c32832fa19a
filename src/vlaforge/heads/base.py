"""The action-head contract (DESIGN §3): ``loss(ctx, batch)`` and ``sample(ctx, batch)`` in normalized units.

Two kinds, told apart by the ``in_sequence`` flag that generic code reads:

* readout heads (``in_sequence = False``) read ``ctx.hidden`` / ``ctx.pooled`` / ``ctx.state`` only;
* in-sequence heads (``in_sequence = True``) extend the LLM sequence through ``ctx.lm.extend`` on the prefix
  KV cache, so the prefix is encoded once per ``sample`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vlaforge.config import Choice, ChoiceType
from vlaforge.registry import Registry
from vlaforge.types import ACTION, ACTION_IS_PAD, Context

HEADS: Registry[type[HeadConfig]] = Registry("heads", lazy={"tokens": "vlaforge.heads.tokens",
                                                            "dit": "vlaforge.heads.dit"})


@dataclass(frozen=True)
class HeadConfig(Choice, ChoiceType):
    registry: ClassVar[Registry] = HEADS

    def build(self, *, action_dim: int, chunk: int, hidden_size: int, state_dim: int) -> ActionHead:
        raise NotImplementedError


class ActionHead(nn.Module):
    in_sequence: ClassVar[bool] = False

    def __init__(self, cfg: HeadConfig, action_dim: int, chunk: int) -> None:
        super().__init__()
        self.cfg, self.action_dim, self.chunk = cfg, action_dim, chunk

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               **options: Any) -> Tensor:
        raise NotImplementedError


def target_and_mask(batch: dict[str, Any], chunk: int, action_dim: int) -> tuple[Tensor, Tensor]:
    """The normalized action chunk (B, H, Da) and its validity mask (B, H), with shape checks."""
    a = batch[ACTION]
    if a.dim() != 3 or a.shape[1:] != (chunk, action_dim):
        raise ValueError(f"{ACTION}: expected (B, {chunk}, {action_dim}), got {tuple(a.shape)}")
    pad = batch.get(ACTION_IS_PAD)
    valid = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device) if pad is None else ~pad.bool()
    return a.float(), valid
