"""What readout heads condition on: the pooled prefix, the proprio state and (optionally) every prefix token.

Two ways to form the global vector (``mode``): "sum" projects the pooled prefix and the state separately and
adds them; "combine" is ScaleDP's (DexVLA's policy head): ``cat[pooled, state]`` through a 3-layer ReLU MLP
(``combine``, back to the pooled width), then one projection to the head's width (ScaleDP's ``cond_obs_emb``).

A learned null vector and a learned null memory token stand in for the condition when it is dropped, which
is how classifier-free guidance is trained (condition dropout) and run (``cfg_scale``). The null memory
token is always attendable, so fully-dropped cross-attention never sees an all-masked row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlaforge.types import Context


@dataclass
class Condition:
    vec: Tensor  # (B, D) the global condition
    memory: Tensor | None  # (B, N + 1, D) projected prefix tokens plus the null token, for cross-attention
    memory_mask: Tensor | None  # (B, N + 1)


CONDITION_MODES = ("sum", "combine")


class ReadoutCondition(nn.Module):
    def __init__(self, hidden_size: int, state_dim: int, dim: int, memory: bool, mode: str = "sum",
                 combine_hidden: int = 1024) -> None:
        super().__init__()
        if mode not in CONDITION_MODES:
            raise ValueError(f"condition mode: expected one of {CONDITION_MODES}, got {mode!r}")
        self.combine = None
        if mode == "combine":  # ScaleDP: Linear-ReLU-Linear-ReLU-Linear over cat[pooled, state]
            w = combine_hidden
            self.combine = nn.Sequential(nn.Linear(hidden_size + max(state_dim, 0), w), nn.ReLU(), nn.Linear(w, w),
                                         nn.ReLU(), nn.Linear(w, hidden_size))
        self.ctx_proj = nn.Linear(hidden_size, dim)
        self.state_proj = nn.Linear(state_dim, dim) if state_dim > 0 and mode == "sum" else None
        self.mem_proj = nn.Linear(hidden_size, dim) if memory else None
        self.null_vec = nn.Parameter(torch.zeros(dim))
        self.null_mem = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if memory else None

    def forward(self, ctx: Context, drop: Tensor | None = None) -> Condition:
        if self.combine is not None:
            pooled = ctx.pooled
            if ctx.state is not None and self.combine[0].in_features > pooled.shape[-1]:
                pooled = torch.cat([pooled, ctx.state.to(pooled.dtype)], -1)
            vec = self.ctx_proj(self.combine(pooled))
        else:
            vec = self.ctx_proj(ctx.pooled)
        if self.state_proj is not None and ctx.state is not None:
            vec = vec + self.state_proj(ctx.state.to(vec.dtype))
        if drop is not None:
            vec = torch.where(drop[:, None], self.null_vec.to(vec.dtype).expand_as(vec), vec)
        if self.mem_proj is None:
            return Condition(vec, None, None)
        b = vec.shape[0]
        mem = torch.cat([self.mem_proj(ctx.hidden), self.null_mem.to(vec.dtype).expand(b, 1, -1)], 1)
        mask = torch.cat([ctx.mask.bool(), ctx.mask.new_ones(b, 1, dtype=torch.bool)], 1)
        if drop is not None:
            mask = mask.clone()
            mask[drop, :-1] = False
        return Condition(vec, mem, mask)

    @staticmethod
    def repeat(cond: Condition, k: int) -> Condition:
        """The condition for ``k`` noise draws per sample (rows repeated in blocks)."""
        if k == 1:
            return cond
        rep = (lambda t: None if t is None else t.repeat(k, *([1] * (t.dim() - 1))))  # noqa: E731
        return Condition(rep(cond.vec), rep(cond.memory), rep(cond.memory_mask))
