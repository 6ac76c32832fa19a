"""DiT diffusion action head (ScaleDP in DexVLA, CogACT's action module) with adaLN-Zero conditioning.

Papers: DiT (Peebles & Xie, 2023); ScaleDP (Zhu et al., 2024) as used by DexVLA's policy head; reference code
``DexVLA/policy_heads/models/transformer_diffusion``. The action chunk is a sequence of H tokens; every block is
modulated (adaLN-Zero) by ``c = t_emb + W_ctx · pooled + W_state · state``. Sizes: ``tiny`` for CPU, ``L``
(1024 wide, 24 deep, ≈ 450 M parameters without cross-attention) and ``H`` (1280 x 32, ≈ 1 B), ScaleDP's two
published sizes. Differences from ScaleDP: optional cross-attention to every prefix token (pi0/CogACT-like
access to the image tokens rather than one pooled vector; on by default, off to match ScaleDP), and the shared
DDPM/DDIM machinery of :mod:`vlaforge.heads.diffusion`.

Options that make it ScaleDP exactly (``vlaforge import dexvla`` and the ``dexvla_stage*`` presets set them):
``condition="combine"`` (ScaleDP's ``combine`` MLP over ``cat[pooled, state]`` then ``cond_obs_emb``, see
:mod:`vlaforge.heads.condition`) and ``time_precision="bfloat16"`` (ScaleDP computes the GLIDE cos|sin timestep
sinusoid with bfloat16 frequencies and rounds it to bfloat16 before the time MLP). What needs no option: the
adaLN-Zero chunks are in ScaleDP's order (shift, scale, gate for attention, then for the MLP; shift, scale in
the final layer), and ScaleDP's fused ``qkv`` rows are [q; k; v], i.e. [0:d] -> ``q``, [d:3d] -> ``kv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

from vlaforge.heads.base import HEADS
from vlaforge.heads.condition import CONDITION_MODES, Condition, ReadoutCondition
from vlaforge.heads.diffusion import DiffusionHead, DiffusionHeadConfig
from vlaforge.types import LMSpec

SIZES = {"tiny": (256, 4, 4), "L": (1024, 24, 16), "H": (1280, 32, 16)}  # (width, depth, heads)
TIME_PRECISIONS = ("float32", "bfloat16")
TOKENS = ("step", "chunk")


@HEADS.register("dit")
@dataclass(frozen=True)
class DiTHeadConfig(DiffusionHeadConfig):
    """DiT / ScaleDP diffusion head (adaLN-Zero on context + state); sizes tiny | L | H."""

    size: str = "tiny"
    cross_attention: bool = True
    mlp_ratio: int = 4
    condition: str = "sum"  # "sum": W_ctx·pooled + W_state·state | "combine": ScaleDP's MLP over cat[pooled, state]
    combine_hidden: int = 1024  # width of the "combine" MLP (ScaleDP: 1024)
    time_precision: str = "float32"  # "bfloat16": ScaleDP's timestep sinusoid (bf16 frequencies and output)
    # "step": one token per chunk step (ScaleDP) | "chunk": the whole chunk is one token (chunk x action_dim in
    # and out), a residual adaLN MLP in effect, about chunk-times cheaper per noise draw
    tokens: str = "step"

    def validate(self) -> None:
        super().validate()
        self.check(self.size in SIZES, "size", f"one of {sorted(SIZES)}")
        self.check(self.condition in CONDITION_MODES, "condition", f"one of {CONDITION_MODES}")
        self.check(self.combine_hidden >= 1, "combine_hidden", ">= 1")
        self.check(self.time_precision in TIME_PRECISIONS, "time_precision", f"one of {TIME_PRECISIONS}")
        self.check(self.tokens in TOKENS, "tokens", f"one of {TOKENS}")

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> DiffusionHead:
        dim, depth, heads = SIZES[self.size]
        net = DiT(action_dim, chunk, dim, depth, heads, self.mlp_ratio, self.cross_attention, self.time_precision,
                  self.tokens)
        cond = ReadoutCondition(lm.hidden_size, state_dim, dim, self.cross_attention, mode=self.condition,
                                combine_hidden=self.combine_hidden)
        return DiffusionHead(self, action_dim, chunk, lm.hidden_size, state_dim, net, dim, self.cross_attention,
                             condition=cond)


def bf16_sinusoid(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """GLIDE's [cos | sin] timestep embedding in ScaleDP's arithmetic: the frequencies are computed in bfloat16
    (exponent, division and exp each rounded) and the embedding is returned in bfloat16."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.bfloat16, device=t.device)
    freqs = torch.exp(-math.log(max_period) * steps / half)
    angles = t[:, None].float() * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], -1).to(torch.bfloat16)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention with separate query and key/value inputs (self or cross), SDPA kernel."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, kv: Tensor, kv_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(kv).view(b, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if kv_mask is None else kv_mask.bool()[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block, optionally with cross-attention to a memory."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, cross: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.cross = Attention(dim, heads) if cross else None
        self.norm_x = nn.LayerNorm(dim, eps=1e-6) if cross else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(approximate="tanh"),
                                 nn.Linear(dim * mlp_ratio, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, mem: Tensor | None, mem_mask: Tensor | None) -> Tensor:
        s1, g1, a1, s2, g2, a2 = self.ada(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), s1, g1)
        x = x + a1[:, None] * self.attn(h, h)
        if self.cross is not None and mem is not None:
            x = x + self.cross(self.norm_x(x), mem, mem_mask)
        return x + a2[:, None] * self.mlp(modulate(self.norm2(x), s2, g2))


class DiT(nn.Module):
    """Noise prediction for an action chunk (B, H, Da) at timesteps t (B,) under a :class:`Condition`; the chunk
    enters as H tokens of Da (``tokens="step"``) or as one token of H·Da (``"chunk"``)."""

    def __init__(self, action_dim: int, chunk: int, dim: int, depth: int, heads: int, mlp_ratio: int,
                 cross: bool, time_precision: str = "float32", tokens: str = "step") -> None:
        super().__init__()
        self.flat = tokens == "chunk"
        if self.flat:
            action_dim, chunk = chunk * action_dim, 1
        self.time_proj = (Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
                          if time_precision == "float32" else bf16_sinusoid)
        self.time_emb = TimestepEmbedding(256, dim)
        self.x_in = nn.Linear(action_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, chunk, dim) * 0.02)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio, cross) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.x_out = nn.Linear(dim, action_dim)
        for m in (self.ada_out[1], self.x_out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        dtype = cond.vec.dtype
        c = cond.vec + self.time_emb(self.time_proj(t).to(dtype))
        h = self.x_in((x.flatten(1)[:, None] if self.flat else x).to(dtype)) + self.pos
        for block in self.blocks:
            h = block(h, c, cond.memory, cond.memory_mask)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.x_out(modulate(self.norm_out(h), shift, scale)).view(x.shape)
