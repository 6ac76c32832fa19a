"""DiVLA's 1-D conditional UNet diffusion head (Diffusion Policy's ``ConditionalUnet1D``).

Papers: Diffusion Policy (Chi et al., 2023); DiVLA (Wen et al., 2024); reference:
``diffusion_policy/model/diffusion/conditional_unet1d.py``. Temporal convolutions over the action chunk, with
every residual block FiLM-modulated by ``[timestep embedding, condition]`` where the condition is the pooled VLM
context plus the proprio state. ``down_dims`` sets the channel widths per level (DiVLA/Diffusion Policy use
256-512-1024; the default here is CPU-sized). Differences: FiLM is ``x·(1 + γ) + β`` rather than ``x·γ + β``
(blocks start as identity; on the tests' tiny batches it overfits markedly faster), chunks whose length is not
divisible by the downsampling factor are edge-padded and cropped back, and the DDPM/DDIM machinery is shared
with the DiT head.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

from vlaforge.heads.base import HEADS
from vlaforge.heads.condition import Condition
from vlaforge.heads.diffusion import DiffusionHead, DiffusionHeadConfig
from vlaforge.types import LMSpec


@HEADS.register("unet1d")
@dataclass(frozen=True)
class UNet1DHeadConfig(DiffusionHeadConfig):
    """DiVLA / Diffusion Policy 1-D conditional UNet (FiLM conditioning); channel widths in down_dims."""

    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    n_groups: int = 8
    cond_dim: int = 256
    time_dim: int = 128

    def validate(self) -> None:
        super().validate()
        self.check(len(self.down_dims) >= 1, "down_dims", "at least one level")
        self.check(all(d % self.n_groups == 0 for d in self.down_dims), "down_dims",
                   f"channel widths divisible by n_groups={self.n_groups}")
        self.check(self.kernel_size % 2 == 1, "kernel_size", "an odd number")

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> DiffusionHead:
        net = ConditionalUNet1D(action_dim, self.cond_dim, self.time_dim, self.down_dims, self.kernel_size,
                                self.n_groups)
        return DiffusionHead(self, action_dim, chunk, lm.hidden_size, state_dim, net, self.cond_dim, memory=False)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int) -> None:
        super().__init__(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout), nn.Mish())


class FiLMResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block1, self.block2 = ConvBlock(cin, cout, kernel, groups), ConvBlock(cout, cout, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        out = self.block1(x) * (1 + scale) + bias  # DP uses `scale * x`; 1 + scale starts as identity
        return self.block2(out) + self.skip(x)


class ConditionalUNet1D(nn.Module):
    def __init__(self, action_dim: int, cond_dim: int, time_dim: int, down_dims: tuple[int, ...], kernel: int,
                 groups: int) -> None:
        super().__init__()
        self.time_proj = Timesteps(time_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_emb = TimestepEmbedding(time_dim, time_dim, act_fn="mish")
        c = cond_dim + time_dim
        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
            last = i == len(down_dims) - 1
            self.down.append(nn.ModuleList([FiLMResBlock(cin, cout, c, kernel, groups),
                                            FiLMResBlock(cout, cout, c, kernel, groups),
                                            nn.Conv1d(cout, cout, 3, 2, 1) if not last else nn.Identity()]))
        self.mid = nn.ModuleList([FiLMResBlock(dims[-1], dims[-1], c, kernel, groups) for _ in range(2)])
        self.up = nn.ModuleList()
        for cout, cin in reversed(list(itertools.pairwise(dims[1:]))):  # every up level upsamples
            self.up.append(nn.ModuleList([FiLMResBlock(cin * 2, cout, c, kernel, groups),
                                          FiLMResBlock(cout, cout, c, kernel, groups),
                                          nn.ConvTranspose1d(cout, cout, 4, 2, 1)]))
        self.final = nn.Sequential(ConvBlock(down_dims[0], down_dims[0], kernel, groups),
                                   nn.Conv1d(down_dims[0], action_dim, 1))
        self.factor = 2 ** (len(down_dims) - 1)

    def forward(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        h = x.shape[1]
        dtype = cond.vec.dtype
        pad = (-h) % self.factor
        z = x.to(dtype).transpose(1, 2)  # (B, Da, H)
        if pad:
            z = F.pad(z, (0, pad), mode="replicate")
        c = torch.cat([self.time_emb(self.time_proj(t).to(dtype)), cond.vec], dim=-1)
        skips = []
        for res1, res2, down in self.down:
            z = res2(res1(z, c), c)
            skips.append(z)
            z = down(z)
        for res in self.mid:
            z = res(z, c)
        for res1, res2, up in self.up:
            z = torch.cat([z, skips.pop()], dim=1)
            z = up(res2(res1(z, c), c))
        return self.final(z)[..., :h].transpose(1, 2)
