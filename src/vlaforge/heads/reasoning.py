"""DexVLA's sub-step reasoning: the VLM writes a short plan before acting, and the plan conditions the head.

Paper: DexVLA (Wen et al., 2025); reference: ``qwen2_vla/models/modeling_qwen2_vla.py`` (``film_forward``) and
``qwen2_vla/utils/fusion_modules.py``. When the dataset has a per-frame ``reasoning`` string, the prefix is
extended with its tokens and trained with cross-entropy; at inference the reasoning is generated greedily on
the prefix KV cache. The mean hidden state of the reasoning tokens modulates the pooled prefix through a
zero-initialized FiLM layer (so an untrained layer leaves the condition unchanged), which every readout head
reads as ``ctx.pooled``. Difference: the KV cache is cropped back after reasoning, so in-sequence heads still
read the bare prefix; DexVLA also adds a residual of the mean prompt state, which ``readout="mean"`` already is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaforge.config import ConfigBase
from vlaforge.types import REASONING_IDS, REASONING_MASK, Context


@dataclass(frozen=True)
class ReasoningConfig(ConfigBase):
    max_tokens: int = 32  # longest generated reasoning
    loss_weight: float = 1.0

    def validate(self) -> None:
        self.check(self.max_tokens >= 1, "max_tokens", ">= 1")
        self.check(self.loss_weight >= 0, "loss_weight", ">= 0")


class Reasoner(nn.Module):
    def __init__(self, cfg: ReasoningConfig, hidden: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.film = nn.Linear(hidden, 2 * hidden)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def _condition(self, ctx: Context, hidden: Tensor, mask: Tensor) -> None:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        r = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        scale, shift = self.film(r).chunk(2, dim=-1)
        ctx.pooled = ctx.pooled * (1 + scale) + shift

    def train_step(self, ctx: Context, batch: dict[str, Any]) -> Tensor | None:
        """Teacher-forced reasoning loss; updates ``ctx.pooled``. None when the batch has no reasoning."""
        ids = batch.get(REASONING_IDS)
        if ids is None:
            return None
        mask = batch[REASONING_MASK].to(ctx.mask.dtype)
        lm = ctx.lm
        hidden = lm.extend(ctx, lm.embed_tokens(ids), mask)
        lm.reset(ctx)
        last = ctx.hidden[torch.arange(ids.shape[0], device=ids.device), ctx.last_index][:, None]
        logits = lm.token_logits(torch.cat([last, hidden[:, :-1]], 1)).float()  # position j predicts token j
        ce = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        w = mask.float()
        self._condition(ctx, hidden, mask)
        return (ce * w).sum() / w.sum().clamp(min=1)

    @torch.no_grad()
    def generate(self, ctx: Context, eos_id: int | None) -> Tensor:
        """Greedy reasoning ids (B, R) (EOS-padded), and ``ctx.pooled`` conditioned on them."""
        lm = ctx.lm
        b = ctx.hidden.shape[0]
        h = ctx.hidden[torch.arange(b, device=ctx.hidden.device), ctx.last_index]
        ids, hiddens, alive = [], [], torch.ones(b, dtype=torch.bool, device=h.device)
        masks = []
        for _ in range(self.cfg.max_tokens):
            tok = lm.token_logits(h).argmax(-1)
            if eos_id is not None:
                tok = torch.where(alive, tok, torch.full_like(tok, eos_id))
            ids.append(tok)
            masks.append(alive.clone())
            h = lm.extend(ctx, lm.embed_tokens(tok)[:, None], alive[:, None].to(ctx.mask.dtype))[:, -1]
            hiddens.append(h)
            if eos_id is not None:
                alive &= tok != eos_id
                if not alive.any():
                    break
        lm.reset(ctx)
        self._condition(ctx, torch.stack(hiddens, 1), torch.stack(masks, 1))
        return torch.stack(ids, 1)
