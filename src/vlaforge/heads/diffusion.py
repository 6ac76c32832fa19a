"""DDPM training and DDIM sampling around any denoiser network (DiT, 1-D UNet).

Shared by the ``dit``, ``unet1d`` and ``inllm_diffusion`` heads: diffusers' schedulers (a squared-cosine schedule
over 100 steps by default, as HybridVLA and DexVLA) predicting the noise (``prediction_type="epsilon"``, as every
released seed), the clean chunk (``"sample"``) or the velocity (``"v_prediction"``), trained with a squared (DDPM)
or absolute error (``loss``); ``repeated_diffusion_steps`` noise draws per backbone pass (HybridVLA's name: the
expensive prefix is encoded once for several head updates), condition dropout for classifier-free guidance, and
scheduler arithmetic in float32 whatever the weights' dtype (bf16 DDIM is a known NaN source).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor, nn

from vlaforge.heads.base import ActionHead, HeadConfig, drop_mask, guided, masked_mean, target_and_mask
from vlaforge.heads.condition import Condition, ReadoutCondition
from vlaforge.types import Context

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class DiffusionHeadConfig(HeadConfig):
    sampling: ClassVar[tuple[str, ...]] = ("num_steps", "clip_sample", "cfg_scale", "init_noise")

    num_train_timesteps: int = 100
    num_steps: int = 10  # DDIM steps at inference
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: float | None = 1.0  # clip x0 to +-value while sampling (None: off)
    repeated_diffusion_steps: int = 4  # noise draws per backbone pass during training (HybridVLA repeats 4-8x)
    cond_dropout: float = 0.0  # probability of dropping the condition in training (enables cfg_scale)
    cfg_scale: float = 0.0  # classifier-free guidance weight at inference (0: off)
    # what the network predicts: "epsilon" (the noise; HybridVLA, DexVLA) | "sample" (the clean chunk x0) |
    # "v_prediction" (alpha·eps − sigma·x0)
    prediction_type: str = "epsilon"
    loss: str = "mse"  # "mse" (DDPM, every seed) | "l1" on the same target
    init_noise: float = 1.0  # std of the noise sampling starts from (0: from zeros, a deterministic policy)
    # training timesteps: "uniform" over [0, num_train_timesteps) (DDPM) | "beta": t / T ~ Beta(time_alpha,
    # time_beta), pi0's draw (Beta(1.5, 1) favours noisier steps, where the chunk must come from the condition)
    timesteps: str = "uniform"
    time_alpha: float = 1.5
    time_beta: float = 1.0

    def validate(self) -> None:
        self.check(self.prediction_type in PREDICTION_TYPES, "prediction_type", " | ".join(PREDICTION_TYPES))
        self.check(self.loss in ("mse", "l1"), "loss", "mse | l1")
        self.check(self.init_noise >= 0, "init_noise", ">= 0")
        self.check(self.timesteps in ("uniform", "beta"), "timesteps", "uniform | beta")
        self.check(self.time_alpha > 0 and self.time_beta > 0, "time_alpha", "time_alpha > 0 and time_beta > 0")
        self.check(1 <= self.num_steps <= self.num_train_timesteps, "num_steps",
                   f"in [1, num_train_timesteps={self.num_train_timesteps}]")
        self.check(self.repeated_diffusion_steps >= 1, "repeated_diffusion_steps", ">= 1")
        self.check(0 <= self.cond_dropout < 1, "cond_dropout", "in [0, 1)")
        self.check(self.cfg_scale >= 0, "cfg_scale", ">= 0")
        self.check(self.beta_schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"), "beta_schedule",
                   "linear | scaled_linear | squaredcos_cap_v2")


def make_schedulers(cfg: DiffusionHeadConfig) -> tuple[DDPMScheduler, DDIMScheduler]:
    common = {"num_train_timesteps": cfg.num_train_timesteps, "beta_schedule": cfg.beta_schedule,
              "prediction_type": cfg.prediction_type, "clip_sample": cfg.clip_sample is not None,
              "clip_sample_range": cfg.clip_sample or 1.0}
    return DDPMScheduler(**common), DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0)


def training_timesteps(cfg: DiffusionHeadConfig, n: int, device: torch.device) -> Tensor:
    """``n`` integer timesteps in [0, num_train_timesteps): uniform, or ``T · u`` with u ~ Beta(time_alpha,
    time_beta) (``cfg.timesteps``)."""
    if cfg.timesteps == "uniform":
        return torch.randint(0, cfg.num_train_timesteps, (n,), device=device)
    u = torch.distributions.Beta(cfg.time_alpha, cfg.time_beta).sample((n,))
    return (u * cfg.num_train_timesteps).long().clamp(max=cfg.num_train_timesteps - 1).to(device)


def denoising_loss(cfg: DiffusionHeadConfig, scheduler: DDPMScheduler, pred: Tensor, clean: Tensor, noise: Tensor,
                   t: Tensor, valid: Tensor) -> Tensor:
    """The error of ``pred`` (B, H, Da) against what the network is trained to output for ``clean`` noised with
    ``noise`` at ``t`` (``cfg.prediction_type``), squared or absolute (``cfg.loss``), over the valid steps."""
    kind = cfg.prediction_type
    goal = noise if kind == "epsilon" else clean if kind == "sample" else scheduler.get_velocity(clean, noise, t)
    err = (pred.float() - goal).abs() if cfg.loss == "l1" else (pred.float() - goal) ** 2
    return masked_mean(err.mean(-1), valid)


def ddim_loop(scheduler: DDIMScheduler, eps_fn: Any, shape: tuple[int, ...], num_steps: int,
              generator: torch.Generator | None, device: torch.device, init_noise: float = 1.0) -> Tensor:
    """Deterministic DDIM (eta 0) from Gaussian noise of std ``init_noise`` (1: pure noise, 0: zeros);
    ``eps_fn(x, t)`` is the network's prediction (noise, clean sample or velocity, as the scheduler's
    ``prediction_type``). All state is float32.

    A fresh copy of the timestep schedule is used per call, so concurrent samples do not interfere.
    """
    x = torch.randn(shape, generator=generator, dtype=torch.float32, device=device) * init_noise
    sched = DDIMScheduler.from_config(scheduler.config)
    sched.set_timesteps(num_steps, device=device)
    for t in sched.timesteps:
        eps = eps_fn(x, t.expand(shape[0])).float()
        x = sched.step(eps, t, x, eta=0.0).prev_sample.float()
    return x


class DiffusionHead(ActionHead):
    """A readout diffusion head: ``network(x, t, cond)`` predicts the noise of an action chunk (or its clean
    sample or velocity, by ``prediction_type``)."""

    def __init__(self, cfg: DiffusionHeadConfig, action_dim: int, chunk: int, hidden_size: int, state_dim: int,
                 network: nn.Module, cond_dim: int, memory: bool, condition: ReadoutCondition | None = None) -> None:
        super().__init__(cfg, action_dim, chunk)
        self.network = network
        self.condition = condition or ReadoutCondition(hidden_size, state_dim, cond_dim, memory)
        self.train_scheduler, self.sample_scheduler = make_schedulers(cfg)

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        target, valid = target_and_mask(batch, self.chunk, self.action_dim)
        k = self.cfg.repeated_diffusion_steps
        b = target.shape[0]
        cond = self.condition(ctx, drop_mask(b, self.cfg.cond_dropout, target.device, self.training))
        cond = ReadoutCondition.repeat(cond, k)
        target, valid = target.repeat(k, 1, 1), valid.repeat(k, 1)
        noise = torch.randn_like(target)
        t = training_timesteps(self.cfg, target.shape[0], target.device)
        noisy = self.train_scheduler.add_noise(target, noise, t)  # float32
        pred = self.network(noisy, t, cond)
        return {"loss": denoising_loss(self.cfg, self.train_scheduler, pred, target, noise, t, valid)}

    @torch.no_grad()
    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               num_steps: int | None = None, cfg_scale: float | None = None) -> Tensor:
        scale = self.cfg.cfg_scale if cfg_scale is None else cfg_scale
        conds: dict[bool, Condition] = {}

        def eps_fn(x: Tensor, t: Tensor) -> Tensor:
            def predict(x_: Tensor, drop: Tensor | None) -> Tensor:
                key = drop is not None
                if key not in conds:
                    conds[key] = self.condition(ctx, drop)
                return self.network(x_, t, conds[key]).float()

            return guided(predict, x, scale)

        b = ctx.pooled.shape[0]
        return ddim_loop(self.sample_scheduler, eps_fn, (b, self.chunk, self.action_dim),
                         num_steps or self.cfg.num_steps, generator, ctx.pooled.device, self.cfg.init_noise)
