"""The model I/O contract: feature keys, feature specs and the backbone -> head :class:`Context`.

Keys follow LeRobot's naming so that a LeRobot dataset's columns are used as they are:

* ``observation.images.<camera>``: uint8 (H, W, 3) on disk and from readers; float (3, H, W) in [0, 1]
  after the image processor step; a history window adds a leading T axis.
* ``observation.state``: (Ds,) proprio, robot units on disk, normalized after the inputs pipeline.
* ``action``: one step (Da,) on disk; a chunk (H, Da) from readers, with ``action_is_pad`` (H,) set where
  the chunk runs past the end of its episode.
* ``task``: the instruction string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # torch stays out of data-only imports
    from torch import Tensor
    from transformers import Cache

OBS_PREFIX = "observation."
OBS_IMAGES = "observation.images"
OBS_STATE = "observation.state"
# Simulator state a policy never sees (object and goal positions, LeRobot's name); only an auxiliary training target
OBS_ENV_STATE = "observation.environment_state"
ACTION = "action"
TASK = "task"
DATASET = "dataset_name"  # which dataset of a mixture a training item came from
PAD_SUFFIX = "_is_pad"
ACTION_IS_PAD = ACTION + PAD_SUFFIX
OBS_IS_PAD = "observation" + PAD_SUFFIX
STITCHED_CAMERA = "stitched"  # the one image made of all cameras when a backbone uses views="stitch"
# Model-side keys produced by the text step.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
REASONING = "reasoning"  # optional per-frame sub-step reasoning text (DexVLA)
REASONING_IDS = "reasoning_ids"
REASONING_MASK = "reasoning_mask"
# Bookkeeping columns every LeRobot frame carries.
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def image_key(camera: str) -> str:
    """``"front"`` -> ``"observation.images.front"``."""
    return f"{OBS_IMAGES}.{camera}"


def camera_of(key: str) -> str:
    """``"observation.images.front"`` -> ``"front"``."""
    if not key.startswith(OBS_IMAGES + "."):
        raise ValueError(f"{key!r} is not an image key (expected '{OBS_IMAGES}.<camera>')")
    return key[len(OBS_IMAGES) + 1 :]


@dataclass(frozen=True)
class FeatureSpec:
    """Shape, dtype and kind of one feature, as in LeRobot's ``info.json`` ``features``."""

    dtype: str  # numpy dtype name, or "video" / "image" / "string"
    shape: tuple[int, ...]
    names: Any = None

    @property
    def is_visual(self) -> bool:
        return self.dtype in ("video", "image")

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "names": self.names}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(dtype=d["dtype"], shape=tuple(int(s) for s in d["shape"]), names=d.get("names"))


@dataclass(frozen=True)
class RobotSpec:
    """What a policy consumes and produces, in robot terms; checked whenever data meets a model."""

    cameras: dict[str, tuple[int, int]]  # camera name -> (height, width) of the raw image
    state_dim: int
    action_dim: int
    fps: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"cameras": {k: list(v) for k, v in self.cameras.items()}, "state_dim": self.state_dim,
                "action_dim": self.action_dim, "fps": self.fps}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RobotSpec:
        return cls(cameras={k: (int(v[0]), int(v[1])) for k, v in d["cameras"].items()},
                   state_dim=int(d["state_dim"]), action_dim=int(d["action_dim"]), fps=int(d.get("fps", 0)))

    def differences(self, other: RobotSpec, *, this: str = "checkpoint", that: str = "data",
                    stateless_ok: bool = False) -> list[str]:
        """Human-readable differences, one per mismatching key; empty when compatible.

        Image sizes may differ (the image step resizes); camera names, state and action dims may not — except,
        with ``stateless_ok``, that a policy reading no state (``state_dim`` 0, e.g. an imported OpenVLA) ignores
        the other side's.
        """
        out = []
        for cam in sorted(set(self.cameras) | set(other.cameras)):
            if cam not in other.cameras:
                out.append(f"camera '{cam}': in {this}, missing from {that} (has {sorted(other.cameras)})")
            elif cam not in self.cameras:
                out.append(f"camera '{cam}': in {that}, unknown to {this} (expects {sorted(self.cameras)})")
        if self.state_dim != other.state_dim and not (stateless_ok and self.state_dim == 0):
            out.append(f"{OBS_STATE} dim: {this} {self.state_dim}, {that} {other.state_dim}")
        if self.action_dim != other.action_dim:
            out.append(f"{ACTION} dim: {this} {self.action_dim}, {that} {other.action_dim}")
        return out


class FeatureMismatchError(ValueError):
    """Data and model disagree on cameras or dims; the message lists every difference."""

    def __init__(self, diffs: list[str], context: str = "") -> None:
        self.diffs = diffs
        lines = "\n".join(f"  - {d}" for d in diffs)
        super().__init__(f"{context or 'feature mismatch'}:\n{lines}")


@dataclass(frozen=True)
class LMSpec:
    """The decoder's shape, for heads that build on it (pi0's action expert attends to its KV cache)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0  # RoPE base of the decoder (an expert attending to its keys rotates its own alike)


@dataclass
class Context:
    """What a backbone hands a head (DESIGN §3)."""

    hidden: Tensor  # (B, N, D) last hidden states of the prefix
    mask: Tensor  # (B, N) 1 = real token
    kv_cache: Cache | None = None  # prefix cache; heads extend it and must crop it back to prefix_len
    pooled: Tensor | None = None  # (B, D) readout vector
    state: Tensor | None = None  # (B, Ds) normalized proprio, for heads that condition on it
    history: Tensor | None = None  # (B, T, D) per-frame readouts (history="per_frame"), oldest first
    last_index: Tensor | None = None  # (B,) position of each row's last real prefix token (what predicts next)
    prefix_len: int = 0
    lm: SequenceModel | None = None  # the backbone, for in-sequence heads
    extras: dict[str, Any] = field(default_factory=dict)


def as_numpy(x: Any) -> np.ndarray:
    """Tensor / list / array -> numpy (no copy when already numpy)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class SequenceModel(Protocol):
    """What an in-sequence head may ask of the backbone (found in ``Context.lm``)."""

    hidden_size: int

    def embed_tokens(self, ids: Tensor) -> Tensor: ...  # (B, K) -> (B, K, D)

    def extend(self, ctx: Context, embeds: Tensor, mask: Tensor) -> Tensor: ...  # (B, K, D) -> (B, K, D)

    def token_logits(self, hidden: Tensor, ids: Tensor | None = None) -> Tensor: ...  # LM head (rows ``ids``)

    def action_token_ids(self, n: int) -> Tensor: ...  # the n vocabulary ids used for action tokens

    def reset(self, ctx: Context) -> None: ...  # crop the KV cache back to the prefix

    @property
    def eos_token_id(self) -> int | None: ...  # the tokenizer's end-of-sequence id

    def token_id(self, token: str) -> int: ...  # a vocabulary token's id (a clear error if it is unknown)
