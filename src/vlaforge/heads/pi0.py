"""pi0 and pi0.5: a Gemma action expert in joint attention with the VLM, layer by layer.

Papers: pi0 (Black et al., 2024), pi0.5 (Physical Intelligence, 2025); reference: openpi
``src/openpi/models_pytorch/pi0_pytorch.py`` and ``gemma_pytorch.py`` (LeRobot's ``policies/pi0``, ``pi05`` port
the same model). openpi runs both transformers in one joint forward: in layer ``i`` the VLM's prefix tokens and
the expert's suffix tokens are projected by their own weights, attend together under a block-causal mask (the
prefix bidirectional, then the state token, then the action tokens), and go through their own MLPs. The prefix
never attends to the suffix, so the VLM's half of that forward is the prefix encoded alone: here the backbone
encodes the prefix once with its KV cache, and each expert layer's queries attend to [layer ``i``'s cached prefix
keys/values ; the suffix's own keys/values] — one path for training (gradients flow into the cache) and for
every Euler step. ``tests/unit/test_pi0.py`` checks it against one joint forward written from this description.

Expert layer (Gemma): RMSNorm ``x̂·(1 + w)`` → q/k/v (the VLM's head count, KV heads and head size), RoPE at the
positions after the prefix's, attention scaled by ``head_dim^-0.5``, o_proj, residual; RMSNorm → GeGLU MLP
(tanh GELU), residual; a final RMSNorm, then ``action_out_proj``. Time: sin-cos of ``t`` with periods
``min_period … max_period`` (4e-3 … 4), ``t = 1`` is noise, ``x_t = t·ε + (1 − t)·a``, velocity target
``ε − a``, ``t ~ Beta(1.5, 1)·0.999 + 0.001``, Euler from 1 to 0 in ``num_steps`` steps (10).

* ``time_conditioning="concat"`` (pi0): suffix = [``state_proj(state)``] + ``action_time_mlp_out(silu(
  action_time_mlp_in([action_in_proj(x_t) ; sincos(t)])))``;
* ``time_conditioning="adarms"`` (pi0.5): no state token (the state is in the prompt, see ``Tokenize.state_bins``),
  the suffix is ``action_in_proj(x_t)`` and every expert RMSNorm is adaptive: ``dense(c)`` → scale, shift, gate,
  ``x̂·(1 + scale) + shift``, the residual branch multiplied by the gate, with
  ``c = silu(time_mlp_out(silu(time_mlp_in(sincos(t)))))``.

States and actions are zero-padded to ``model_action_dim`` (openpi: 32) and actions cut back to the robot's.
Differences: the training loss averages the robot's action dims only (openpi averages all padded dims);
parameter names follow openpi's (``layers.i.self_attn.q_proj`` …) so its checkpoints load by renaming prefixes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaforge.heads.base import HEADS, ActionHead, HeadConfig, masked_mean, prefix_kv, target_and_mask
from vlaforge.types import Context, LMSpec

TIME_CONDITIONINGS = ("concat", "adarms")


@HEADS.register("pi0")
@dataclass(frozen=True)
class Pi0HeadConfig(HeadConfig):
    """pi0 / pi0.5 Gemma action expert in joint attention with the VLM; flow matching, Euler (num_steps)."""

    sampling: ClassVar[tuple[str, ...]] = ("num_steps",)

    width: int = 256  # the expert's hidden size (pi0: gemma_300m, 1024)
    mlp_dim: int = 1024  # its GeGLU width (gemma_300m: 4096)
    time_conditioning: str = "concat"  # "concat": pi0's action-time MLP + state token | "adarms": pi0.5
    model_action_dim: int = 0  # states and actions zero-padded to this (openpi: 32); 0: the robot's action dim
    num_steps: int = 10
    time_alpha: float = 1.5  # t ~ Beta(alpha, beta) * 0.999 + 0.001
    time_beta: float = 1.0
    min_period: float = 4e-3
    max_period: float = 4.0
    rms_eps: float = 1e-6

    def validate(self) -> None:
        self.check(self.width >= 8 and self.width % 2 == 0, "width", "an even number >= 8")
        self.check(self.mlp_dim >= 1, "mlp_dim", ">= 1")
        self.check(self.time_conditioning in TIME_CONDITIONINGS, "time_conditioning", f"one of {TIME_CONDITIONINGS}")
        self.check(self.model_action_dim >= 0, "model_action_dim", ">= 0")
        self.check(self.num_steps >= 1, "num_steps", ">= 1")
        self.check(0 < self.min_period < self.max_period, "min_period", "in (0, max_period)")

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> Pi0Head:
        return Pi0Head(self, action_dim, chunk, state_dim, lm)


def sincos_time(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """(B,) times -> (B, dim) [sin | cos] with periods geometric from ``min_period`` to ``max_period`` (float64)."""
    frac = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** frac
    x = t.double()[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(x), torch.cos(x)], 1).float()


def rotary(positions: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """RoPE cos/sin (B, N, dim) for integer positions (B, N), halves layout (transformers' ``rotate_half``)."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    f = positions.float()[..., None] * inv
    emb = torch.cat([f, f], -1)
    return emb.cos(), emb.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, heads, N, dim) rotated by ``cos``/``sin`` (B, N, dim)."""
    x1, x2 = x.chunk(2, -1)
    return x * cos[:, None].to(x.dtype) + torch.cat([-x2, x1], -1) * sin[:, None].to(x.dtype)


class RMSNorm(nn.Module):
    """Gemma's RMSNorm ``x̂·(1 + w)`` in float32; with ``cond_dim`` the adaptive form returning a residual gate."""

    def __init__(self, dim: int, eps: float, cond_dim: int | None = None) -> None:
        super().__init__()
        self.eps = eps
        if cond_dim is None:
            self.weight = nn.Parameter(torch.zeros(dim))
            self.dense = None
        else:
            self.dense = nn.Linear(cond_dim, 3 * dim)
            nn.init.zeros_(self.dense.weight)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        xf = x.float()
        n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.dense is None:
            return (n * (1.0 + self.weight.float())).to(x.dtype), None
        if cond is None:
            raise ValueError("adaptive RMSNorm needs the time condition")
        scale, shift, gate = self.dense(cond.to(self.dense.weight.dtype))[:, None].chunk(3, -1)
        return (n * (1.0 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


def _gated(x: Tensor, y: Tensor, gate: Tensor | None) -> Tensor:
    return x + y if gate is None else x + y * gate


class ExpertLayer(nn.Module):
    """One Gemma decoder layer of the expert; its attention reads the prefix's keys/values of the same layer."""

    def __init__(self, cfg: Pi0HeadConfig, lm: LMSpec, cond_dim: int | None) -> None:
        super().__init__()
        w, hd = cfg.width, lm.head_dim
        self.heads, self.kv_heads, self.head_dim = lm.num_heads, lm.num_kv_heads, hd
        self.input_layernorm = RMSNorm(w, cfg.rms_eps, cond_dim)
        q, kv = lm.num_heads * hd, lm.num_kv_heads * hd
        self.self_attn = nn.ModuleDict({"q_proj": nn.Linear(w, q, bias=False), "k_proj": nn.Linear(w, kv, bias=False),
                                        "v_proj": nn.Linear(w, kv, bias=False), "o_proj": nn.Linear(q, w, bias=False)})
        self.post_attention_layernorm = RMSNorm(w, cfg.rms_eps, cond_dim)
        self.mlp = nn.ModuleDict({"gate_proj": nn.Linear(w, cfg.mlp_dim, bias=False),
                                  "up_proj": nn.Linear(w, cfg.mlp_dim, bias=False),
                                  "down_proj": nn.Linear(cfg.mlp_dim, w, bias=False)})

    def forward(self, x: Tensor, pk: Tensor, pv: Tensor, mask: Tensor, rope: tuple[Tensor, Tensor],
                cond: Tensor | None) -> Tensor:
        b, n, _ = x.shape
        a = self.self_attn
        h, gate = self.input_layernorm(x, cond)
        q = a["q_proj"](h).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = a["k_proj"](h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = a["v_proj"](h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        k, v = torch.cat([pk.to(k.dtype), k], 2), torch.cat([pv.to(v.dtype), v], 2)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, 1)
            v = v.repeat_interleave(self.heads // self.kv_heads, 1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
        x = _gated(x, a["o_proj"](y.transpose(1, 2).reshape(b, n, -1)), gate)
        h, gate = self.post_attention_layernorm(x, cond)
        m = self.mlp
        return _gated(x, m["down_proj"](F.gelu(m["gate_proj"](h), approximate="tanh") * m["up_proj"](h)), gate)


class Pi0Head(ActionHead):
    uses_kv_cache = True

    def __init__(self, cfg: Pi0HeadConfig, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> None:
        super().__init__(cfg, action_dim, chunk)
        d, w = cfg.model_action_dim or action_dim, cfg.width
        adarms = cfg.time_conditioning == "adarms"
        if d < action_dim or (not adarms and state_dim > d):
            raise ValueError(f"head.model_action_dim={cfg.model_action_dim}: smaller than the action dim "
                             f"{action_dim} or the state dim {state_dim}")
        self.model_dim, self.state_dim, self.adarms = d, state_dim, adarms
        self.head_dim, self.rope_theta = lm.head_dim, lm.rope_theta
        cond = w if adarms else None
        self.layers = nn.ModuleList(ExpertLayer(cfg, lm, cond) for _ in range(lm.num_layers))
        self.norm = RMSNorm(w, cfg.rms_eps, cond)
        self.action_in_proj = nn.Linear(d, w)
        self.action_out_proj = nn.Linear(w, d)
        if adarms:
            self.time_mlp_in, self.time_mlp_out = nn.Linear(w, w), nn.Linear(w, w)
        else:
            self.state_proj = nn.Linear(d, w)
            self.action_time_mlp_in, self.action_time_mlp_out = nn.Linear(2 * w, w), nn.Linear(w, w)
        self._time = torch.distributions.Beta(cfg.time_alpha, cfg.time_beta)

    def _pad(self, x: Tensor) -> Tensor:
        return F.pad(x.float(), (0, self.model_dim - x.shape[-1]))

    def suffix(self, x: Tensor, t: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The expert's input tokens (B, n, width) for noisy actions ``x`` (B, H, model_dim) at time ``t`` (B,),
        and the adaRMS condition (pi0.5) or None."""
        cfg, dtype = self.cfg, self.action_in_proj.weight.dtype
        a = self.action_in_proj(x.to(dtype))
        temb = sincos_time(t, cfg.width, cfg.min_period, cfg.max_period).to(dtype)
        if self.adarms:
            return a, F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb))))
        at = torch.cat([a, temb[:, None].expand_as(a)], -1)
        tokens = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(at)))
        s = state if state is not None and self.state_dim else x.new_zeros(x.shape[0], 0)
        st = self.state_proj(self._pad(s).to(dtype))
        return torch.cat([st[:, None], tokens], 1), None

    def velocity(self, x: Tensor, t: Tensor, kv: list[tuple[Tensor, Tensor]], prefix_mask: Tensor, start: Tensor,
                 state: Tensor | None) -> Tensor:
        """Predicted velocity (B, H, model_dim) of ``x`` at flow time ``t`` (B,) on the prefix keys/values."""
        h, cond = self.suffix(x, t, state)
        b, n = h.shape[:2]
        allowed = torch.ones(n, n, dtype=torch.bool, device=h.device)
        if not self.adarms:
            allowed[0, 1:] = False  # block-causal: the state token does not see the actions
        mask = torch.cat([prefix_mask.bool()[:, None].expand(b, n, -1), allowed.expand(b, n, n)], 2)[:, None]
        positions = start[:, None] + torch.arange(n, device=h.device)
        rope = rotary(positions, self.head_dim, self.rope_theta)
        for layer, (pk, pv) in zip(self.layers, kv, strict=True):
            h = layer(h, pk, pv, mask, rope, cond)
        h, _ = self.norm(h, cond)
        return self.action_out_proj(h[:, -self.chunk:]).float()

    def _inputs(self, ctx: Context) -> tuple[list[tuple[Tensor, Tensor]], Tensor, Tensor]:
        kv = prefix_kv(ctx, len(self.layers), "pi0")
        start = ctx.extras.get("prefix_next_position")
        if start is None:
            start = ctx.mask.sum(1)
        return kv, ctx.mask, start

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        target, valid = target_and_mask(batch, self.chunk, self.action_dim)
        kv, mask, start = self._inputs(ctx)
        a = self._pad(target)
        noise = torch.randn_like(a)
        t = (self._time.sample((a.shape[0],)) * 0.999 + 0.001).to(a.device)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * a
        v = self.velocity(x_t, t, kv, mask, start, ctx.state)
        err = ((v - (noise - a))[..., : self.action_dim] ** 2).mean(-1)
        return {"loss": masked_mean(err, valid)}

    @torch.no_grad()
    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               num_steps: int | None = None, noise: Tensor | None = None) -> Tensor:
        """Euler from noise (t = 1) to actions (t = 0); time advances in float32 steps of -1/num_steps as openpi's."""
        kv, mask, start = self._inputs(ctx)
        b, steps = mask.shape[0], num_steps or self.cfg.num_steps
        x = noise.float() if noise is not None else torch.randn((b, self.chunk, self.model_dim), generator=generator,
                                                                 device=mask.device)
        dt = torch.tensor(-1.0 / steps, dtype=torch.float32, device=x.device)
        t = torch.tensor(1.0, dtype=torch.float32, device=x.device)
        for _ in range(steps):
            x = x + dt * self.velocity(x, t.expand(b), kv, mask, start, ctx.state)
            t = t + dt
        return x[..., : self.action_dim]
