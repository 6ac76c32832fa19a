"""Where evaluation envs live: in this process on pinned threads, or in worker processes (``--workers N``).

Both pools hold ``n`` env *slots* of one task at a time and answer the same four calls (``make``, ``reset``,
``step``, ``expert``) for a list of slots, in slot order. The rollout decides which seed goes to which slot and
when the policy is called, so the episodes, the policy's batches and therefore the results are the same whatever
the pool and the number of workers.

:class:`ProcessEnvPool` puts slot ``i`` in worker ``i % workers``; each worker is a ``spawn``-ed process (its own
simulator and GL context, see the GL-context pitfall of LIBERO next to a Meta-World renderer) that builds its envs
from the picklable :class:`EnvConfig` and the task name. Every answer is awaited with a timeout; a worker that
raises, dies or stops answering ends the evaluation with a one-line error naming the worker, task and seeds, and
all workers are stopped (they ignore Ctrl-C, which the main process handles, and exit when its end of the pipe
closes, so none is left behind).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vlaforge.eval.envs.base import EnvAdapter, EnvConfig
from vlaforge.types import RobotSpec
from vlaforge.utils import PinnedThreads

if TYPE_CHECKING:
    from vlaforge.eval.ray_pool import RayEnvPool

WORKER_TIMEOUT = 600.0  # seconds one call to a worker may take (LIBERO: ~5 s per env build or reset)


@dataclass(frozen=True)
class EnvInfo:
    """What the rollout needs to know of a task's envs (all slots have the same)."""

    robot: RobotSpec
    max_steps: int
    fps: int


def env_step(env: EnvAdapter, action: np.ndarray, render: bool) -> tuple[dict[str, Any], bool, float | None]:
    """One step as the pools return it: (observation, success, score). ``score`` is the env's ``info["score"]``
    where its benchmark grades an episode on a scale besides success (PushT: the maximum goal coverage so far)."""
    obs, success, info = env.step(action, render=render)
    score = (info or {}).get("score")
    return obs, success, None if score is None else float(score)


def expert_episode(env: EnvAdapter, seed: int) -> tuple[bool, int]:
    """One scripted-expert episode without rendering: (success, steps)."""
    env.reset(seed, render=False)
    success, steps = False, 0
    while not success and steps < env.max_steps:
        _, success, _ = env.step(env.expert_action(), render=False)
        steps += 1
    return success, steps


class EnvPool(Protocol):
    n: int  # env slots

    def make(self, task: str) -> EnvInfo: ...  # (re)build every slot's env for ``task``

    def reset(self, slots: list[int], seeds: list[int]) -> list[dict[str, Any]]: ...

    # render[k] False: slot k's observation is not needed (mid-chunk), its cameras are not rendered ({} comes back)
    def step(self, slots: list[int], actions: list[np.ndarray],
             render: list[bool] | None = None) -> list[tuple[dict[str, Any], bool, float | None]]: ...

    def expert(self, slots: list[int], seeds: list[list[int]]) -> list[list[tuple[bool, int]]]: ...

    def close(self) -> None: ...


def make_pool(env_cfg: EnvConfig, n: int, workers: int = 1, sim_threads: int = 2,
              timeout: float = WORKER_TIMEOUT, ray: str = "") -> ThreadEnvPool | ProcessEnvPool | RayEnvPool:
    """``workers == 1``: envs in this process on ``sim_threads`` pinned threads; else ``min(workers, n)`` processes.

    ``ray`` (a cluster address, ``auto`` or ``local``): ``min(workers, n)`` Ray actors on that cluster instead.
    """
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    if ray:
        from vlaforge.eval.ray_pool import RayEnvPool

        return RayEnvPool(env_cfg, n, min(workers, n), ray, timeout)
    if workers == 1:
        return ThreadEnvPool(env_cfg, n, sim_threads)
    return ProcessEnvPool(env_cfg, n, min(workers, n), timeout)


class ThreadEnvPool:
    """The in-process pool: slot ``i`` is created, stepped and closed on pinned thread ``i % threads``."""

    def __init__(self, env_cfg: EnvConfig, n: int, threads: int = 2) -> None:
        self.env_cfg, self.n = env_cfg, n
        self.threads = PinnedThreads(min(threads, n))
        self.envs: list[EnvAdapter] = []

    def _close_envs(self) -> None:
        envs, self.envs = self.envs, []
        if envs:
            self.threads.map(lambda i: envs[i].close(), list(range(len(envs))))

    def make(self, task: str) -> EnvInfo:
        self._close_envs()
        self.envs = self.threads.map(lambda i: self.env_cfg.make(task), list(range(self.n)))
        e = self.envs[0]
        return EnvInfo(e.robot, e.max_steps, e.fps)

    def reset(self, slots: list[int], seeds: list[int]) -> list[dict[str, Any]]:
        return self.threads.map(lambda i, s: self.envs[i].reset(s), slots, seeds)

    def step(self, slots: list[int], actions: list[np.ndarray],
             render: list[bool] | None = None) -> list[tuple[dict[str, Any], bool, float | None]]:
        flags = render if render is not None else [True] * len(slots)
        return self.threads.map(lambda i, a, r: env_step(self.envs[i], a, r), slots, actions, flags)

    def expert(self, slots: list[int], seeds: list[list[int]]) -> list[list[tuple[bool, int]]]:
        return self.threads.map(lambda i, ss: [expert_episode(self.envs[i], s) for s in ss], slots, seeds)

    def close(self) -> None:
        try:
            self._close_envs()
        finally:
            self.threads.close()

    def __enter__(self) -> ThreadEnvPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _where(task: str | None, seeds: list[int]) -> str:
    return f"task {task or '-'}, seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds)) or '-'}"


class WorkerEnvs:
    """A worker's env slots (in a spawned process or a Ray actor): one request in, one ``(ok, payload)`` out.

    A failing request answers ``(False, one line naming the worker, task and seeds)`` instead of raising.
    """

    def __init__(self, env_cfg: EnvConfig, index: int) -> None:
        self.env_cfg, self.index = env_cfg, index
        self.envs: dict[int, EnvAdapter] = {}
        self.seeds: dict[int, int] = {}
        self.task: str | None = None

    def close(self) -> None:
        envs, self.envs = self.envs, {}
        for e in envs.values():
            e.close()

    def handle(self, op: str, slots: list[int], args: Any) -> tuple[bool, Any]:
        try:
            if op == "make":
                self.close()
                self.task = args
                self.envs.update({i: self.env_cfg.make(args) for i in slots})
                e = self.envs[slots[0]]
                out: Any = EnvInfo(e.robot, e.max_steps, e.fps)
            elif op == "reset":
                self.seeds.update(zip(slots, args, strict=True))
                out = [self.envs[i].reset(s) for i, s in zip(slots, args, strict=True)]
            elif op == "step":
                out = [env_step(self.envs[i], a, r) for i, (a, r) in zip(slots, args, strict=True)]
            elif op == "expert":
                out = []
                for i, ss in zip(slots, args, strict=True):
                    out.append([])
                    for s in ss:
                        self.seeds[i] = s
                        out[-1].append(expert_episode(self.envs[i], s))
            else:
                raise ValueError(f"unknown request {op!r}")
            return True, out
        except Exception as e:  # reported as one line by the main process
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            where = _where(self.task, [self.seeds[i] for i in slots if i in self.seeds] if op != "make" else [])
            return False, f"eval worker {self.index} ({where}): {op} failed: {type(e).__name__}: {msg}"


def _worker_main(conn: Any, env_cfg: EnvConfig, index: int) -> None:
    """A worker's loop: one request in, one ``(ok, payload)`` out, until ``close`` or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it stops us)
    worker = WorkerEnvs(env_cfg, index)
    while True:
        try:
            op, slots, args = conn.recv()
        except (EOFError, OSError):  # the main process is gone
            break
        if op == "close":
            break
        conn.send(worker.handle(op, slots, args))
    try:
        worker.close()
    finally:
        conn.close()


class SlotPool:
    """The calls of :class:`EnvPool` for pools whose slot ``i`` lives in remote worker ``i % workers``.

    Subclasses say how a request reaches a worker (:meth:`_submit`) and how its answer is awaited (:meth:`_await`,
    which raises a one-line ``RuntimeError`` naming ``where`` when the worker fails, dies or times out).
    """

    n: int
    workers: int
    task: str | None = None
    seeds: dict[int, int]

    def _submit(self, w: int, op: str, slots: list[int], args: Any) -> Any: ...

    def _await(self, w: int, handle: Any, op: str, where: str) -> Any: ...

    def _call(self, op: str, slots: list[int], args: list[Any] | Any) -> list[Any]:
        """Send ``op`` for ``slots`` to their workers (one message each), gather the answers in slot order."""
        groups: dict[int, list[int]] = {}
        for k, i in enumerate(slots):
            groups.setdefault(i % self.workers, []).append(k)
        handles = {w: self._submit(w, op, [slots[k] for k in ks], args if op == "make" else [args[k] for k in ks])
                   for w, ks in groups.items()}
        out: list[Any] = [None] * len(slots)
        for w, ks in groups.items():
            mine = [slots[k] for k in ks]
            where = _where(self.task, [self.seeds[i] for i in mine if i in self.seeds] if op != "make" else [])
            ok, payload = self._await(w, handles[w], op, where)
            if not ok:
                raise RuntimeError(payload)
            for k, value in zip(ks, [payload] * len(ks) if op == "make" else payload, strict=True):
                out[k] = value
        return out

    def make(self, task: str) -> EnvInfo:
        self.task, self.seeds = task, {}
        return self._call("make", list(range(self.n)), task)[0]

    def reset(self, slots: list[int], seeds: list[int]) -> list[dict[str, Any]]:
        self.seeds.update(zip(slots, seeds, strict=True))
        return self._call("reset", slots, seeds)

    def step(self, slots: list[int], actions: list[np.ndarray],
             render: list[bool] | None = None) -> list[tuple[dict[str, Any], bool, float | None]]:
        flags = render if render is not None else [True] * len(slots)
        return self._call("step", slots, list(zip(actions, flags, strict=True)))

    def expert(self, slots: list[int], seeds: list[list[int]]) -> list[list[tuple[bool, int]]]:
        self.seeds.update({i: ss[0] for i, ss in zip(slots, seeds, strict=True) if ss})
        return self._call("expert", slots, seeds)


class ProcessEnvPool(SlotPool):
    """``workers`` spawned processes; slot ``i`` lives in worker ``i % workers``."""

    def __init__(self, env_cfg: EnvConfig, n: int, workers: int, timeout: float = WORKER_TIMEOUT) -> None:
        self.n, self.workers, self.timeout = n, workers, timeout
        self.task: str | None = None
        self.seeds: dict[int, int] = {}
        ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        try:
            for w in range(workers):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker_main, args=(child, env_cfg, w), name=f"vlaforge-eval-{w}",
                                daemon=True)
                p.start()
                child.close()
                self.procs.append(p)
                self.conns.append(parent)
        except BaseException:
            self.close(graceful=False)
            raise

    def _submit(self, w: int, op: str, slots: list[int], args: Any) -> None:
        self.conns[w].send((op, slots, args))

    def _await(self, w: int, handle: None, op: str, where: str) -> tuple[bool, Any]:
        conn, proc = self.conns[w], self.procs[w]
        deadline = time.monotonic() + self.timeout
        while not conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
            if not proc.is_alive():
                raise RuntimeError(f"eval worker {w} died (exit code {proc.exitcode}) during {op} ({where})")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"eval worker {w} did not answer {op} within {self.timeout:.0f} s ({where}); "
                                   "raise --worker_timeout for slow simulators")
        try:
            return conn.recv()
        except (EOFError, OSError) as e:
            proc.join(1.0)
            raise RuntimeError(f"eval worker {w} died (exit code {proc.exitcode}) during {op} ({where})") from e

    def close(self, graceful: bool = True) -> None:
        """Stop every worker: ask politely (their envs close), then terminate and finally kill what is left."""
        if graceful:
            for conn, p in zip(self.conns, self.procs, strict=True):
                if p.is_alive():
                    with contextlib.suppress(BrokenPipeError, OSError):
                        conn.send(("close", [], None))
            deadline = time.monotonic() + 10.0
            for p in self.procs:
                p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []

    def __enter__(self) -> ProcessEnvPool:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(graceful=exc_type is None)
