"""The one interface through which a policy acts: :class:`InferencePolicy` (local or remote).

``LocalPolicy.load(ckpt).infer(raw_obs)`` needs nothing but the checkpoint directory: the inputs pipeline
(feature checks, normalization, images, prompt) and the outputs pipeline (unnormalization) come from it.

A policy with a history window (``policy.history`` = T > 1) reads T frames per observation. Calls stay
stateless; the per-episode window is kept on the caller's side by :class:`HistoryWindow` (``LocalPolicy.step``,
the evaluator): it stacks the last T frames, repeats the first frame before the episode had T of them and flags
those in ``observation_is_pad``, so that a head can leave them out (RoboVLMs' LSTM, ``window_pads="skip"``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vlaforge.chunking import ActionChunker
from vlaforge.policy import VLAPolicy
from vlaforge.types import OBS_IMAGES, OBS_IS_PAD, OBS_STATE, RobotSpec

__all__ = ["ActionChunker", "InferencePolicy", "LocalPolicy"]  # ActionChunker: vlaforge.chunking (torch-free)


class InferencePolicy(Protocol):
    """What evaluators and servers need of a policy (openpi's ``BasePolicy`` shape, batched)."""

    robot: RobotSpec
    chunk: int
    exec_steps: int  # the policy's recommended receding horizon

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]: ...  # {"actions": (H, Da)} robot units

    def infer_batch(self, observations: list[dict[str, Any]]) -> np.ndarray: ...  # (B, H, Da)


class LocalPolicy:
    """An in-process :class:`InferencePolicy` over a :class:`VLAPolicy`."""

    def __init__(self, policy: VLAPolicy, seed: int | None = 0, **options: Any) -> None:
        if policy.robot is None:
            raise ValueError("LocalPolicy needs a trained/loaded policy (robot spec and pipelines)")
        self.policy = policy.eval()
        self.robot: RobotSpec = policy.robot
        self.chunk = policy.cfg.chunk
        self.exec_steps = policy.cfg.exec_steps
        self.history = policy.cfg.history
        self.options = options
        self._window = HistoryWindow(self.history)
        self._generator = torch.Generator(device=policy.device)
        if seed is not None:
            self._generator.manual_seed(seed)

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "cpu", unnorm_key: str | None = None,
             sampling: Sequence[str] = (), **options: Any) -> LocalPolicy:
        """``unnorm_key``: for a mixture checkpoint, whose statistics and image sizes to use (default: its own);
        ``sampling``: ``KEY=VALUE`` head sampling fields for this load (:meth:`VLAPolicy.from_pretrained`)."""
        return cls(VLAPolicy.from_pretrained(checkpoint, map_location=device, unnorm_key=unnorm_key or None,
                                             sampling=sampling), **options)

    @torch.no_grad()
    def infer_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        batch = self.policy.prepare(observations)
        return self.policy.postprocess(self.policy.sample(batch, generator=self._generator, **self.options))

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"actions": self.infer_batch([obs])[0]}

    def step(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        """One episode's current single-frame observation -> its chunk: the frame joins this policy's
        :class:`HistoryWindow` (one episode at a time; :meth:`reset` starts the next)."""
        return self.infer(self._window.push(obs))

    def reset(self) -> None:
        """Forget the episode's frames (the sampling stream continues)."""
        self._window.reset()

    def metadata(self) -> dict[str, Any]:
        return {"robot": self.robot.to_json(), "chunk": self.chunk, "exec_steps": self.exec_steps,
                "head": self.policy.cfg.head.type}


class HistoryWindow:
    """The last ``history`` single-frame observations of one episode as one window observation.

    Images and state become (T, ...) arrays, oldest first; the instruction (and anything else) is the newest
    frame's. Until the episode has T frames the first one is repeated in front (as training windows are padded)
    and ``observation_is_pad`` (T,) marks those copies. ``history`` = 1 passes observations through.
    """

    def __init__(self, history: int) -> None:
        if history < 1:
            raise ValueError(f"history: expected >= 1, got {history}")
        self.history = history
        self._frames: deque[dict[str, Any]] = deque(maxlen=history)

    def reset(self) -> None:
        self._frames.clear()

    def push(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Add the current observation; return the window observation the policy reads."""
        if self.history == 1:
            return obs
        self._frames.append(obs)
        frames = list(self._frames)
        pads = self.history - len(frames)
        frames = [frames[0]] * pads + frames
        out = dict(obs)
        for key in obs:
            if key.startswith(OBS_IMAGES + ".") or key == OBS_STATE:
                out[key] = np.stack([np.asarray(f[key]) for f in frames])
        out[OBS_IS_PAD] = np.arange(self.history) < pads
        return out
