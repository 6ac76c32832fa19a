"""SmolVLA's action expert: a smaller SmolLM2-style decoder that reads the VLM's per-layer keys and values.

Paper: SmolVLA (Shukor et al., 2025, arXiv 2506.01844); reference: LeRobot ``policies/smolvla``
(``smolvlm_with_expert.py``, ``modeling_smolvla.py``). The expert has one Llama decoder layer per VLM layer, its
width ``width_multiplier`` x the VLM's (0.75) with the VLM's head count and head size, and its MLP sized by LeRobot's
rule (2/3 x 4 x width, rounded up to a multiple of 256). Its tokens are the H noisy actions mixed with the flow time
(``action_in`` -> concat with a sin-cos time embedding, periods ``min_period`` .. ``max_period`` -> the action-time
MLP with SiLU). Layer ``l``:

* self-attention layers (``l % self_attn_every_n_layers == 0``, or every layer without ``cross_attention``): the
  expert's queries attend to [the VLM layer's prefix keys/values as cached ; the expert's own keys/values], causal
  over the action chunk; expert positions continue after the prefix's real tokens;
* cross-attention layers: the queries (positions 0..H-1) attend to the prefix only, whose cached (post-RoPE) keys
  and values are re-projected by this layer's own ``k_proj`` / ``v_proj`` (VLM kv width -> expert kv width).

Attention runs in float32 with RoPE base ``rope_theta`` (LeRobot's ``apply_rope``: 10000). Flow matching as SmolVLA:
``x_t = t·ε + (1 − t)·a``, target ``ε − a``, ``t ~ Beta(1.5, 1)·0.999 + 0.001``, Euler from t = 1 to 0 in
``num_steps`` steps on the prefix KV cache (the prefix is encoded once). Actions and noise are ``max_action_dim``
wide (LeRobot pads to 32; the padded dims are noise the model integrates too, so an imported model keeps them);
the loss counts the real dims only.

Differences from LeRobot: the VLM's layers run through transformers' Llama with the prefix encoded once (LeRobot
runs VLM and expert layer by layer in training; the prefix never attends to the suffix, so the two are equal, as
``tests/unit/test_smolvla.py`` checks to 1e-5); an expert with fewer layers than the VLM is not supported.

The backbone provides the prefix (``attention="prefix_lm"``: images and prompt bidirectional, the state token after
them) and its KV cache; this head only reads ``ctx.kv_cache``, ``ctx.mask`` and ``ctx.extras["prefix_next_position"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

from vlaforge.heads.base import HEADS, ActionHead, HeadConfig, masked_mean, target_and_mask
from vlaforge.types import Context, LMSpec


def expert_mlp_size(width: int, multiple_of: int = 256) -> int:
    """LeRobot's expert MLP width: int(2/3 x width) x 4, rounded up to ``multiple_of``."""
    hidden = 4 * int(2 * width / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def sincos_time(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """(B,) flow times -> (B, dim) [sin | cos] with periods spaced geometrically from min to max (float64 math)."""
    frac = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** frac
    angle = t.to(torch.float64)[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], -1).float()


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotate-half RoPE on (B, L, heads, hd) at positions (B, L), computed in float32."""
    half = x.shape[-1] // 2
    timescale = theta ** (torch.arange(half, dtype=torch.float32, device=x.device) * (2.0 / x.shape[-1]))
    ang = positions.float()[..., None, None] / timescale  # (B, L, 1, half)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


@HEADS.register("smolvla_expert")
@dataclass(frozen=True)
class SmolVLAExpertConfig(HeadConfig):
    """SmolVLA's action expert (0.75-wide decoder, cross/self-attention to the VLM's layers), flow matching."""

    sampling: ClassVar[tuple[str, ...]] = ("num_steps",)

    width_multiplier: float = 0.75  # expert hidden = int(multiplier x VLM hidden)
    self_attn_every_n_layers: int = 2  # layers l % n == 0 self-attend, the others cross-attend
    cross_attention: bool = True  # False: every layer self-attends (LeRobot attention_mode="self_attn")
    min_period: float = 4e-3  # sin-cos time embedding
    max_period: float = 4.0
    num_steps: int = 10
    time_alpha: float = 1.5  # t ~ Beta(alpha, beta) * 0.999 + 0.001
    time_beta: float = 1.0
    max_action_dim: int = 0  # noise / velocity width (LeRobot: 32); 0: the action dim
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def validate(self) -> None:
        self.check(0 < self.width_multiplier <= 4, "width_multiplier", "in (0, 4]")
        self.check(self.self_attn_every_n_layers >= 1, "self_attn_every_n_layers", ">= 1")
        self.check(self.num_steps >= 1, "num_steps", ">= 1")
        self.check(self.max_action_dim >= 0, "max_action_dim", ">= 0 (0: the action dim)")
        self.check(0 < self.min_period < self.max_period, "min_period", f"in (0, max_period={self.max_period})")

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> SmolVLAExpert:
        return SmolVLAExpert(self, action_dim, chunk, lm)


class Expert(nn.Module):
    """The expert decoder's weights, named as LeRobot's ``lm_expert`` (``layers.N.*``, ``norm``)."""

    def __init__(self, cfg: SmolVLAExpertConfig, lm: LMSpec) -> None:
        super().__init__()
        width = int(lm.hidden_size * cfg.width_multiplier)
        if width % 2:
            raise ValueError(f"head.width_multiplier: the expert width {width} must be even")
        hf = LlamaConfig(hidden_size=width, intermediate_size=expert_mlp_size(width), num_hidden_layers=lm.num_layers,
                         num_attention_heads=lm.num_heads, num_key_value_heads=lm.num_kv_heads, head_dim=lm.head_dim,
                         rms_norm_eps=cfg.rms_norm_eps, hidden_act="silu", attention_bias=False, mlp_bias=False)
        self.width = width
        self.layers = nn.ModuleList(LlamaDecoderLayer(hf, i) for i in range(lm.num_layers))
        kv = lm.num_kv_heads * lm.head_dim
        for i, layer in enumerate(self.layers):
            if cfg.cross_attention and i % cfg.self_attn_every_n_layers:  # re-projects the VLM's keys / values
                layer.self_attn.k_proj = nn.Linear(kv, kv, bias=False)
                layer.self_attn.v_proj = nn.Linear(kv, kv, bias=False)
        self.norm = LlamaRMSNorm(width, eps=cfg.rms_norm_eps)


class SmolVLAExpert(ActionHead):
    uses_kv_cache = True

    def __init__(self, cfg: SmolVLAExpertConfig, action_dim: int, chunk: int, lm: LMSpec) -> None:
        super().__init__(cfg, action_dim, chunk)
        self.lm = lm
        self.padded_dim = max(cfg.max_action_dim, action_dim)
        self.expert = Expert(cfg, lm)
        w = self.expert.width
        self.action_in_proj = nn.Linear(self.padded_dim, w)
        self.action_out_proj = nn.Linear(w, self.padded_dim)
        self.action_time_mlp_in = nn.Linear(2 * w, w)
        self.action_time_mlp_out = nn.Linear(w, w)
        self._time = torch.distributions.Beta(cfg.time_alpha, cfg.time_beta)

    def is_self_attention(self, layer: int) -> bool:
        return not self.cfg.cross_attention or layer % self.cfg.self_attn_every_n_layers == 0

    def _prefix(self, ctx: Context) -> list[tuple[Tensor, Tensor]]:
        if ctx.kv_cache is None:
            raise ValueError("the smolvla_expert head needs the prefix KV cache (encode with use_cache=True)")
        layers = ctx.kv_cache.layers
        if len(layers) != len(self.expert.layers):
            raise ValueError(f"smolvla_expert has {len(self.expert.layers)} layers, the prefix cache {len(layers)} "
                             f"(the expert needs one layer per VLM layer)")
        p = ctx.prefix_len
        return [(layer.keys[:, :, :p], layer.values[:, :, :p]) for layer in layers]

    def _attend(self, layer: nn.Module, i: int, h: Tensor, pk: Tensor, pv: Tensor, offset: Tensor,
                prefix_mask: Tensor) -> Tensor:
        """One expert layer's attention output (B, H, heads·hd) in float32."""
        attn, lm = layer.self_attn, self.lm
        b, n, _ = h.shape
        y = layer.input_layernorm(h)
        q = attn.q_proj(y).view(b, n, lm.num_heads, lm.head_dim)
        steps = torch.arange(n, device=h.device)
        if self.is_self_attention(i):
            pos = offset[:, None] + steps  # continue after the prefix's real tokens
            k = rope(attn.k_proj(y).view(b, n, lm.num_kv_heads, lm.head_dim), pos, self.cfg.rope_theta)
            v = attn.v_proj(y).view(b, n, lm.num_kv_heads, lm.head_dim).float()
            k = torch.cat([pk.float(), k.transpose(1, 2)], 2)
            v = torch.cat([pv.float(), v.transpose(1, 2)], 2)
            causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
            mask = torch.cat([prefix_mask[:, None, :].expand(b, n, -1), causal.expand(b, n, n)], -1)
        else:
            pos = steps.expand(b, n)  # cross-attention queries count from 0
            w = attn.k_proj.weight.dtype
            k = attn.k_proj(pk.transpose(1, 2).reshape(b, pk.shape[2], -1).to(w))
            v = attn.v_proj(pv.transpose(1, 2).reshape(b, pv.shape[2], -1).to(w))
            k = k.view(b, -1, lm.num_kv_heads, lm.head_dim).transpose(1, 2).float()
            v = v.view(b, -1, lm.num_kv_heads, lm.head_dim).transpose(1, 2).float()
            mask = prefix_mask[:, None, :].expand(b, n, -1)
        q = rope(q, pos, self.cfg.rope_theta).transpose(1, 2)
        groups = lm.num_heads // lm.num_kv_heads
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return out.transpose(1, 2).reshape(b, n, -1)

    def velocity(self, x: Tensor, t: Tensor, kv: list[tuple[Tensor, Tensor]], prefix_mask: Tensor,
                 offset: Tensor) -> Tensor:
        """Predicted velocity (B, H, max_action_dim) of ``x`` at flow time ``t`` (B,) on the prefix ``kv``."""
        dtype = self.action_in_proj.weight.dtype
        a = self.action_in_proj(x.to(dtype))
        te = sincos_time(t, a.shape[-1], self.cfg.min_period, self.cfg.max_period).to(dtype)
        h = torch.cat([a, te[:, None].expand_as(a)], -1)
        h = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(h)))
        mask = prefix_mask.bool()
        for i, (layer, (pk, pv)) in enumerate(zip(self.expert.layers, kv, strict=True)):
            att = self._attend(layer, i, h, pk, pv, offset, mask)
            h = h + layer.self_attn.o_proj(att.to(layer.self_attn.o_proj.weight.dtype))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        out = self.expert.norm(h)
        return self.action_out_proj(out.to(self.action_out_proj.weight.dtype)).float()

    def _pad(self, a: Tensor) -> Tensor:
        return F.pad(a, (0, self.padded_dim - a.shape[-1]))

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        target, valid = target_and_mask(batch, self.chunk, self.action_dim)
        b = target.shape[0]
        target = self._pad(target)
        noise = torch.randn_like(target)
        t = (self._time.sample((b,)) * 0.999 + 0.001).to(target.device)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * target
        v = self.velocity(x_t, t, self._prefix(ctx), ctx.mask, ctx.extras["prefix_next_position"])
        err = ((v - (noise - target))[..., : self.action_dim] ** 2).mean(-1)
        return {"loss": masked_mean(err, valid)}

    @torch.no_grad()
    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               num_steps: int | None = None, noise: Tensor | None = None) -> Tensor:
        """Euler integration from noise (t = 1) to actions (t = 0); ``noise`` (B, H, max_action_dim) fixes the start."""
        kv, b = self._prefix(ctx), ctx.mask.shape[0]
        offset = ctx.extras["prefix_next_position"]
        steps = num_steps or self.cfg.num_steps
        shape = (b, self.chunk, self.padded_dim)
        if noise is None:
            x = torch.randn(shape, generator=generator, device=ctx.mask.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise: expected {shape}, got {tuple(noise.shape)}")
        else:
            x = noise.to(ctx.mask.device, torch.float32)
        dt = -1.0 / steps
        for i in range(steps):
            t = torch.full((b,), 1.0 + i * dt, dtype=torch.float32, device=x.device)
            x = x + dt * self.velocity(x, t, kv, ctx.mask, offset)
        return x[..., : self.action_dim]
