"""Closed-loop evaluation: receding-horizon chunk execution over many envs in lockstep, videos, success tables.

Several copies of a task run side by side; whenever some of them have run out of actions, their observations
are sent to the policy as one batch (a tiny VLA costs about the same for 1 or 10 observations on a CPU).
Evaluation seeds start at :data:`EVAL_SEED_START`, far from the seeds demos are collected with.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.chunking import ActionChunker
from vlaforge.data.video import write_video
from vlaforge.eval.envs.base import EnvConfig
from vlaforge.eval.workers import WORKER_TIMEOUT, EnvInfo, EnvPool, make_pool
from vlaforge.inference import HistoryWindow, InferencePolicy
from vlaforge.types import OBS_IMAGES, FeatureMismatchError
from vlaforge.utils import progress_bar

EVAL_SEED_START = 100_000


@dataclass
class EpisodeResult:
    task: str
    seed: int
    success: bool
    steps: int
    score: float | None = None  # the env's episode score where its benchmark has one (PushT: max coverage)


def _frame(obs: dict[str, Any], scale: int = 2) -> np.ndarray:
    views = [v for k, v in sorted(obs.items()) if k.startswith(OBS_IMAGES + ".")]
    img = np.concatenate(views, axis=1)
    return img.repeat(scale, 0).repeat(scale, 1) if scale > 1 else img


def _bordered(frames: list[np.ndarray], success: bool, hold: int = 8) -> list[np.ndarray]:
    """Append a few copies of the last frame with a green (success) or red (failure) border."""
    last = frames[-1].copy()
    color = np.array([40, 200, 60] if success else [220, 40, 40], dtype=np.uint8)
    last[:4], last[-4:], last[:, :4], last[:, -4:] = color, color, color, color
    return frames + [last] * hold


def evaluate(policy: InferencePolicy, env_cfg: EnvConfig, tasks: list[str], episodes: int, *,
             seed_start: int = EVAL_SEED_START, exec_steps: int | None = None, parallel_envs: int = 10,
             sim_threads: int = 2, workers: int = 1, worker_timeout: float = WORKER_TIMEOUT,
             video_dir: Path | None = None, videos_per_task: int = 1, show_progress: bool = True,
             pool: EnvPool | None = None, ensemble: int = 0, ensemble_temp: float = 0.01) -> list[EpisodeResult]:
    """Run ``episodes`` episodes of each task; return one result per episode (tasks in order, then seeds).

    ``parallel_envs`` env copies run side by side: in this process on ``sim_threads`` pinned threads, or spread over
    ``workers`` processes (or the slots of ``pool``, which the caller then owns). The schedule (the seed of each
    slot, the policy's batches) does not depend on where the envs live, so the results are the same for any
    ``workers``. ``ensemble=K`` (1..chunk): ACT's temporal ensembling instead of the receding horizon (the policy is
    queried every step; see :class:`~vlaforge.chunking.ActionChunker`).
    """
    k = exec_steps or policy.exec_steps
    if not 1 <= k <= policy.chunk:
        raise ValueError(f"exec_steps: expected 1..{policy.chunk} (the policy's chunk), got {k}")
    if not 0 <= ensemble <= policy.chunk:
        raise ValueError(f"ensemble: expected 0 (off) .. {policy.chunk} (the policy's chunk), got {ensemble}")
    k = functools.partial(ActionChunker, k, ensemble=ensemble, temperature=ensemble_temp)  # the chunk executor
    results: list[EpisodeResult] = []
    with progress_bar(show_progress) as bar, _pool(pool, env_cfg, min(parallel_envs, episodes), workers,
                                                   sim_threads, worker_timeout) as envs:
        job = bar.add_task("eval", total=episodes * len(tasks))
        for task in tasks:
            bar.update(job, description=f"eval {task}")
            info = envs.make(task)
            diffs = policy.robot.differences(info.robot, this="checkpoint", that="environment", stateless_ok=True)
            if diffs:
                raise FeatureMismatchError(diffs, f"checkpoint does not match environment {env_cfg.type}/{task}")
            runner = _TaskRunner(policy, envs, info, task, episodes, seed_start, k, video_dir, videos_per_task)
            results += runner.run(lambda: bar.advance(job))
    return results


def _pool(pool: EnvPool | None, env_cfg: EnvConfig, n: int, workers: int, sim_threads: int,
          timeout: float) -> contextlib.AbstractContextManager[EnvPool]:
    """The caller's pool (left open) or a new one (closed at the end)."""
    return contextlib.nullcontext(pool) if pool is not None else make_pool(env_cfg, n, workers, sim_threads, timeout)


class _TaskRunner:
    """Episodes of one task on the pool's ``n`` env slots in lockstep."""

    def __init__(self, policy: InferencePolicy, pool: EnvPool, info: EnvInfo, task: str, episodes: int,
                 seed_start: int, make_chunker: Any, video_dir: Path | None, videos: int) -> None:
        self.policy, self.pool, self.info, self.task = policy, pool, info, task
        self.queue = list(range(seed_start, seed_start + episodes))
        self.seed_start, self.make_chunker, self.video_dir, self.videos = seed_start, make_chunker, video_dir, videos
        self.slots: list[dict[str, Any] | None] = [None] * pool.n

    def _restart(self, free: list[int]) -> None:
        """Give the next seeds, in order, to the free slots (decided here so that runs are reproducible)."""
        free = free[: len(self.queue)]
        seeds = [self.queue.pop(0) for _ in free]
        for i, seed, obs in zip(free, seeds, self.pool.reset(free, seeds) if free else [], strict=True):
            record = self.video_dir is not None and seed - self.seed_start < self.videos
            window = HistoryWindow(getattr(self.policy, "history", 1))  # a history policy reads the last T frames
            self.slots[i] = {"seed": seed, "obs": obs, "steps": 0, "score": None, "chunker": self.make_chunker(),
                             "window": window, "view": window.push(obs), "frames": [_frame(obs)] if record else None}

    def _needs_obs(self, i: int) -> bool:
        """Whether slot ``i``'s next observation is read: by the policy (a new chunk is due, or its history window
        keeps every frame) or by the video. Mid-chunk steps are not rendered (rendering is ~95 % of a Meta-World
        step on a CPU), which changes no result: the policy never sees those frames."""
        s = self.slots[i]
        return s["frames"] is not None or s["window"].history > 1 or s["chunker"].needs_chunk

    def _finish(self, i: int, obs: dict[str, Any], success: bool, score: float | None) -> EpisodeResult | None:
        s = self.slots[i]
        if score is not None:
            s["score"] = score
        if obs:  # rendered (see _needs_obs)
            s["obs"] = obs
            s["view"] = s["window"].push(obs)
        s["steps"] += 1
        if s["frames"] is not None:
            s["frames"].append(_frame(obs))
        if not (success or s["steps"] >= self.info.max_steps):
            return None
        if s["frames"] is not None:
            tag = "success" if success else "failure"
            write_video(Path(self.video_dir) / f"{self.task}_seed{s['seed']}_{tag}.mp4",
                        _bordered(s["frames"], success), fps=max(10, self.info.fps // 2))
        return EpisodeResult(self.task, s["seed"], success, s["steps"], s["score"])

    def run(self, tick: Any) -> list[EpisodeResult]:
        self._restart(list(range(self.pool.n)))
        results: list[EpisodeResult] = []
        while True:
            active = [i for i, s in enumerate(self.slots) if s is not None]
            if not active:
                return sorted(results, key=lambda r: r.seed)
            need = [i for i in active if self.slots[i]["chunker"].needs_chunk]
            if need:
                chunks = self.policy.infer_batch([self.slots[i]["view"] for i in need])
                for i, chunk in zip(need, chunks, strict=True):
                    self.slots[i]["chunker"].push(chunk)
            actions = [self.slots[i]["chunker"].pop() for i in active]
            stepped = self.pool.step(active, actions, [self._needs_obs(i) for i in active])
            for i, (obs, success, score) in zip(active, stepped, strict=True):
                done = self._finish(i, obs, success, score)
                if done is not None:
                    results.append(done)
                    tick()
                    self.slots[i] = None
            self._restart([i for i in active if self.slots[i] is None])


def expert_baseline(env_cfg: EnvConfig, tasks: list[str], episodes: int, seed_start: int = EVAL_SEED_START,
                    workers: int = 1, worker_timeout: float = WORKER_TIMEOUT,
                    pool: EnvPool | None = None) -> list[EpisodeResult]:
    """The scripted experts on the same seeds (no rendering): the reference a policy is compared with.

    The seeds of a task are dealt round-robin to the env slots (``workers`` processes, or the slots of ``pool``);
    each episode depends on its seed only, so the results do not change with the number of slots.
    """
    results = []
    with _pool(pool, env_cfg, min(workers, episodes), workers, 1, worker_timeout) as envs:
        n = min(envs.n, episodes)
        for task in tasks:
            envs.make(task)
            seeds = [list(range(seed_start + i, seed_start + episodes, n)) for i in range(n)]
            for ss, outs in zip(seeds, envs.expert(list(range(n)), seeds), strict=True):
                results += [EpisodeResult(task, s, ok, steps) for s, (ok, steps) in zip(ss, outs, strict=True)]
    return sorted(results, key=lambda r: (tasks.index(r.task), r.seed))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(results: list[EpisodeResult], groups: dict[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Per-task and mean success (mean over tasks, as Meta-World reports it).

    ``groups`` (an env's :meth:`~vlaforge.eval.envs.base.EnvConfig.task_groups`): also the mean of each group's
    evaluated tasks and ``group_mean``, the mean of those group means (Meta-World's difficulty-weighted score).
    """
    tasks: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(r.task for r in results):
        rs = [r for r in results if r.task == task]
        wins = sum(r.success for r in rs)
        lo, hi = wilson_interval(wins, len(rs))
        tasks[task] = {"success_rate": wins / len(rs), "successes": wins, "episodes": len(rs),
                       "ci95": [lo, hi], "mean_steps": float(np.mean([r.steps for r in rs]))}
        scores = [r.score for r in rs if r.score is not None]
        if scores:  # the benchmark's graded score (PushT: mean of the episodes' max coverage)
            tasks[task]["mean_score"] = float(np.mean(scores))
    mean = float(np.mean([t["success_rate"] for t in tasks.values()])) if tasks else 0.0
    out = {"mean_success": mean, "tasks": tasks}
    if groups:
        out.update(group_means(tasks, groups))
    return {**out, "episodes": [asdict(r) for r in results]}


def group_means(tasks: dict[str, dict[str, Any]], groups: dict[str, Sequence[str]]) -> dict[str, Any]:
    """``{"groups": {name: {success_rate, tasks, of}}, "group_mean": mean of the group means}``.

    A group's mean is over its evaluated tasks (``tasks`` of its ``of``); groups with none evaluated are left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, members in groups.items():
        rates = [tasks[t]["success_rate"] for t in members if t in tasks]
        if rates:
            out[name] = {"success_rate": float(np.mean(rates)), "tasks": len(rates), "of": len(members)}
    mean = float(np.mean([g["success_rate"] for g in out.values()])) if out else 0.0
    return {"groups": out, "group_mean": mean}


def _rate(summary: dict[str, Any], key: str, group: str | None = None) -> float | None:
    """``summary[key]`` (a mean) or ``summary[key][group]["success_rate"]``; None where absent."""
    value = summary.get(key)
    if group is not None:
        value = (value or {}).get(group, {}).get("success_rate")
    return value


def print_table(summary: dict[str, Any], reference: dict[str, Any] | None = None, title: str = "success") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("task")
    table.add_column("policy", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("mean steps", justify="right")
    scored = any("mean_score" in t for t in summary["tasks"].values())
    if scored:
        table.add_column("mean score", justify="right")
    if reference is not None:
        table.add_column("scripted expert", justify="right")
    for task, t in summary["tasks"].items():
        row = [task, f"{t['successes']}/{t['episodes']} ({t['success_rate']:.0%})",
               f"{t['ci95'][0]:.0%}-{t['ci95'][1]:.0%}", f"{t['mean_steps']:.0f}"]
        if scored:
            row.append(f"{t['mean_score']:.3f}" if "mean_score" in t else "-")
        if reference is not None:
            r = reference["tasks"].get(task)
            row.append(f"{r['successes']}/{r['episodes']}" if r else "-")
        table.add_row(*row)
    rows = [("mean", "mean_success", None)]
    if summary.get("groups"):
        rows += [(f"{name} ({g['tasks']}/{g['of']} tasks)", "groups", name) for name, g in summary["groups"].items()]
        rows.append(("mean of group means", "group_mean", None))
    for label, key, group in rows:
        row = [label, f"{_rate(summary, key, group):.0%}", "", "", *([""] if scored else [])]
        if reference is not None:
            ref = _rate(reference, key, group)
            row.append(f"{ref:.0%}" if ref is not None else "-")
        table.add_row(*row, style="bold")
    Console().print(table)


def write_summary(path: Path, summary: dict[str, Any], **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**summary, **extra}, indent=2))
