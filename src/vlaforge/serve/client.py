"""Robot-side client of ``vlaforge serve``: numpy + msgpack + websockets only (no torch).

* :class:`RemotePolicy` implements :class:`vlaforge.inference.InferencePolicy` over the websocket, so
  ``vlaforge eval --remote ws://HOST:PORT`` runs the same rollout code as local evaluation.
* :class:`ActionChunkBroker`: one action per control step through the same chunk executor as local evaluation
  (:class:`vlaforge.chunking.ActionChunker`): receding horizon like openpi's broker, or ACT's temporal ensembling
  (inference blocks the control loop).
* :class:`AsyncActionBroker`: asynchronous inference (SmolVLA / LeRobot async style): when the queue of pending
  actions falls to ``threshold * chunk``, the next chunk is requested in the background from the latest
  observation while the robot keeps executing the current one.

Stale-action alignment (async): a chunk computed from the observation of control step ``t0`` holds the actions
for steps ``t0, t0 + 1, ...``. When it arrives at step ``t`` (``t - t0`` actions were executed meanwhile,
inference latency in control steps), its first ``t - t0`` actions are stale and dropped; the rest are aligned
by step with the queue: for a step present in both, ``aggregate="latest"`` keeps the new action (it saw a newer
observation) and ``"average"`` averages the two; steps beyond the old queue are appended. If the queue runs dry
before the next chunk arrives, ``act`` waits for it (counted in ``stats["stalls"]``).

Reproducible sampling: with ``seed`` set (the default, 0, as :class:`~vlaforge.inference.LocalPolicy`), the
first request carries ``seed`` and each later one the ``rng_state`` the server returned, so the server samples
with one generator stream per client, exactly the stream a ``LocalPolicy(seed=seed)`` would use for the same
sequence of calls (each such request is one policy call, never merged with other clients').
``seed=None`` sends plain openpi frames, which the server may batch with other clients' requests.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
from websockets.exceptions import InvalidHandshake
from websockets.sync.client import connect

from vlaforge.chunking import ActionChunker
from vlaforge.serve import protocol as P
from vlaforge.types import RobotSpec


class ServerError(RuntimeError):
    """The server refused or failed a request; the message is the server's (fields, expected, got)."""


class RemotePolicy:
    """An :class:`~vlaforge.inference.InferencePolicy` served by ``vlaforge serve`` at ``url`` (ws://HOST:PORT)."""

    def __init__(self, url: str, api_key: str | None = None, seed: int | None = 0, timeout: float = 120.0,
                 open_timeout: float = 30.0, max_size: int = 1 << 28) -> None:
        if not url.startswith(("ws://", "wss://")):
            url = f"ws://{url}"
        headers = {"x-api-key": api_key} if api_key else None
        self.url, self.timeout = url, timeout
        try:
            self._ws = connect(url, additional_headers=headers, compression=None, max_size=max_size,
                               open_timeout=open_timeout)
        except (OSError, InvalidHandshake) as e:  # refused, unreachable, 401 (API key) ...
            raise ServerError(f"cannot connect to {url}: {e}") from e
        first = self._ws.recv(timeout)
        if isinstance(first, str):
            self._ws.close()
            raise ServerError(first)
        self.metadata: dict[str, Any] = P.unpackb(first)
        if self.metadata.get("protocol") != P.PROTOCOL:
            self._ws.close()
            raise ServerError(f"{url} is not a vlaforge server (metadata protocol {self.metadata.get('protocol')!r})")
        self.robot = RobotSpec.from_json(self.metadata["robot"])
        self.chunk = int(self.metadata["chunk"])
        self.exec_steps = int(self.metadata["exec_steps"])
        self.history = int(self.metadata.get("history", 1))  # frames per observation (HistoryWindow)
        self._lock = threading.Lock()
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Restart the sampling stream at ``seed`` (None: unseeded requests, batched with others)."""
        self._seed, self._rng_state = seed, None

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._seed is not None:
                message = {**message, **({P.RNG_STATE_KEY: self._rng_state} if self._rng_state is not None
                                         else {P.SEED_KEY: self._seed})}
            self._ws.send(P.packb(message))
            try:
                response = self._ws.recv(self.timeout)
            except TimeoutError:  # a late reply would answer the next request: give up this connection
                self._ws.close()
                raise ServerError(f"no reply from {self.url} within {self.timeout:g} s; connection closed") from None
            if isinstance(response, str):
                raise ServerError(response)
            out = P.unpackb(response)
            if self._seed is not None:
                state = out.pop(P.RNG_STATE_KEY, None)
                if not isinstance(state, bytes):
                    raise ServerError(f"{self.url} did not return an rng_state for a seeded request")
                self._rng_state = state
        return out

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        """One raw observation -> ``{"actions": (H, Da)}`` in robot units (plus ``server_timing``)."""
        return self._call(dict(obs))

    def infer_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        """Raw observations -> (B, H, Da), computed by the server as one policy call."""
        return self._call({P.BATCH_KEY: list(observations)})["actions"]

    def reset(self) -> None:
        """Nothing to reset per episode (the sampling stream continues, as a LocalPolicy's does)."""

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _ChunkPolicy(Protocol):
    chunk: int
    exec_steps: int

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]: ...


class ActionChunkBroker:
    """One action per control step over any policy, through :class:`~vlaforge.chunking.ActionChunker`.

    Receding horizon (execute ``exec_steps`` actions of each chunk, then re-query) or, with ``ensemble=K``, ACT's
    temporal ensembling (query every step, average the overlapping predictions; ``temperature`` as there).
    """

    def __init__(self, policy: _ChunkPolicy, exec_steps: int | None = None, ensemble: int = 0,
                 temperature: float = 0.01) -> None:
        self.policy = policy
        self.exec_steps = exec_steps or policy.exec_steps
        if not 1 <= self.exec_steps <= policy.chunk:
            raise ValueError(f"exec_steps: expected 1..{policy.chunk} (the chunk), got {self.exec_steps}")
        if ensemble > policy.chunk:
            raise ValueError(f"ensemble: expected 0..{policy.chunk} (the chunk), got {ensemble}")
        self.chunker = ActionChunker(self.exec_steps, ensemble=ensemble, temperature=temperature)
        self.requests = 0

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """The action (Da,) for this control step."""
        if self.chunker.needs_chunk:
            self.chunker.push(self.policy.infer(obs)["actions"])
            self.requests += 1
        return self.chunker.pop()

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        """openpi's broker shape: ``{"actions": (Da,)}``."""
        return {"actions": self.act(obs)}

    def reset(self) -> None:
        self.chunker.reset()


class AsyncActionBroker:
    """Asynchronous inference: request the next chunk in the background while the current one executes."""

    def __init__(self, policy: _ChunkPolicy, threshold: float = 0.5, aggregate: str = "latest",
                 timeout: float = 120.0) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a fraction of the chunk in [0, 1], got {threshold}")
        if aggregate not in ("latest", "average"):
            raise ValueError(f"aggregate: expected 'latest' or 'average', got {aggregate!r}")
        self.policy, self.aggregate, self.timeout = policy, aggregate, timeout
        self.threshold = round(threshold * policy.chunk)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlaforge-async-infer")
        self.reset()

    def reset(self) -> None:
        self.t = 0  # control steps executed
        self._queue: deque[tuple[int, np.ndarray]] = deque()  # (step, action), consecutive steps from self.t
        self._inflight: tuple[int, Future] | None = None
        self.stats = {"requests": 0, "stalls": 0, "stale_dropped": 0}

    def _request(self, obs: dict[str, Any], t0: int) -> None:
        self._inflight = (t0, self._pool.submit(self.policy.infer, dict(obs)))
        self.stats["requests"] += 1

    def _merge(self, block: bool) -> None:
        if self._inflight is None:
            return
        t0, fut = self._inflight
        if not block and not fut.done():
            return
        self._inflight = None
        chunk = np.asarray(fut.result(self.timeout)["actions"])
        stale = max(0, self.t - t0)
        self.stats["stale_dropped"] += min(stale, len(chunk))
        old = dict(self._queue)
        merged = []
        for j in range(stale, len(chunk)):
            step, new = t0 + j, chunk[j]
            if step in old and self.aggregate == "average":
                new = (old[step] + new) / 2
            merged.append((step, new))
        self._queue = deque(merged if merged else self._queue)

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """The action (Da,) for this control step; ``obs`` is the observation at this step."""
        self._merge(block=False)
        while not self._queue:  # nothing to execute: wait for the chunk in flight (or ask for one)
            if self.t > 0:
                self.stats["stalls"] += 1
            if self._inflight is None:
                self._request(obs, self.t)
            self._merge(block=True)
        step, action = self._queue.popleft()
        assert step == self.t, (step, self.t)
        if len(self._queue) <= self.threshold and self._inflight is None:
            self._request(obs, self.t)
        self.t += 1
        return action

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"actions": self.act(obs)}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
