"""HybridVLA's diffusion inside the LLM: noisy action tokens denoised by the VLM's own decoder.

Paper: HybridVLA (Liu et al., 2025); reference: ``models/vlas/hybridvla.py`` (``_prepare_multimodal_embeddings``,
``ddim_sample_loop_progressive`` with ``past_key_values``). After the prefix, the sequence continues with
``<BOD> [proprio] [timestep] [x_1 … x_H] <EOD>``: the proprio token and the noisy actions go through MLP
embedders, the timestep through a sinusoidal embedder, and the LLM's hidden states at the ``x`` positions go
through a final layer (zero-initialized output) that predicts the noise. Training tiles every sample
``repeated_diffusion_steps`` times with independent noise and timesteps (the prefix cache is copied, not
re-encoded); inference runs DDIM (4 steps by default) where every step extends the cached prefix and crops the
cache back, so the prefix is encoded once. ``markers="vocab"`` takes ``<BOD>``/``<EOD>`` from the vocabulary
(HybridVLA's rows, what ``vlaforge import hybridvla`` uses); by default they are learned embeddings owned by the
head. Differences from HybridVLA: the whole chunk is denoised (HybridVLA's cache handling is only correct for one
action), and classifier-free guidance works: the unconditional pass hides the prefix from the suffix tokens and
swaps the proprio token for a learned null (HybridVLA's ``forward_with_cfg`` does not exist).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

from vlaforge.heads.base import HEADS, ActionHead, drop_mask, guided, target_and_mask
from vlaforge.heads.diffusion import DiffusionHeadConfig, ddim_loop, denoising_loss, make_schedulers, training_timesteps
from vlaforge.types import Context, LMSpec


@HEADS.register("inllm_diffusion")
@dataclass(frozen=True)
class InLLMDiffusionHeadConfig(DiffusionHeadConfig):
    """HybridVLA's in-LLM diffusion: proprio, timestep and noisy action tokens between <BOD> and <EOD>."""

    num_steps: int = 4  # HybridVLA's DDIM default
    markers: str = "learned"  # "learned": <BOD>/<EOD> embeddings of the head | "vocab": the tokens below
    bod_token: str = "<BOD>"
    eod_token: str = "<EOD>"

    def validate(self) -> None:
        super().validate()
        self.check(self.markers in ("learned", "vocab"), "markers", "learned | vocab")

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> InLLMDiffusionHead:
        return InLLMDiffusionHead(self, action_dim, chunk, state_dim, lm.hidden_size)


def _mlp(i: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))


class InLLMDiffusionHead(ActionHead):
    in_sequence = True
    provides_block = True  # block() builds the diffusion block for other heads (HybridVLA's AR context)

    def __init__(self, cfg: InLLMDiffusionHeadConfig, action_dim: int, chunk: int, state_dim: int,
                 hidden: int) -> None:
        super().__init__(cfg, action_dim, chunk)
        learned = cfg.markers == "learned"
        self.bod = nn.Parameter(torch.randn(hidden) * 0.02) if learned else None
        self.eod = nn.Parameter(torch.randn(hidden) * 0.02) if learned else None
        self.proprio = _mlp(state_dim, hidden) if state_dim > 0 else None
        self.null_proprio = nn.Parameter(torch.zeros(hidden))  # the proprio token of the unconditional branch
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_emb = TimestepEmbedding(256, hidden)
        self.x_emb = _mlp(action_dim, hidden)
        self.final = nn.Sequential(nn.RMSNorm(hidden, eps=1e-6), nn.Linear(hidden, hidden),
                                   nn.GELU(approximate="tanh"), nn.Linear(hidden, action_dim))
        nn.init.zeros_(self.final[-1].weight)
        nn.init.zeros_(self.final[-1].bias)
        self.train_scheduler, self.sample_scheduler = make_schedulers(cfg)

    def required_tokens(self) -> list[str]:
        return [self.cfg.bod_token, self.cfg.eod_token] if self.cfg.markers == "vocab" else []

    def _marker(self, ctx: Context, which: str, b: int) -> Tensor:
        if self.cfg.markers == "learned":
            return getattr(self, which).expand(b, 1, -1)
        token = self.cfg.bod_token if which == "bod" else self.cfg.eod_token
        ids = torch.tensor([[ctx.lm.token_id(token)]], device=self.null_proprio.device)
        return ctx.lm.embed_tokens(ids).to(self.null_proprio.dtype).expand(b, 1, -1)

    def block(self, ctx: Context, x: Tensor, t: Tensor, hide: Tensor | None = None) -> tuple[Tensor, int]:
        """``<BOD> [proprio] [timestep] [x_1 … x_H] <EOD>`` embeddings (B, K, D) and where ``x_1`` sits."""
        b, dtype = x.shape[0], self.null_proprio.dtype
        parts = [self._marker(ctx, "bod", b)]
        if self.proprio is not None and ctx.state is not None:
            prop = self.proprio(ctx.state.to(dtype))
            if hide is not None:
                prop = torch.where(hide[:, None], self.null_proprio.to(dtype).expand_as(prop), prop)
            parts.append(prop[:, None])
        parts += [self.time_emb(self.time_proj(t).to(dtype))[:, None], self.x_emb(x.to(dtype)),
                  self._marker(ctx, "eod", b)]
        return torch.cat(parts, 1), len(parts) - 2

    def _eps(self, ctx: Context, x: Tensor, t: Tensor, hide: Tensor | None) -> Tensor:
        """Extend the prefix with the diffusion block, read the noise prediction, crop the cache back."""
        lm = ctx.lm
        seq, start = self.block(ctx, x, t, hide)
        hidden = lm.extend(ctx, seq, torch.ones(seq.shape[:2], device=seq.device), hide_prefix=hide)
        lm.reset(ctx)
        return self.final(hidden[:, start : start + self.chunk].to(seq.dtype)).float()

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        target, valid = target_and_mask(batch, self.chunk, self.action_dim)
        k = self.cfg.repeated_diffusion_steps
        ctx = ctx.lm.repeat_context(ctx, k)  # one prefix encode, k independent noise draws
        target, valid = target.repeat(k, 1, 1), valid.repeat(k, 1)
        noise = torch.randn_like(target)
        t = training_timesteps(self.cfg, target.shape[0], target.device)
        hide = drop_mask(target.shape[0], self.cfg.cond_dropout, target.device, self.training)
        pred = self._eps(ctx, self.train_scheduler.add_noise(target, noise, t), t, hide)
        return {"loss": denoising_loss(self.cfg, self.train_scheduler, pred, target, noise, t, valid)}

    @torch.no_grad()
    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               num_steps: int | None = None, cfg_scale: float | None = None) -> Tensor:
        scale = self.cfg.cfg_scale if cfg_scale is None else cfg_scale

        def eps_fn(x: Tensor, t: Tensor) -> Tensor:
            return guided(lambda z, hide: self._eps(ctx, z, t, hide), x, scale)

        b = ctx.mask.shape[0]
        return ddim_loop(self.sample_scheduler, eps_fn, (b, self.chunk, self.action_dim),
                         num_steps or self.cfg.num_steps, generator, ctx.mask.device, self.cfg.init_noise)
