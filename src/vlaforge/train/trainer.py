"""The training loop: AdamW, warmup + cosine, gradient clipping, atomic checkpoints, exact resume.

``train_step`` is the whole update; ``train`` wires data, model, logging and checkpoints around it. A run
directory holds ``config.json`` (the resolved TrainConfig), ``metrics.jsonl``, ``tb/`` (TensorBoard),
``loss.png`` and ``checkpoints/{step}/`` with ``checkpoints/last`` pointing at the newest.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlaforge.config import Paths, atomic_write_text
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.mixture import MixtureDataset
from vlaforge.data.stats import StatsError
from vlaforge.policy import VLAPolicy
from vlaforge.train.checkpoint import load_train_state, save_checkpoint
from vlaforge.train.config import TrainConfig
from vlaforge.train.data import augmentation, make_loader
from vlaforge.train.plots import plot_losses
from vlaforge.utils import progress_bar, seed_everything

log = logging.getLogger(__name__)


def train_step(policy: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batch: dict[str, Any],
               grad_clip: float) -> dict[str, float]:
    """One optimizer update; returns the loss parts, the gradient norm (before clipping) and the lr."""
    policy.train()
    out = policy.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    metrics = {k: float(v.detach()) for k, v in out.items()}
    metrics["grad_norm"] = float(grad_norm)
    metrics["lr"] = optimizer.param_groups[0]["lr"]
    return metrics


def _mixture_paths(cfg: TrainConfig) -> dict[str, tuple[Path, float]]:
    """name -> (dataset dir, weight) of the configured mixture; empty for a single dataset."""
    if cfg.data.mixture_name:
        from vlaforge.data.rlds import mixture

        root = Path(cfg.data.path or ".")
        return {name: (root / name, w) for name, w in mixture(cfg.data.mixture_name)}
    out = {}
    for path, w in cfg.data.mixture.items():
        name = Path(path).name
        if name in out:
            raise ValueError(f"data.mixture: two datasets are named '{name}' (names are directory names)")
        out[name] = (Path(path), float(w))
    return out


def _prepare(cfg: TrainConfig) -> tuple[Any, VLAPolicy]:
    opts = {"history": cfg.policy.history, "chunk": cfg.policy.chunk, "video_cache": cfg.data.video_cache}
    parts = _mixture_paths(cfg)
    if parts:
        reader = MixtureDataset({n: LeRobotDataset(p, **opts) for n, (p, _) in parts.items()},
                                {n: w for n, (_, w) in parts.items()}, balance=cfg.data.balance)
        dataset_stats = reader.stats
        unnorm_key = cfg.data.unnorm_key or reader.names[int(np.argmax(reader.probabilities))]
        if unnorm_key not in dataset_stats:
            raise KeyError(f"data.unnorm_key: expected one of {reader.names}, got {unnorm_key!r}")
        stats, robot = None, reader.robot
        mix = {"dataset_stats": dataset_stats, "dataset_robots": reader.robots, "unnorm_key": unnorm_key}
    else:
        if not cfg.data.path:
            raise ValueError("no training data: pass --data DATASET_DIR (or --data.mixture)")
        reader = LeRobotDataset(cfg.data.path, **opts)
        if reader.meta.stats is None:
            raise StatsError(f"{cfg.data.path} has no meta/stats.json; run `vlaforge stats {cfg.data.path}`")
        mix, stats, robot = {}, reader.meta.stats, reader.meta.robot_spec()
    if cfg.init_from:  # fine-tune: the checkpoint fixes the architecture; the new data brings its statistics
        policy = VLAPolicy.from_pretrained(cfg.init_from)
        policy.check_compatible(robot, "dataset")
        policy.make_pipelines(stats, robot, **mix)
    else:
        policy = VLAPolicy(cfg.policy.with_robot(robot))
        policy.make_pipelines(stats, robot, **mix)
        policy.fit(reader, seed=cfg.seed)  # quantile bins / FAST tokenizers learn from the training actions
    return reader, policy


def train(cfg: TrainConfig, show_progress: bool = True) -> Path:
    """Train ``cfg`` into its run directory ``cfg.out``; returns the final checkpoint directory."""
    if not cfg.out:
        raise ValueError("no run directory: pass --out DIR")
    out, resume = Path(cfg.out), cfg.resume
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    last = Paths.last_checkpoint(out)
    if resume and not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}")
    if not resume and last.exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    seed_everything(cfg.seed)
    reader, policy = _prepare(cfg)
    cfg = cfg.replace(policy=policy.cfg)
    from vlaforge.train.optim import make_optimizer

    optimizer, scheduler = make_optimizer(policy, cfg.optim, cfg.steps)
    start = 0
    if resume:
        start = load_train_state(last.resolve(), policy, optimizer, scheduler)["step"]
        log.info("resuming %s at step %d", out, start)
    else:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_json(out / "config.json")
    n_params = sum(p.numel() for p in policy.parameters())
    pipeline = policy.train_pipeline(augmentation(cfg.data, list(policy.cfg.cameras)))
    loader = make_loader(reader, pipeline, batch_size=cfg.batch_size,
                         seed=cfg.seed, start_step=start, steps=cfg.steps, num_workers=cfg.data.num_workers)
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(Paths.tensorboard(out)), purge_step=start if resume else None)
    metrics_path = out / "metrics.jsonl"
    if resume and metrics_path.exists():  # drop lines logged after the checkpoint we resume from
        kept = [ln for ln in metrics_path.read_text().splitlines() if json.loads(ln)["step"] <= start]
        atomic_write_text(metrics_path, "".join(k + "\n" for k in kept))
    t0, step, stopped_early = time.time(), start, False
    window_t, window_n = time.time(), 0
    with progress_bar(show_progress) as bar, open(metrics_path, "a") as mlog:
        job = bar.add_task(f"train ({n_params / 1e6:.1f}M params)", total=cfg.steps, completed=start)
        for batch in loader:
            m = train_step(policy, optimizer, scheduler, batch, cfg.optim.grad_clip)
            step += 1
            window_n += cfg.batch_size
            if step % cfg.log_every == 0 or step == cfg.steps:
                m["samples_per_s"] = window_n / max(time.time() - window_t, 1e-9)
                window_t, window_n = time.time(), 0
                for k, v in m.items():
                    tb.add_scalar(f"train/{k}", v, step)
                mlog.write(json.dumps({"step": step, **m}) + "\n")
                mlog.flush()
                bar.update(job, description=f"train loss {m['loss']:.4f}")
            bar.update(job, completed=step)
            out_of_time = cfg.max_minutes is not None and (time.time() - t0) / 60 > cfg.max_minutes
            stop = out_of_time or step == cfg.stop_at
            if step % cfg.save_every == 0 or step == cfg.steps or stop:
                save_checkpoint(out, policy, optimizer, scheduler, step, keep_last=cfg.keep_last,
                                extra={"samples_seen": step * cfg.batch_size})
            if stop:
                stopped_early = True
                log.warning("stopping at step %d of %d (%s); continue with --resume", step, cfg.steps,
                            f"the {cfg.max_minutes}-minute budget is spent" if out_of_time else "stop_at")
                break
    tb.close()
    plot_losses(metrics_path, out / "loss.png")
    summary = {"steps": step, "planned_steps": cfg.steps, "stopped_early": stopped_early,
               "minutes": (time.time() - t0) / 60, "params": n_params}
    atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    return Paths.last_checkpoint(out).resolve()
