"""Scripted-expert demonstrations -> a LeRobot v3 dataset (``vlaforge collect``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.config import ConfigBase
from vlaforge.data.lerobot import LeRobotWriter, check_output_dir
from vlaforge.eval.envs.base import ENVS, EnvConfig
from vlaforge.types import ACTION, OBS_IMAGES, OBS_PREFIX, OBS_STATE, FeatureSpec, image_key
from vlaforge.utils import progress_bar


@dataclass
class TaskCollection:
    task: str
    instruction: str
    kept: int
    attempts: int
    seeds: list[int]
    mean_length: float


def _observed(env: Any, obs: dict[str, Any]) -> dict[str, Any]:
    """What a dataset keeps of one step: the observation and the env's recorded features (never a policy input)."""
    out = {k: v for k, v in obs.items() if k.startswith(OBS_PREFIX)}
    extra = getattr(env, "recorded_features", None)
    return out | extra() if extra is not None else out


def _run_expert(env: Any, seed: int, record: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]:
    """One expert episode: (frames + actions, the env's raw per-step records if ``record``, success)."""
    obs = _observed(env, env.reset(seed))
    frames: dict[str, list] = {k: [] for k in obs}
    records: dict[str, list] = {}
    actions, success = [], False
    for _ in range(env.max_steps):
        a = env.expert_action()
        for k in frames:
            frames[k].append(obs[k])
        if record:
            for k, v in env.record().items():
                records.setdefault(k, []).append(v)
        actions.append(a)
        obs, success, _ = env.step(a)
        obs = _observed(env, obs)
        if success:
            break
    episode = {k: np.stack(v) for k, v in frames.items()}
    episode[ACTION] = np.stack(actions).astype(np.float32)
    return episode, {k: np.stack(v) for k, v in records.items()}, success


def _collect_task(env_cfg: EnvConfig, task: str, episodes: int, seed_start: int, max_attempts: int,
                  advance: Any, record: bool = False) -> tuple[TaskCollection, list[dict[str, np.ndarray]], Any]:
    """All of one task's episodes, on the calling thread (its env's GL context stays on that thread)."""
    env = env_cfg.make(task)
    try:
        kept: list[dict[str, np.ndarray]] = []
        kept_records: list[dict[str, np.ndarray]] = []
        seeds: list[int] = []
        attempt = 0
        while len(kept) < episodes and attempt < max_attempts:
            seed = seed_start + attempt
            attempt += 1
            episode, records, success = _run_expert(env, seed, record)
            if success:
                kept.append(episode)
                kept_records.append(records)
                seeds.append(seed)
                advance()
        lengths = [len(e[ACTION]) for e in kept]
        summary = TaskCollection(task, env.instruction, len(kept), attempt, seeds,
                                 float(np.mean(lengths)) if lengths else 0.0)
        return summary, kept, (env.robot, env.fps, kept_records)
    finally:
        env.close()


def collect(env_cfg: EnvConfig, tasks: list[str], episodes: int, out: Path, *, seed_start: int = 0,
            max_attempts: int | None = None, codec: str = "h264", overwrite: bool = False, workers: int = 2,
            show_progress: bool = True, fmt: str = "lerobot") -> list[TaskCollection]:
    """Collect ``episodes`` successful expert episodes per task (failed attempts are dropped).

    Tasks run on ``workers`` threads (simulation and rendering release the GIL); episodes are written in task
    order, so the dataset does not depend on the number of workers. ``out`` is checked before any work; the
    dataset is written to ``OUT.partial`` and moved into place at the end (see :class:`LeRobotWriter`).
    ``fmt`` other than ``lerobot`` (one of the env's ``native_formats``) also writes the simulator's own
    demonstration files, one per task, under ``OUT/FMT/``.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not tasks:
        raise ValueError("collect: no tasks given")
    if fmt != "lerobot" and fmt not in env_cfg.native_formats:
        raise ValueError(f"--format: expected lerobot or one of {list(env_cfg.native_formats)} for env "
                         f"{env_cfg.type!r}, got {fmt!r}")
    out = check_output_dir(out, overwrite)
    record = fmt != "lerobot"
    max_attempts = max_attempts or 3 * episodes
    summary: list[TaskCollection] = []
    writer = None
    with progress_bar(show_progress) as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        job = bar.add_task(f"collect {len(tasks)} tasks", total=episodes * len(tasks))
        futures = [pool.submit(_collect_task, env_cfg, t, episodes, seed_start, max_attempts,
                               lambda: bar.advance(job), record) for t in tasks]
        try:
            for fut in futures:
                result, kept, (robot, fps, records) = fut.result()
                if writer is None and kept:  # the first episodes fix the features
                    feats = {image_key(c): FeatureSpec("video", (h, w, 3)) for c, (h, w) in robot.cameras.items()}
                    feats[OBS_STATE] = FeatureSpec("float32", (robot.state_dim,))
                    feats[ACTION] = FeatureSpec("float32", (robot.action_dim,))
                    # what else the env records (Meta-World's environment state), as it comes
                    for k, v in kept[0].items():
                        if k not in feats and not k.startswith(OBS_IMAGES):
                            feats[k] = FeatureSpec("float32", tuple(v.shape[1:]))
                    writer = LeRobotWriter(out, fps, feats, robot_type=env_cfg.type, codec=codec, overwrite=overwrite)
                for episode in kept:
                    writer.add_episode(episode, result.instruction)
                if record and kept:
                    env_cfg.write_native(fmt, writer.root / fmt, result.task, result.instruction, kept, records)
                summary.append(result)
        except BaseException as e:
            if writer is not None:
                writer.__exit__(type(e), e, e.__traceback__)  # keeps the episodes so far (never over a dataset)
            raise
        finally:
            for fut in futures:
                fut.cancel()
    if record and overwrite and (out / fmt).is_dir():
        shutil.rmtree(out / fmt)  # the previous collection's files (check_output_dir: a dataset we wrote)
    if writer is None:
        raise RuntimeError(f"collect: the expert succeeded in none of {max_attempts} attempts per task on {tasks}; "
                           "nothing was written")
    writer.finalize()
    (out / "meta" / "collection.json").write_text(json.dumps(
        {"env": env_cfg.to_dict(), "tasks": [vars(s) for s in summary]}, indent=2))
    return summary


@dataclass(frozen=True)
class CollectConfig(ConfigBase):
    env: EnvConfig = field(default_factory=lambda: ENVS.get("metaworld")())
    tasks: str = "mt10"  # comma-separated task names or suites (mt10, mt50)
    episodes: int = 50  # successful episodes kept per task
    out: str = ""
    seed_start: int = 0
    codec: str = "h264"
    overwrite: bool = False
    workers: int = 2  # tasks collected in parallel threads
    format: str = "lerobot"  # lerobot, or also the env's own demonstration files (libero: robomimic HDF5)

    def validate(self) -> None:
        self.check(self.episodes >= 1, "episodes", ">= 1")
        self.check(self.workers >= 1, "workers", ">= 1")
        self.check(self.seed_start >= 0, "seed_start", ">= 0")


def run_collect(cfg: CollectConfig, show_progress: bool = True) -> list[TaskCollection]:
    if not cfg.out:
        raise ValueError("collect: pass --out DIR")
    tasks = cfg.env.task_names(cfg.tasks)
    return collect(cfg.env, tasks, cfg.episodes, Path(cfg.out), seed_start=cfg.seed_start, codec=cfg.codec,
                   overwrite=cfg.overwrite, workers=cfg.workers, show_progress=show_progress, fmt=cfg.format)
