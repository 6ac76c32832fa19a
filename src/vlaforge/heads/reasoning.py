"""DexVLA's sub-step reasoning: the VLM writes a short plan before acting, and the plan conditions the head.

Paper: DexVLA (Wen et al., 2025); reference: ``qwen2_vla/models/modeling_qwen2_vla.py`` (``film_forward``) and
``qwen2_vla/utils/fusion_modules.py``. When the dataset has a per-frame ``reasoning`` string, the prefix is
extended with its tokens and trained with cross-entropy; at inference the reasoning is generated greedily on
the prefix KV cache. The mean hidden state of the reasoning tokens modulates the pooled prefix through a
zero-initialized FiLM layer (so an untrained layer leaves the condition unchanged), which every readout head
reads as ``ctx.pooled``. Difference: the KV cache is cropped back after reasoning, so in-sequence heads still
read the bare prefix.

Two FiLM variants (``film``): "pooled" modulates the pooled prefix directly with one Linear from the mean
reasoning state; "projected" is DexVLA's ``film_forward``: the mean prompt state and the mean reasoning state each
go through their own Linear-GELU-Linear projector (``input_action_proj``, ``reasoning_action_proj``), FiLM
(``reasoning_film.scale_fc`` / ``shift_fc``, zero-initialised) modulates the projected prompt, and the mean prompt
state is added back (the identity term): ``P_in(p) * (1 + W_s P_r(r)) + W_b P_r(r) + p``. DexVLA's ``p`` is the
mean over the prompt's tokens, i.e. ``readout="mean"``; at inference its ``r`` pools the generated tokens but the
last one (``evaluate()`` collects ``generate``'s hidden states, so the final token is never fed back), in training
every target token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaforge.config import ConfigBase
from vlaforge.types import REASONING_IDS, REASONING_MASK, Context

FILMS = ("pooled", "projected")


@dataclass(frozen=True)
class ReasoningConfig(ConfigBase):
    max_tokens: int = 32  # longest generated reasoning
    loss_weight: float = 1.0
    film: str = "pooled"  # "pooled" | "projected": DexVLA's projectors + identity term (see the module docstring)

    def validate(self) -> None:
        self.check(self.max_tokens >= 1, "max_tokens", ">= 1")
        self.check(self.loss_weight >= 0, "loss_weight", ">= 0")
        self.check(self.film in FILMS, "film", f"one of {FILMS}")


def _projector(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))


class Reasoner(nn.Module):
    def __init__(self, cfg: ReasoningConfig, hidden: int) -> None:
        super().__init__()
        self.cfg = cfg
        projected = cfg.film == "projected"
        self.input_proj = _projector(hidden) if projected else None
        self.reasoning_proj = _projector(hidden) if projected else None
        self.film = nn.Linear(hidden, 2 * hidden)  # rows [scale; shift]
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def modulate(self, pooled: Tensor, reasoning: Tensor) -> Tensor:
        """The condition from the pooled prompt (B, D) and the mean reasoning state (B, D), in the FiLM's dtype
        (a bf16 VLM's states meet float32 projectors: DexVLA imported at its bf16 default)."""
        dtype = self.film.weight.dtype
        pooled, reasoning = pooled.to(dtype), reasoning.to(dtype)
        if self.input_proj is None:
            scale, shift = self.film(reasoning).chunk(2, dim=-1)
            return pooled * (1 + scale) + shift
        scale, shift = self.film(self.reasoning_proj(reasoning)).chunk(2, dim=-1)
        return self.input_proj(pooled) * (1 + scale) + shift + pooled

    def _condition(self, ctx: Context, hidden: Tensor, mask: Tensor) -> None:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        r = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        ctx.pooled = self.modulate(ctx.pooled, r)

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
        mask = torch.stack(masks, 1)
        if self.input_proj is not None:  # DexVLA's evaluate() never feeds its last generated token (EOS) back
            mask = mask & (mask.cumsum(1) < mask.sum(1, keepdim=True))
        self._condition(ctx, torch.stack(hiddens, 1), mask)
        return torch.stack(ids, 1)
