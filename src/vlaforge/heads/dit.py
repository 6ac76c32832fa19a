"""DiT diffusion action head (ScaleDP / DexVLA, CogACT) with adaLN-Zero conditioning.

Papers: DiT (Peebles & Xie, 2023); ScaleDP (Zhu et al., 2024) as used by DexVLA's policy head; reference code
``DexVLA/policy_heads/models/transformer_diffusion``. The action chunk is a sequence of H tokens; every block
is modulated (adaLN-Zero) by ``c = t_emb + W_ctx · pooled + W_state · state``. Differences from ScaleDP: an
optional cross-attention to the whole prefix (pi0/CogACT-like access to every image token rather than one
pooled vector), diffusers' schedulers (DDPM for training, DDIM for sampling), and ``noise_samples`` noise draws
per backbone pass (HybridVLA's repeated diffusion steps), which trains the head more per expensive prefix.
Scheduler arithmetic always runs in float32, whatever the weights' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

from vlaforge.heads.base import HEADS, ActionHead, HeadConfig, target_and_mask
from vlaforge.types import Context

SIZES = {"tiny": (256, 4, 4), "L": (1024, 24, 16), "H": (1280, 32, 16)}  # (width, depth, heads), ScaleDP L/H


@HEADS.register("dit")
@dataclass(frozen=True)
class DiTHeadConfig(HeadConfig):
    size: str = "tiny"
    cross_attention: bool = True
    mlp_ratio: int = 4
    num_train_timesteps: int = 100
    num_steps: int = 10  # DDIM steps at inference
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: float | None = 1.0  # clip x0 to +-value while sampling (None: off)
    noise_samples: int = 4  # noise draws per backbone pass during training (HybridVLA repeats 4-8x)

    def validate(self) -> None:
        self.check(self.size in SIZES, "size", f"one of {sorted(SIZES)}")
        self.check(self.num_steps >= 1, "num_steps", ">= 1")
        self.check(1 <= self.num_steps <= self.num_train_timesteps, "num_steps",
                   f"<= num_train_timesteps ({self.num_train_timesteps})")
        self.check(self.noise_samples >= 1, "noise_samples", ">= 1")
        self.check(self.beta_schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"), "beta_schedule",
                   "linear | scaled_linear | squaredcos_cap_v2")

    def build(self, *, action_dim: int, chunk: int, hidden_size: int, state_dim: int) -> DiTHead:
        return DiTHead(self, action_dim, chunk, hidden_size, state_dim)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, kv: Tensor, kv_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(kv).view(b, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if kv_mask is None else kv_mask.bool()[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    """adaLN-Zero DiT block, optionally with cross-attention to the prefix."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, cross: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.cross = _Attention(dim, heads) if cross else None
        self.norm_x = nn.LayerNorm(dim, eps=1e-6) if cross else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(approximate="tanh"),
                                 nn.Linear(dim * mlp_ratio, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, mem: Tensor | None, mem_mask: Tensor | None) -> Tensor:
        s1, g1, a1, s2, g2, a2 = self.ada(c).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), s1, g1)
        x = x + a1[:, None] * self.attn(h, h)
        if self.cross is not None and mem is not None:
            x = x + self.cross(self.norm_x(x), mem, mem_mask)
        return x + a2[:, None] * self.mlp(_modulate(self.norm2(x), s2, g2))


class DiTHead(ActionHead):
    in_sequence = False

    def __init__(self, cfg: DiTHeadConfig, action_dim: int, chunk: int, hidden_size: int, state_dim: int) -> None:
        super().__init__(cfg, action_dim, chunk)
        dim, depth, heads = SIZES[cfg.size]
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_emb = TimestepEmbedding(256, dim)
        self.ctx_proj = nn.Linear(hidden_size, dim)
        self.state_proj = nn.Linear(state_dim, dim) if state_dim > 0 else None
        self.mem_proj = nn.Linear(hidden_size, dim) if cfg.cross_attention else None
        self.x_in = nn.Linear(action_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, chunk, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads, cfg.mlp_ratio, cfg.cross_attention) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.x_out = nn.Linear(dim, action_dim)
        for m in (self.ada_out[1], self.x_out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        common = {"num_train_timesteps": cfg.num_train_timesteps, "beta_schedule": cfg.beta_schedule,
                  "prediction_type": "epsilon", "clip_sample": cfg.clip_sample is not None,
                  "clip_sample_range": cfg.clip_sample or 1.0}
        self.train_scheduler = DDPMScheduler(**common)
        self.sample_scheduler = DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0)

    def _condition(self, ctx: Context) -> tuple[Tensor, Tensor | None, Tensor | None]:
        c = self.ctx_proj(ctx.pooled)
        if self.state_proj is not None and ctx.state is not None:
            c = c + self.state_proj(ctx.state.to(c.dtype))
        mem = self.mem_proj(ctx.hidden) if self.mem_proj is not None else None
        return c, mem, ctx.mask

    def denoise(self, x: Tensor, t: Tensor, cond: tuple[Tensor, Tensor | None, Tensor | None]) -> Tensor:
        """Predict the noise in ``x`` (B, H, Da) at integer timesteps ``t`` (B,)."""
        c0, mem, mem_mask = cond
        dtype = c0.dtype
        c = c0 + self.time_emb(self.time_proj(t).to(dtype))
        h = self.x_in(x.to(dtype)) + self.pos
        for block in self.blocks:
            h = block(h, c, mem, mem_mask)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.x_out(_modulate(self.norm_out(h), shift, scale))

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        target, valid = target_and_mask(batch, self.chunk, self.action_dim)
        k = self.cfg.noise_samples
        c, mem, mem_mask = self._condition(ctx)
        if k > 1:
            target, valid, c = target.repeat(k, 1, 1), valid.repeat(k, 1), c.repeat(k, 1)
            mem = mem.repeat(k, 1, 1) if mem is not None else None
            mem_mask = mem_mask.repeat(k, 1) if mem_mask is not None else None
        noise = torch.randn_like(target)
        t = torch.randint(0, self.cfg.num_train_timesteps, (target.shape[0],), device=target.device)
        noisy = self.train_scheduler.add_noise(target, noise, t)  # float32
        pred = self.denoise(noisy, t, (c, mem, mem_mask)).float()
        err = ((pred - noise) ** 2).mean(-1)
        loss = (err * valid).sum() / valid.sum().clamp(min=1)
        return {"loss": loss}

    @torch.no_grad()
    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               num_steps: int | None = None) -> Tensor:
        cond = self._condition(ctx)
        b = cond[0].shape[0]
        x = torch.randn((b, self.chunk, self.action_dim), generator=generator, dtype=torch.float32,
                        device=cond[0].device)
        sched = self.sample_scheduler
        sched.set_timesteps(num_steps or self.cfg.num_steps, device=x.device)
        for t in sched.timesteps:
            eps = self.denoise(x, t.expand(b), cond).float()
            x = sched.step(eps, t, x, eta=0.0).prev_sample.float()
        return x
