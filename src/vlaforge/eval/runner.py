"""``vlaforge eval``: load a checkpoint, roll it out in simulation, write the success table, JSON and videos."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlaforge.config import ConfigBase, Paths
from vlaforge.eval.envs.base import ENVS, EnvConfig
from vlaforge.eval.report import eval_markdown
from vlaforge.eval.rollout import EVAL_SEED_START, evaluate, expert_baseline, print_table, summarize, write_summary
from vlaforge.eval.workers import make_pool
from vlaforge.inference import InferencePolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig(ConfigBase):
    checkpoint: str = ""
    env: EnvConfig = field(default_factory=lambda: ENVS.get("metaworld")())
    tasks: str = ""  # comma-separated task names or suites (mt10, mt50, easy, medium, hard, very_hard ...)
    episodes: int = 0  # per task; 0: the benchmark's protocol (env.default_episodes: Meta-World 10, LIBERO 50)
    exec_steps: int | None = None  # actions executed per chunk before re-planning (default: the policy's)
    ensemble: int = 0  # K > 0: ACT temporal ensembling of each chunk's first K actions (queries every step)
    ensemble_temp: float = 0.01  # ensembling weights exp(-ensemble_temp * i), i = 0 the oldest prediction (ACT)
    # the head's sampling fields for this evaluation, space-separated KEY=VALUE ("num_steps=20 init_noise=0"; which
    # fields: HeadConfig.sampling); the checkpoint stays as it is
    sampling: str = ""
    parallel_envs: int = 10  # envs stepped in lockstep; their observations are batched into one policy call
    workers: int = 1  # processes the envs run in (1: this process, on pinned threads); results do not depend on it
    worker_timeout: float = 600.0  # seconds a worker may take to answer one call (build, reset or step its envs)
    ray: str = ""  # HOST:PORT of a Ray cluster (auto: the local one, local: start one): the workers are Ray actors
    seed_start: int = EVAL_SEED_START
    videos: int = 1  # videos per task
    expert: bool = True  # also run the scripted experts on the same seeds, for reference
    out: str = ""  # default: <run>/eval next to the checkpoint's run, else runs/eval
    device: str = "cpu"
    unnorm_key: str = ""  # mixture checkpoints: which training dataset's statistics / image sizes (default: saved)
    remote: str = ""  # ws://HOST:PORT of `vlaforge serve`: evaluate through the server (checkpoint optional)

    def validate(self) -> None:
        self.check(self.episodes >= 0, "episodes", ">= 1, or 0 for the benchmark's protocol")
        self.check(self.parallel_envs >= 1, "parallel_envs", ">= 1")
        self.check(self.workers >= 1, "workers", ">= 1")
        self.check(self.worker_timeout > 0, "worker_timeout", "> 0")
        self.check(self.videos >= 0, "videos", ">= 0")
        self.check(self.ensemble >= 0, "ensemble", ">= 0 (0: receding horizon)")


def default_eval_dir(checkpoint: Path) -> Path:
    ckpt = checkpoint.resolve()
    return ckpt.parent.parent / "eval" if ckpt.parent.name == "checkpoints" else Paths().run("eval")


def run_eval(cfg: EvalConfig, show_progress: bool = True, policy: InferencePolicy | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint``, or ``policy`` when given (the CLI passes a RemotePolicy for ``cfg.remote``)."""
    from vlaforge.inference import LocalPolicy

    if not cfg.checkpoint and policy is None:
        raise ValueError("eval: pass a checkpoint directory (or --remote ws://HOST:PORT)")
    if cfg.remote and policy is None:
        raise ValueError("eval: cfg.remote needs policy=RemotePolicy(cfg.remote) (vlaforge.cli.eval builds it)")
    if not cfg.tasks:
        raise ValueError("eval: pass --tasks (task names or a suite such as mt10)")
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    out = Path(cfg.out) if cfg.out else default_eval_dir(ckpt) if ckpt else Paths().run("eval")
    tasks = cfg.env.task_names(cfg.tasks)
    if cfg.sampling and policy is not None:
        raise ValueError("eval: --sampling sets a local checkpoint's head options; a remote policy samples as its "
                         "server loaded it")
    policy = policy if policy is not None else LocalPolicy.load(ckpt, device=cfg.device, unnorm_key=cfg.unnorm_key,
                                                                      sampling=cfg.sampling.split())
    groups = cfg.env.task_groups()
    title = f"{cfg.remote or ckpt} on {cfg.env.type} (seeds {cfg.seed_start}+)"
    cfg = cfg.replace(episodes=cfg.episodes or cfg.env.default_episodes)
    with make_pool(cfg.env, min(cfg.parallel_envs, cfg.episodes), cfg.workers, timeout=cfg.worker_timeout,
                   ray=cfg.ray) as pool:
        results = evaluate(policy, cfg.env, tasks, cfg.episodes, seed_start=cfg.seed_start, exec_steps=cfg.exec_steps,
                           video_dir=out / "videos" if cfg.videos else None, videos_per_task=cfg.videos,
                           show_progress=show_progress, pool=pool, ensemble=cfg.ensemble,
                           ensemble_temp=cfg.ensemble_temp)
        summary = summarize(results, groups)
        reference = summarize(expert_baseline(cfg.env, tasks, cfg.episodes, cfg.seed_start, pool=pool), groups) \
            if cfg.expert else None
    print_table(summary, reference, title=title)
    write_summary(out / "eval.json", summary, expert=reference, checkpoint=str(ckpt) if ckpt else None,
                  config=cfg.to_dict())
    (out / "eval.md").write_text(eval_markdown(summary, reference, title, groups))
    log.info("wrote %s", out / "eval.json")
    return {"summary": summary, "expert": reference, "out": out}
