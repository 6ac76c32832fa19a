"""The one interface through which a policy acts: :class:`InferencePolicy` (local or remote).

``LocalPolicy.load(ckpt).infer(raw_obs)`` needs nothing but the checkpoint directory: the inputs pipeline
(feature checks, normalization, images, prompt) and the outputs pipeline (unnormalization) come from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vlaforge.chunking import ActionChunker
from vlaforge.policy import VLAPolicy
from vlaforge.types import RobotSpec

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
        self.options = options
        self._generator = torch.Generator(device=policy.device)
        if seed is not None:
            self._generator.manual_seed(seed)

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "cpu", unnorm_key: str | None = None,
             **options: Any) -> LocalPolicy:
        """``unnorm_key``: for a mixture checkpoint, whose statistics and image sizes to use (default: its own)."""
        return cls(VLAPolicy.from_pretrained(checkpoint, map_location=device, unnorm_key=unnorm_key or None),
                   **options)

    @torch.no_grad()
    def infer_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        batch = self.policy.prepare(observations)
        return self.policy.postprocess(self.policy.sample(batch, generator=self._generator, **self.options))

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"actions": self.infer_batch([obs])[0]}

    def metadata(self) -> dict[str, Any]:
        return {"robot": self.robot.to_json(), "chunk": self.chunk, "exec_steps": self.exec_steps,
                "head": self.policy.cfg.head.type}
