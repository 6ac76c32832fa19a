"""Discrete action tokens decoded by the VLM itself (RT-2 / OpenVLA / LLaVA-VLA style).

Each normalized action dimension is cut into ``n_bins`` uniform bins over ``[low, high]`` (256 over [-1, 1] by
default); bin ``k`` is written with the vocabulary id ``vocab_size - n_bins + k`` (the last ids, as OpenVLA and
LLaVA-VLA reuse them). A chunk of H steps is H*Da tokens, trained with teacher forcing and decoded greedily on
the prefix KV cache. Differences from OpenVLA: bin centres are the midpoints of ``n_bins`` equal bins (OpenVLA
uses 255 centres between 256 edges), the softmax is restricted to the action-token rows of the LM head, and
decoding emits a whole chunk rather than one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vlaforge.heads.base import HEADS, ActionHead, HeadConfig, target_and_mask
from vlaforge.types import Context


class UniformBinner:
    """``n_bins`` equal bins over ``[low, high]``; encode clips, decode returns bin centres (error <= half a bin)."""

    def __init__(self, n_bins: int = 256, low: float = -1.0, high: float = 1.0) -> None:
        if n_bins < 2 or not high > low:
            raise ValueError(f"binner: need n_bins >= 2 and high > low, got n_bins={n_bins}, [{low}, {high}]")
        self.n_bins, self.low, self.high = n_bins, low, high
        self.width = (high - low) / n_bins

    def encode(self, x: Tensor) -> Tensor:
        idx = torch.floor((x.float() - self.low) / self.width).long()
        return idx.clamp(0, self.n_bins - 1)

    def decode(self, idx: Tensor) -> Tensor:
        return self.low + (idx.float() + 0.5) * self.width


@HEADS.register("tokens")
@dataclass(frozen=True)
class TokenHeadConfig(HeadConfig):
    n_bins: int = 256
    low: float = -1.0
    high: float = 1.0

    def validate(self) -> None:
        self.check(self.n_bins >= 2, "n_bins", ">= 2")
        self.check(self.high > self.low, "high", f"> low ({self.low})")

    def build(self, *, action_dim: int, chunk: int, hidden_size: int, state_dim: int) -> TokenHead:
        return TokenHead(self, action_dim, chunk)


class TokenHead(ActionHead):
    in_sequence = True

    def __init__(self, cfg: TokenHeadConfig, action_dim: int, chunk: int) -> None:
        super().__init__(cfg, action_dim, chunk)
        self.binner = UniformBinner(cfg.n_bins, cfg.low, cfg.high)

    @staticmethod
    def _last_prefix_hidden(ctx: Context) -> Tensor:
        b = ctx.hidden.shape[0]
        return ctx.hidden[torch.arange(b, device=ctx.hidden.device), ctx.mask.sum(1) - 1]

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        lm = ctx.lm
        target, valid = target_and_mask(batch, self.chunk, self.action_dim)
        bins = self.binner.encode(target).flatten(1)  # (B, H*Da)
        vocab = lm.action_token_ids(self.cfg.n_bins)
        emb = lm.embed_tokens(vocab[bins])
        hidden = lm.extend(ctx, emb[:, :-1], torch.ones_like(bins[:, :-1]))
        lm.reset(ctx)
        inputs = torch.cat([self._last_prefix_hidden(ctx)[:, None], hidden], 1)  # position j predicts token j
        logits = lm.token_logits(inputs, vocab).float()  # (B, H*Da, n_bins)
        weight = valid.repeat_interleave(self.action_dim, 1).float()
        ce = F.cross_entropy(logits.transpose(1, 2), bins, reduction="none")
        loss = (ce * weight).sum() / weight.sum().clamp(min=1)
        acc = ((logits.argmax(-1) == bins).float() * weight).sum() / weight.sum().clamp(min=1)
        return {"loss": loss, "token_accuracy": acc.detach()}

    @torch.no_grad()
    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               temperature: float = 0.0) -> Tensor:
        lm = ctx.lm
        vocab = lm.action_token_ids(self.cfg.n_bins)
        b, k = ctx.hidden.shape[0], self.chunk * self.action_dim
        h = self._last_prefix_hidden(ctx)
        bins, conf = [], []
        ones = torch.ones(b, 1, dtype=ctx.mask.dtype, device=ctx.mask.device)
        for step in range(k):
            probs = lm.token_logits(h, vocab).float().softmax(-1)
            if temperature > 0:
                p = (probs.log() / temperature).softmax(-1)
                tok = torch.multinomial(p, 1, generator=generator).squeeze(1)
            else:
                tok = probs.argmax(-1)
            bins.append(tok)
            conf.append(probs.gather(1, tok[:, None]).squeeze(1))
            if step + 1 < k:
                h = lm.extend(ctx, lm.embed_tokens(vocab[tok])[:, None], ones)[:, -1]
        lm.reset(ctx)
        ctx.extras["token_confidence"] = torch.stack(conf, 1).view(b, self.chunk, self.action_dim)
        return self.binner.decode(torch.stack(bins, 1)).view(b, self.chunk, self.action_dim)
