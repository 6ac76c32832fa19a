"""pi0-style flow-matching action expert that attends to the VLM's prefix KV cache.

Paper: pi0 (Black et al., 2024); reference: ``openpi/models/pi0.py`` and ``gemma.py`` (the action expert shares
attention with the VLM layer by layer). Here the expert has one layer per decoder layer of the backbone; in
layer ``l`` its tokens (the proprio state and the H noisy actions mixed with the flow time) attend to the
prefix's cached keys and values of layer ``l`` and to each other, then go through the expert's own MLP. The
prefix is encoded once and every Euler step only runs the small expert. Time follows openpi's convention
(``t = 1`` is noise): ``x_t = t·ε + (1 − t)·a``, velocity target ``ε − a``, ``t ~ Beta(1.5, 1)``, and
integration from 1 to 0 in ``num_steps`` Euler steps. Differences: expert tokens carry learned positions instead
of RoPE (the VLM's keys keep theirs); classifier-free guidance hides the prefix and the state for the
unconditional branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import Timesteps
from torch import Tensor, nn

from vlaforge.heads.base import (
    HEADS,
    ActionHead,
    HeadConfig,
    drop_mask,
    guided,
    masked_mean,
    prefix_kv,
    target_and_mask,
)
from vlaforge.types import Context, LMSpec


@HEADS.register("flow")
@dataclass(frozen=True)
class FlowHeadConfig(HeadConfig):
    """pi0-style flow-matching action expert on the prefix KV cache; Euler integration (num_steps)."""

    sampling: ClassVar[tuple[str, ...]] = ("num_steps", "cfg_scale")

    width: int = 256  # the expert's hidden size (pi0: a Gemma-300M expert)
    mlp_ratio: int = 4
    num_steps: int = 10
    repeated_diffusion_steps: int = 4  # noise/time draws per prefix encode in training
    time_alpha: float = 1.5  # t ~ Beta(alpha, beta), as pi0
    time_beta: float = 1.0
    cond_dropout: float = 0.0
    cfg_scale: float = 0.0

    def validate(self) -> None:
        self.check(self.width >= 8, "width", ">= 8")
        self.check(self.num_steps >= 1, "num_steps", ">= 1")
        self.check(self.repeated_diffusion_steps >= 1, "repeated_diffusion_steps", ">= 1")
        self.check(0 <= self.cond_dropout < 1, "cond_dropout", "in [0, 1)")
        self.check(self.cfg_scale >= 0, "cfg_scale", ">= 0")

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> FlowHead:
        return FlowHead(self, action_dim, chunk, state_dim, lm)


class ExpertLayer(nn.Module):
    """Pre-norm block whose attention reads [prefix keys/values of one VLM layer ; its own tokens]."""

    def __init__(self, width: int, lm: LMSpec, mlp_ratio: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = lm.num_heads, lm.num_kv_heads, lm.head_dim
        self.norm1 = nn.RMSNorm(width, eps=1e-6)
        self.q = nn.Linear(width, lm.num_heads * lm.head_dim, bias=False)
        self.kv = nn.Linear(width, 2 * lm.num_kv_heads * lm.head_dim, bias=False)
        self.o = nn.Linear(lm.num_heads * lm.head_dim, width, bias=False)
        self.norm2 = nn.RMSNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width * mlp_ratio), nn.GELU(approximate="tanh"),
                                 nn.Linear(width * mlp_ratio, width))

    def forward(self, x: Tensor, pk: Tensor, pv: Tensor, prefix_mask: Tensor) -> Tensor:
        b, n, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).view(b, n, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k = torch.cat([pk.to(k.dtype), k], 2)
        v = torch.cat([pv.to(v.dtype), v], 2)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, 1)
            v = v.repeat_interleave(self.heads // self.kv_heads, 1)
        mask = torch.cat([prefix_mask.bool(), prefix_mask.new_ones(b, n, dtype=torch.bool)], 1)[:, None, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.o(y.transpose(1, 2).reshape(b, n, -1))
        return x + self.mlp(self.norm2(x))


class FlowHead(ActionHead):
    uses_kv_cache = True

    def __init__(self, cfg: FlowHeadConfig, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> None:
        super().__init__(cfg, action_dim, chunk)
        w = cfg.width
        self.layers = nn.ModuleList(ExpertLayer(w, lm, cfg.mlp_ratio) for _ in range(lm.num_layers))
        self.action_in = nn.Linear(action_dim, w)
        self.time_proj = Timesteps(w, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.action_time = nn.Sequential(nn.Linear(2 * w, w), nn.SiLU(), nn.Linear(w, w))  # pi0's action-time MLP
        self.state_in = nn.Linear(state_dim, w) if state_dim > 0 else None
        self.null_state = nn.Parameter(torch.zeros(w))
        self.pos = nn.Parameter(torch.randn(1, chunk + 1, w) * 0.02)
        self.norm_out = nn.RMSNorm(w, eps=1e-6)
        self.out = nn.Linear(w, action_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._time = torch.distributions.Beta(cfg.time_alpha, cfg.time_beta)

    def _prefix(self, ctx: Context) -> list[tuple[Tensor, Tensor]]:
        return prefix_kv(ctx, len(self.layers), "flow")

    def velocity(self, x: Tensor, t: Tensor, kv: list[tuple[Tensor, Tensor]], prefix_mask: Tensor,
                 state: Tensor | None, drop: Tensor | None) -> Tensor:
        """Predicted velocity (B, H, Da) of actions ``x`` at flow time ``t`` (B,)."""
        dtype = self.action_in.weight.dtype
        b = x.shape[0]
        a = self.action_in(x.to(dtype))
        tt = self.time_proj(t * 1000).to(dtype)[:, None].expand(-1, self.chunk, -1)
        tokens = self.action_time(torch.cat([a, tt], -1))
        st = self.null_state.to(dtype).expand(b, -1)
        if self.state_in is not None and state is not None:
            given = self.state_in(state.to(dtype))
            st = given if drop is None else torch.where(drop[:, None], st, given)
        h = torch.cat([st[:, None], tokens], 1) + self.pos
        mask = prefix_mask if drop is None else prefix_mask & ~drop[:, None]
        for layer, (pk, pv) in zip(self.layers, kv, strict=True):
            h = layer(h, pk, pv, mask)
        return self.out(self.norm_out(h[:, 1:])).float()

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        target, valid = target_and_mask(batch, self.chunk, self.action_dim)
        k, b = self.cfg.repeated_diffusion_steps, target.shape[0]
        rep = lambda z: None if z is None else z.repeat(k, *([1] * (z.dim() - 1)))  # noqa: E731
        kv = [(rep(pk), rep(pv)) for pk, pv in self._prefix(ctx)]
        target, valid = rep(target), rep(valid)
        drop = drop_mask(b * k, self.cfg.cond_dropout, target.device, self.training)
        noise = torch.randn_like(target)
        t = (self._time.sample((b * k,)) * 0.999 + 0.001).to(target.device)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * target
        v = self.velocity(x_t, t, kv, rep(ctx.mask).bool(), rep(ctx.state), drop)
        return {"loss": masked_mean(((v - (noise - target)) ** 2).mean(-1), valid)}

    @torch.no_grad()
    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               num_steps: int | None = None, cfg_scale: float | None = None) -> Tensor:
        kv, b = self._prefix(ctx), ctx.mask.shape[0]
        scale = self.cfg.cfg_scale if cfg_scale is None else cfg_scale
        steps = num_steps or self.cfg.num_steps
        x = torch.randn((b, self.chunk, self.action_dim), generator=generator, device=ctx.mask.device)
        for i in range(steps):
            t = torch.full((b,), 1.0 - i / steps, device=x.device)
            v = guided(lambda z, drop: self.velocity(z, t, kv, ctx.mask.bool(), ctx.state, drop), x, scale)  # noqa: B023
            x = x - v / steps
        return x
