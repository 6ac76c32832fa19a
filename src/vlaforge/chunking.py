"""The chunk executor shared by local evaluation and the robot-side client (numpy only, no torch).

:class:`ActionChunker` turns a policy's action chunks (H, Da) into one action per control step, in one of two ways:

* **receding horizon** (default): execute the first ``exec_steps`` actions of a chunk, then ask for a new one;
* **temporal ensembling** (ACT, Zhao et al. 2023, Algorithm 2): ask for a chunk at *every* step; the chunk
  predicted at step ``s`` holds actions for steps ``s, s + 1, ...``; the action executed at step ``t`` is the
  weighted mean of all predictions made for ``t`` with ``w_i = exp(-temperature * i)``, where ``i = 0`` is the
  OLDEST prediction (ACT's ``imitate_episodes.py`` and LeRobot's ``ACTTemporalEnsembler`` use this convention,
  with ``temperature = 0.01``; a larger temperature trusts the oldest predictions more, a negative one the
  newest). ``ensemble = K`` keeps the first ``K`` actions of every chunk, so at most the ``K`` most recent
  predictions of a step are averaged (``K = chunk`` is ACT's setting; ``K = 1`` executes each chunk's first
  action only).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


class ActionChunker:
    """One action per control step from a stream of action chunks (receding horizon or temporal ensemble).

    Use: ``if chunker.needs_chunk: chunker.push(policy_chunk)``; then ``action = chunker.pop()``.
    """

    def __init__(self, exec_steps: int, ensemble: int = 0, temperature: float = 0.01) -> None:
        if exec_steps < 1:
            raise ValueError(f"exec_steps: expected >= 1, got {exec_steps}")
        if ensemble < 0:
            raise ValueError(f"ensemble: expected 0 (off) or the number of actions per chunk to average, got "
                             f"{ensemble}")
        if not math.isfinite(temperature):
            raise ValueError(f"ensemble temperature: expected a finite number, got {temperature}")
        self.exec_steps, self.ensemble, self.temperature = exec_steps, ensemble, temperature
        self._queue: deque[np.ndarray] = deque()  # receding horizon: the actions still to execute
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # ensemble: (step predicted at, chunk[:K]), oldest first
        self.t = 0  # control steps executed since reset

    def reset(self) -> None:
        self._queue.clear()
        self._chunks.clear()
        self.t = 0

    @property
    def needs_chunk(self) -> bool:
        """Whether the next :meth:`pop` needs a new chunk first (every step when ensembling)."""
        if self.ensemble:
            return not self._chunks or self._chunks[-1][0] != self.t
        return not self._queue

    def push(self, chunk: np.ndarray) -> None:
        """Add the chunk the policy predicted from the observation of the current step."""
        chunk = np.asarray(chunk)
        if self.ensemble:
            if len(chunk) < self.ensemble:
                raise ValueError(f"chunk of {len(chunk)} actions is shorter than ensemble={self.ensemble}")
            if self._chunks and self._chunks[-1][0] == self.t:
                raise ValueError(f"a chunk was already pushed at step {self.t}")
            self._chunks.append((self.t, chunk[: self.ensemble]))
            return
        if len(chunk) < self.exec_steps:
            raise ValueError(f"chunk of {len(chunk)} actions is shorter than exec_steps={self.exec_steps}")
        self._queue.clear()
        self._queue.extend(chunk[: self.exec_steps])

    def weights(self, n: int) -> np.ndarray:
        """Normalized ensemble weights of ``n`` predictions, oldest first."""
        w = np.exp(-self.temperature * np.arange(n, dtype=np.float64))
        return w / w.sum()

    def pop(self) -> np.ndarray:
        """The action for the current step; advances the step."""
        if not self.ensemble:
            self.t += 1
            return self._queue.popleft()
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= self.t:
            self._chunks.popleft()  # predictions that end before this step
        if not self._chunks:
            raise IndexError("pop from an empty ActionChunker: push a chunk first")
        preds = np.stack([c[self.t - s] for s, c in self._chunks])  # (n, Da), oldest first
        self.t += 1
        w = self.weights(len(preds)).reshape(-1, *([1] * (preds.ndim - 1)))
        return (w * preds).sum(0).astype(preds.dtype, copy=False)
