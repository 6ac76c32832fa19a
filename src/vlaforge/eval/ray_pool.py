"""Evaluation envs on a Ray cluster (``vlaforge eval ... --ray HOST:6379 --workers 32``).

:class:`RayEnvPool` is a :class:`~vlaforge.eval.workers.SlotPool` whose workers are Ray actors (``num_cpus=1``
each, spread over the cluster's nodes): actor ``w`` owns slots ``w, w + workers, ...`` and its own simulators and
GL context. The policy stays in the calling process, where it is batched over all slots as with the local pools, so
the schedule and the results are the same as a single-process run with the same seeds.

Every node needs the same vlaforge and simulators installed (the actors import :class:`EnvConfig`'s adapters).
An actor that raises, dies or does not answer within ``timeout`` ends the evaluation with one line naming the actor,
task and seeds; the actors are killed when the pool closes (and die with this process if it is killed: Ray ties
non-detached actors to their owner).
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import numpy as np

from vlaforge.eval.envs.base import EnvConfig
from vlaforge.eval.workers import WORKER_TIMEOUT, SlotPool, WorkerEnvs

LOCAL = ("local", "auto")


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _writable(answer: Any) -> Any:
    """Ray hands numpy arrays back read-only (views of its object store); give the rollout its own copies."""
    if isinstance(answer, np.ndarray):
        return np.array(answer)
    if isinstance(answer, dict):
        return {k: _writable(v) for k, v in answer.items()}
    if isinstance(answer, list | tuple):
        return type(answer)(_writable(v) for v in answer)
    return answer


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a ``HOST:PORT`` nobody answers at (``ray.init`` would retry it for minutes)."""
    host, sep, port = address.rpartition(":")
    if address in LOCAL or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"ray: cannot reach the Ray cluster at {address!r} ({_one_line(e)}); start its head "
                              "with `ray start --head --port PORT` (or pass --ray local)") from e


class RayEnvPool(SlotPool):
    """``workers`` Ray actors on the cluster at ``address`` (``local``: start one here; ``auto``: join the local one).

    Joins the Ray session already started in this process when there is one (and leaves it running at close).
    """

    def __init__(self, env_cfg: EnvConfig, n: int, workers: int, address: str = "local",
                 timeout: float = WORKER_TIMEOUT) -> None:
        try:
            import ray
        except ImportError as e:
            raise ImportError("--ray needs Ray: pip install 'vlaforge[ray]'") from e
        self.ray, self.n, self.workers, self.timeout = ray, n, workers, timeout
        self.task: str | None = None
        self.seeds: dict[int, int] = {}
        self.actors: list[Any] = []
        self.owns_session = not ray.is_initialized()
        if self.owns_session:
            _check_reachable(address)
            try:
                ray.init(address=None if address == "local" else address, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConnectionError(f"ray: cannot reach the Ray cluster at {address!r}: {_one_line(e)}") from e
        try:
            cpus = ray.cluster_resources().get("CPU", 0)
            if cpus < workers:
                raise ValueError(f"workers: the Ray cluster has {cpus:g} CPUs, expected >= {workers} "
                                 f"(one per env actor); lower --workers or add nodes with `ray start --address`")
            actor = ray.remote(num_cpus=1, max_restarts=0)(WorkerEnvs)
            self.actors = [actor.options(scheduling_strategy="SPREAD").remote(env_cfg, w) for w in range(workers)]
        except BaseException:
            self.close(graceful=False)
            raise

    def _submit(self, w: int, op: str, slots: list[int], args: Any) -> Any:
        return self.actors[w].handle.remote(op, slots, args)

    def _await(self, w: int, handle: Any, op: str, where: str) -> tuple[bool, Any]:
        ray = self.ray
        deadline = time.monotonic() + self.timeout
        ready: list[Any] = []
        while not ready:  # short waits, so that Ctrl-C is seen
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"eval worker {w} (Ray actor) did not answer {op} within {self.timeout:.0f} s "
                                   f"({where}); raise --worker_timeout for slow simulators")
            ready, _ = ray.wait([handle], timeout=min(1.0, left))
        try:
            ok, payload = ray.get(handle)
        except ray.exceptions.RayError as e:
            raise RuntimeError(f"eval worker {w} (Ray actor) died during {op} ({where}): {_one_line(e)}") from e
        return ok, _writable(payload) if ok else payload

    def close(self, graceful: bool = True) -> None:
        """Let the actors close their envs (``graceful``, at most 10 s), then kill them all."""
        ray, actors, self.actors = self.ray, self.actors, []
        try:
            if graceful and actors:
                with contextlib.suppress(ray.exceptions.RayError):
                    refs = [a.close.remote() for a in actors]
                    ray.wait(refs, num_returns=len(refs), timeout=10.0)
            for a in actors:
                with contextlib.suppress(ray.exceptions.RayError, ValueError):
                    ray.kill(a, no_restart=True)
        finally:
            if self.owns_session and ray.is_initialized():
                self.owns_session = False
                ray.shutdown()

    def __enter__(self) -> RayEnvPool:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(graceful=exc_type is None)
