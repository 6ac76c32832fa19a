"""Regression heads: the whole chunk in one parallel pass (``mlp``), or after fusing a history window of per-frame
contexts with an LSTM (``lstm``) or a GPT-2 decoder (``gpt``).

Papers: OpenVLA-OFT (Kim et al., 2025) — parallel decoding of the chunk with an L1 loss; RoboVLMs (Li et al., 2024)
— MLP / LSTM / GPT-2 policy heads over a window of per-frame VLM features (``backbone.history="per_frame"``),
trained with Huber on the arm dims plus BCE on the gripper. Reference: ``prismatic/models/action_heads.py``,
``robovlms/model/policy_head/base_policy.py``. One class with a ``fusion`` parameter instead of RoboVLMs' four
near-identical MLP classes. Without a per-frame history the window is the current frame alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GPT2Config, GPT2Model

from vlaforge.heads.base import HEADS, ActionHead, HeadConfig, masked_mean, target_and_mask
from vlaforge.types import Context, LMSpec

LOSSES = ("l1", "mse", "huber_bce")


@dataclass(frozen=True)
class RegressionHeadConfig(HeadConfig):
    fusion: ClassVar[str] = "none"

    hidden: int = 512
    layers: int = 2  # MLP layers, LSTM layers or GPT blocks
    loss: str = "l1"  # l1 (OpenVLA-OFT) | mse | huber_bce (RoboVLMs: Huber on arm dims + BCE on gripper dims)
    gripper_dims: tuple[int, ...] = ()  # dims predicted as open/closed logits under huber_bce (e.g. [-1])
    gripper_weight: float = 0.01  # RoboVLMs' arm_gripper_loss_ratio
    tanh: bool = False  # squash arm outputs to [-1, 1] (RoboVLMs' MLPTanhHead)
    window: int = 16  # longest history the GPT fusion accepts (position embeddings)

    def validate(self) -> None:
        self.check(self.hidden >= 1 and self.layers >= 1, "hidden", "hidden >= 1 and layers >= 1")
        self.check(self.loss in LOSSES, "loss", f"one of {LOSSES}")
        self.check(self.loss != "huber_bce" or len(self.gripper_dims) > 0, "gripper_dims",
                   "at least one gripper dim with loss=huber_bce")

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> RegressionHead:
        return RegressionHead(self, action_dim, chunk, lm.hidden_size, state_dim)


@HEADS.register("mlp")
@dataclass(frozen=True)
class MLPHeadConfig(RegressionHeadConfig):
    """Parallel regression of the whole chunk (OpenVLA-OFT L1; RoboVLMs MLP with Huber + BCE gripper)."""


@HEADS.register("lstm")
@dataclass(frozen=True)
class LSTMHeadConfig(RegressionHeadConfig):
    """RoboVLMs' LSTM policy head over a window of per-frame contexts."""

    fusion: ClassVar[str] = "lstm"


@HEADS.register("gpt")
@dataclass(frozen=True)
class GPTHeadConfig(RegressionHeadConfig):
    """RoboVLMs' GPT-2 policy head over a window of per-frame contexts."""

    fusion: ClassVar[str] = "gpt"
    heads: int = 4


class RegressionHead(ActionHead):
    def __init__(self, cfg: RegressionHeadConfig, action_dim: int, chunk: int, hidden_size: int,
                 state_dim: int) -> None:
        super().__init__(cfg, action_dim, chunk)
        h = cfg.hidden
        self.inp = nn.Linear(hidden_size, h)
        self.state = nn.Linear(state_dim, h) if state_dim > 0 else None
        if cfg.fusion == "lstm":
            self.fuse: nn.Module | None = nn.LSTM(h, h, num_layers=cfg.layers, batch_first=True)
        elif cfg.fusion == "gpt":
            self.fuse = GPT2Model(GPT2Config(n_embd=h, n_layer=cfg.layers, n_head=cfg.heads, n_positions=cfg.window,
                                             vocab_size=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                             bos_token_id=0, eos_token_id=0))
        else:
            self.fuse = None
        mlp: list[nn.Module] = []
        for _ in range(cfg.layers if cfg.fusion == "none" else 1):
            mlp += [nn.Linear(h, h), nn.GELU()]
        self.mlp = nn.Sequential(*mlp, nn.Linear(h, chunk * action_dim))
        grip = torch.zeros(action_dim, dtype=torch.bool)
        grip[list(cfg.gripper_dims)] = True
        self.register_buffer("_gripper", grip, persistent=False)

    def _features(self, ctx: Context) -> Tensor:
        seq = ctx.history if ctx.history is not None else ctx.pooled[:, None]  # (B, T, D)
        x = self.inp(seq)
        if self.state is not None and ctx.state is not None:
            x = x + self.state(ctx.state.to(x.dtype))[:, None]
        if isinstance(self.fuse, nn.LSTM):
            x = self.fuse(x)[0]
        elif self.fuse is not None:
            if x.shape[1] > self.cfg.window:
                raise ValueError(f"history of {x.shape[1]} frames exceeds the GPT head's window={self.cfg.window}")
            x = self.fuse(inputs_embeds=x).last_hidden_state
        return x[:, -1]

    def _raw(self, ctx: Context) -> Tensor:
        return self.mlp(self._features(ctx)).view(-1, self.chunk, self.action_dim).float()

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        target, valid = target_and_mask(batch, self.chunk, self.action_dim)
        raw = self._raw(ctx)
        cfg, grip = self.cfg, self._gripper
        if cfg.loss == "huber_bce":
            arm = F.huber_loss(self._arm(raw)[..., ~grip], target[..., ~grip], reduction="none").mean(-1)
            bce = F.binary_cross_entropy_with_logits(raw[..., grip], (target[..., grip] > 0).float(),
                                                     reduction="none").mean(-1)
            parts = {"arm_loss": masked_mean(arm, valid), "gripper_loss": masked_mean(bce, valid)}
            return {"loss": parts["arm_loss"] + cfg.gripper_weight * parts["gripper_loss"], **parts}
        err = (self._arm(raw) - target).abs() if cfg.loss == "l1" else (self._arm(raw) - target) ** 2
        return {"loss": masked_mean(err.mean(-1), valid)}

    def _arm(self, raw: Tensor) -> Tensor:
        return torch.tanh(raw) if self.cfg.tanh else raw

    @torch.no_grad()
    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        raw = self._raw(ctx)
        out = self._arm(raw)
        if self.cfg.loss == "huber_bce":  # gripper logits -> open / closed in the normalized range
            out[..., self._gripper] = torch.where(raw[..., self._gripper] > 0, 1.0, -1.0)
        return out
