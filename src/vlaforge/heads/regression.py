"""Regression heads: the whole chunk in one parallel pass (``mlp``), or after fusing a history window of per-frame
contexts with an LSTM (``lstm``) or a GPT-2 decoder (``gpt``).

Papers: OpenVLA-OFT (Kim et al., 2025) — parallel decoding of the chunk with an L1 loss; RoboVLMs (Li et al., 2024)
— MLP / LSTM / GPT-2 policy heads over a window of per-frame VLM features (``backbone.history="per_frame"``),
trained with Huber on the arm dims plus BCE on the gripper. Reference: ``prismatic/models/action_heads.py``,
``robovlms/model/policy_head/base_policy.py``. One class with a ``fusion`` parameter instead of RoboVLMs' four
near-identical MLP classes. Without a per-frame history the window is the current frame alone.

RoboVLMs' released LSTMDecoder is these options of ``lstm`` (``vlaforge import robovlms`` sets them): the LSTM
reads the backbone feature itself (``input_proj=False``), a ReLU MLP 1024-512-256 ending in tanh gives the arm
dims and a second one the gripper logits (``mlp="arm_gripper"``), and frames flagged as padding in
``observation_is_pad`` are left out (``window_pads="skip"``): before its window is full RoboVLMs runs the LSTM
over the frames it has seen, after that from a zero state over the last ``window`` frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GPT2Config, GPT2Model

from vlaforge.heads.base import HEADS, ActionHead, HeadConfig, masked_mean, target_and_mask
from vlaforge.types import OBS_IS_PAD, Context, LMSpec, SequenceModel

LOSSES = ("l1", "mse", "huber_bce")
READOUTS = ("pooled", "placeholders")
MLPS = ("gelu", "resnet", "arm_gripper")
WINDOW_PADS = ("fuse", "skip")


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
    # "pooled": the backbone's readout vector; "placeholders": OpenVLA-OFT's parallel decoding — chunk x action_dim
    # zero-embedded tokens (+ EOS) encoded with the prompt, each step reads action_dim consecutive hidden states
    readout: str = "pooled"
    # "gelu": Linear-GELU stacks | "resnet": OFT's MLP-ResNet (LayerNorm, ReLU residual blocks) | "arm_gripper":
    # RoboVLMs' two ReLU MLPs (``mlp_widths``), one for the arm dims and one for the ``gripper_dims`` logits
    mlp: str = "gelu"
    mlp_widths: tuple[int, ...] = (1024, 512, 256)  # hidden widths of the arm_gripper MLPs (RoboVLMs')
    input_proj: bool = True  # a Linear from the backbone width to ``hidden`` first (False: RoboVLMs' LSTM reads it)
    # history frames flagged in ``observation_is_pad``: "fuse" them like real ones (copies of the first frame) |
    # "skip" them: the LSTM starts at the first real frame (RoboVLMs' inference before its window is full)
    window_pads: str = "fuse"

    def validate(self) -> None:
        self.check(self.readout in READOUTS, "readout", f"one of {READOUTS}")
        self.check(self.mlp in MLPS, "mlp", f"one of {MLPS}")
        self.check(self.window_pads in WINDOW_PADS, "window_pads", f"one of {WINDOW_PADS}")
        self.check(self.window_pads == "fuse" or self.fusion == "lstm", "window_pads", "'fuse' (skip: lstm only)")
        self.check(self.mlp != "arm_gripper" or (self.readout == "pooled" and len(self.gripper_dims) > 0),
                   "mlp", "arm_gripper with readout='pooled' and gripper_dims set")
        self.check(all(w >= 1 for w in self.mlp_widths), "mlp_widths", "positive widths")
        self.check(self.readout == "pooled" or self.fusion == "none", "readout", "'pooled' with a history fusion")
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


class MLPResNet(nn.Module):
    """OpenVLA-OFT's MLP-ResNet: LayerNorm -> Linear -> ReLU, ``blocks`` x (LayerNorm -> Linear -> ReLU, plus the
    input), LayerNorm -> Linear."""

    def __init__(self, inp: int, hidden: int, out: int, blocks: int) -> None:
        super().__init__()
        self.norm_in, self.fc_in = nn.LayerNorm(inp), nn.Linear(inp, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.ReLU())
                                    for _ in range(blocks))
        self.norm_out, self.fc_out = nn.LayerNorm(hidden), nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.fc_in(self.norm_in(x)))
        for block in self.blocks:
            x = block(x) + x
        return self.fc_out(self.norm_out(x))


def _relu_mlp(inp: int, widths: tuple[int, ...], out: int) -> nn.Sequential:
    """Linear-ReLU through ``widths``, then a Linear to ``out`` (RoboVLMs' MLPTanhHead / MLPSigmoidHead bodies)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(inp, w), nn.ReLU()]
        inp = w
    return nn.Sequential(*layers, nn.Linear(inp, out))


def _lstm_last_real(lstm: nn.LSTM, x: Tensor, pad: Tensor) -> Tensor:
    """The LSTM's top output at each row's last frame, run from a zero state over the row's real frames only.

    ``pad`` (B, T): True for padding frames, which lead the window (before the episode's first frame).
    """
    t = x.shape[1]
    real = (~pad).sum(1).clamp(min=1)  # a row of pads only: its last frame stands for the current one
    start = t - real
    idx = (start[:, None] + torch.arange(t, device=x.device)).clamp(max=t - 1)  # real frames first
    shifted = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
    packed = nn.utils.rnn.pack_padded_sequence(shifted, real.cpu(), batch_first=True, enforce_sorted=False)
    _, (h, _) = lstm(packed)
    return h[-1]


class RegressionHead(ActionHead):
    def __init__(self, cfg: RegressionHeadConfig, action_dim: int, chunk: int, hidden_size: int,
                 state_dim: int) -> None:
        super().__init__(cfg, action_dim, chunk)
        h = cfg.hidden
        grip = torch.zeros(action_dim, dtype=torch.bool)
        grip[list(cfg.gripper_dims)] = True
        self.register_buffer("_gripper", grip, persistent=False)
        self.placeholders = cfg.readout == "placeholders"
        if self.placeholders:  # each chunk step reads action_dim hidden states: no pooled input, no state
            self.mlp: nn.Module = MLPResNet(action_dim * hidden_size, h, action_dim, cfg.layers) \
                if cfg.mlp == "resnet" else nn.Sequential(nn.Linear(action_dim * hidden_size, h), nn.GELU(),
                                                          nn.Linear(h, action_dim))
            return
        width = h if cfg.input_proj else hidden_size  # what the fusion reads
        self.inp = nn.Linear(hidden_size, h) if cfg.input_proj else nn.Identity()
        self.state = nn.Linear(state_dim, width) if state_dim > 0 else None
        if cfg.fusion == "lstm":
            self.fuse: nn.Module | None = nn.LSTM(width, h, num_layers=cfg.layers, batch_first=True)
        elif cfg.fusion == "gpt":
            self.fuse = GPT2Model(GPT2Config(n_embd=h, n_layer=cfg.layers, n_head=cfg.heads, n_positions=cfg.window,
                                             vocab_size=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                             bos_token_id=0, eos_token_id=0))
        else:
            self.fuse = None
        if cfg.mlp == "arm_gripper":
            n_grip = int(grip.sum())
            self.arm = _relu_mlp(h, cfg.mlp_widths, chunk * (action_dim - n_grip))
            self.gripper = _relu_mlp(h, cfg.mlp_widths, chunk * n_grip)
        elif cfg.mlp == "resnet":
            self.mlp = MLPResNet(h, h, chunk * action_dim, cfg.layers)
        else:
            mlp: list[nn.Module] = []
            for _ in range(cfg.layers if cfg.fusion == "none" else 1):
                mlp += [nn.Linear(h, h), nn.GELU()]
            self.mlp = nn.Sequential(*mlp, nn.Linear(h, chunk * action_dim))

    def _features(self, ctx: Context, batch: dict[str, Any]) -> Tensor:
        seq = ctx.history if ctx.history is not None else ctx.pooled[:, None]  # (B, T, D)
        x = self.inp(seq)
        if self.state is not None and ctx.state is not None:
            x = x + self.state(ctx.state.to(x.dtype))[:, None]
        pad = batch.get(OBS_IS_PAD)
        if isinstance(self.fuse, nn.LSTM) and self.cfg.window_pads == "skip" and ctx.history is not None \
                and pad is not None:
            return _lstm_last_real(self.fuse, x, pad.to(x.device).bool())
        if isinstance(self.fuse, nn.LSTM):
            x = self.fuse(x)[0]
        elif self.fuse is not None:
            if x.shape[1] > self.cfg.window:
                raise ValueError(f"history of {x.shape[1]} frames exceeds the GPT head's window={self.cfg.window}")
            x = self.fuse(inputs_embeds=x).last_hidden_state
        return x[:, -1]

    def prefix_suffix(self, lm: SequenceModel, batch_size: int) -> Tensor | None:
        if not self.placeholders:
            return None
        eos = lm.eos_token_id
        if eos is None:
            raise ValueError("readout='placeholders' ends the placeholders with EOS; the tokenizer has none")
        end = lm.embed_tokens(torch.tensor([[eos]], device=next(self.parameters()).device))
        zeros = end.new_zeros(batch_size, self.chunk * self.action_dim, end.shape[-1])
        return torch.cat([zeros, end.expand(batch_size, -1, -1)], 1)

    def _placeholder_states(self, ctx: Context) -> Tensor:
        """OFT's readout, shifted by one as it trains: the last prompt token and the first K - 1 placeholders
        (next-token style), K = chunk x action_dim; (B, chunk, action_dim x D)."""
        k = self.chunk * self.action_dim
        start = ctx.hidden.shape[1] - (k + 1)  # the placeholders and EOS are the last K + 1 positions
        pos = torch.cat([ctx.last_index[:, None], start + torch.arange(k - 1, device=ctx.hidden.device)
                         .expand(ctx.hidden.shape[0], -1)], 1)
        h = ctx.hidden.gather(1, pos[..., None].expand(-1, -1, ctx.hidden.shape[-1]))
        return h.reshape(h.shape[0], self.chunk, -1)

    def _raw(self, ctx: Context, batch: dict[str, Any]) -> Tensor:
        if self.placeholders:
            h = self._placeholder_states(ctx)
            return self.mlp(h.to(next(self.mlp.parameters()).dtype)).float()
        x = self._features(ctx, batch)
        if self.cfg.mlp != "arm_gripper":
            return self.mlp(x).view(-1, self.chunk, self.action_dim).float()
        raw = x.new_empty(x.shape[0], self.chunk, self.action_dim, dtype=torch.float32)
        raw[..., ~self._gripper] = self.arm(x).view(x.shape[0], self.chunk, -1).float()
        raw[..., self._gripper] = self.gripper(x).view(x.shape[0], self.chunk, -1).float()
        return raw

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        target, valid = target_and_mask(batch, self.chunk, self.action_dim)
        raw = self._raw(ctx, batch)
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
        raw = self._raw(ctx, batch)
        out = self._arm(raw)
        if self.cfg.loss == "huber_bce":  # gripper logits -> open / closed in the normalized range
            out[..., self._gripper] = torch.where(raw[..., self._gripper] > 0, 1.0, -1.0)
        return out
