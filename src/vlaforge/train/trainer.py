"""The training loop: AdamW, warmup + cosine, gradient clipping, atomic checkpoints, exact resume.

``train_step`` is the whole update; ``train`` wires data, model, logging and checkpoints around it. A run
directory holds ``config.json`` (the resolved TrainConfig), ``metrics.jsonl``, ``tb/`` (TensorBoard),
``loss.png`` and ``checkpoints/{step}/`` with ``checkpoints/last`` pointing at the newest; ``resumes.jsonl`` lists the
options each ``--resume`` changed (see :func:`vlaforge.train.config.resume_changes` for what it may change).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vlaforge.config import ConfigError, Paths, atomic_write_text
from vlaforge.data import open_reader
from vlaforge.data.mixture import MixtureDataset
from vlaforge.data.stats import StatsError
from vlaforge.policy import PolicyConfig, VLAPolicy
from vlaforge.processors.base import to_device
from vlaforge.quantize import parameter_count
from vlaforge.train.checkpoint import (
    gather_rng_states,
    load_train_state,
    load_train_weights,
    read_train_state,
    save_checkpoint,
)
from vlaforge.train.config import TrainConfig, resume_changes
from vlaforge.train.data import augmentation, make_loader
from vlaforge.train.plots import plot_losses
from vlaforge.train.runtime import SingleProcess, make_runtime, peak_memory_gb
from vlaforge.types import OBS_ENV_STATE, OBS_PREFIX
from vlaforge.utils import progress_bar, seed_everything

log = logging.getLogger(__name__)


_clock = time.monotonic  # the training budget's clock (tests replace it)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batches: list[dict[str, Any]],
               grad_clip: float, runtime: Any = None, ema: Any = None) -> dict[str, float]:
    """One optimizer update over ``len(batches)`` accumulated micro-batches.

    Returns the loss parts (mean over micro-batches), the gradient norm before clipping and each group's lr.
    """
    runtime = runtime or SingleProcess("fp32")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        with runtime.no_sync(model) if not last else contextlib.nullcontext(), runtime.autocast():
            out = model(batch)
            runtime.backward(out["loss"], len(batches))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(batches)
    grad_norm = runtime.clip_grad_norm(model, grad_clip)
    optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update_parameters(runtime.unwrap(model))
    metrics = dict(sums)
    metrics["grad_norm"] = float(grad_norm)
    metrics["lr"] = optimizer.param_groups[0]["lr"]
    for g in optimizer.param_groups:
        if "name" in g and not g["name"].endswith("_no_decay"):
            metrics[f"lr/{g['name']}"] = g["lr"]
    return metrics


def _save(out: Path, runtime: Any, policy: VLAPolicy, model: nn.Module, optimizer: torch.optim.Optimizer,
          scheduler: Any, ema: Any, step: int, keep_last: int, extra: dict[str, Any]) -> None:
    """Gather everything a checkpoint holds (collectives: every rank calls this), then the main rank writes it."""
    raw = runtime.full_state_dict(model)
    weights = raw if ema is None else runtime.full_state_dict(ema.module)
    opt_state = runtime.optimizer_state(model, optimizer)
    rng = gather_rng_states(runtime)
    error: Exception | None = None
    if runtime.is_main:
        if ema is not None:
            extra = {**extra, "ema_n_averaged": int(ema.n_averaged)}
        try:
            save_checkpoint(out, policy, step, scheduler, opt_state, rng, weights=weights,
                            raw_weights=raw if ema is not None else None, extra=extra, keep_last=keep_last)
        except Exception as e:  # raised below, once every process knows (the others would wait for it forever)
            error = e
    failed = any(float(t) for t in runtime.all_gather(torch.tensor([float(error is not None)])))
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"the main process could not write checkpoint {step} (its error says why)")


def _apply_optim_config(fresh: list[dict[str, Any]], scheduler: Any, stepping: torch.optim.Optimizer) -> None:
    """After a resume restored the checkpoint's param groups and schedule position: this run's ``--optim`` values
    (``fresh``, the groups as :func:`make_optimizer` built them) apply from the resumed step on. The learning rates
    follow this run's schedule (lr, warmup, steps, min_lr_ratio) at the restored step; weight decay and betas are
    this run's. Unchanged options give the values the checkpoint holds, bit for bit (the formula is LambdaLR's)."""
    scheduler.base_lrs = [g["initial_lr"] for g in fresh]
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for opt in {id(o): o for o in (scheduler.optimizer, stepping)}.values():
        if len(opt.param_groups) != len(fresh):
            raise ValueError(f"the checkpoint's optimizer has {len(opt.param_groups)} parameter groups, this run's "
                             f"{len(fresh)}")
        for group, new, lr in zip(opt.param_groups, fresh, lrs, strict=True):
            group.update({k: new[k] for k in ("weight_decay", "betas") if k in new}, lr=lr,
                         initial_lr=new["initial_lr"])
    scheduler._last_lr = lrs


def _micro_batches(loader: Any, n: int, device: torch.device) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    for batch in loader:
        group.append(to_device(batch, device))  # asynchronous from pinned memory on CUDA
        if len(group) == n:
            yield group
            group = []


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


def _with_env_state(policy: PolicyConfig, reader: Any, path: str) -> PolicyConfig:
    """The policy config with the environment state's size when it learns to predict it (auxiliary loss)."""
    if policy.env_state_loss == 0:
        return policy
    meta = getattr(reader, "meta", None)
    if meta is None:
        raise ConfigError("policy.env_state_loss", "0 with a mixture (one dataset's environment state only)",
                          policy.env_state_loss)
    spec = meta.features.get(OBS_ENV_STATE)
    if spec is None or len(spec.shape) != 1:
        has = sorted(k for k in meta.features if k.startswith(OBS_PREFIX))
        raise ConfigError("policy.env_state_loss", f"0 (--policy.env_state_loss=0), or data with a 1-d "
                          f"'{OBS_ENV_STATE}' ({path} has {has})", policy.env_state_loss)
    return policy.replace(env_state_dim=int(spec.shape[0]))


def build_reader_and_policy(cfg: TrainConfig) -> tuple[Any, VLAPolicy]:
    """The training data reader and the policy exactly as :func:`train` builds them (not yet on a device): from
    ``cfg.policy`` with the data's robot and statistics, fitted to the training actions, or from ``init_from``."""
    shape = cfg.policy  # the checkpoint's chunk and history when fine-tuning (they fix the architecture)
    saved = Path(cfg.init_from or "") / "config.json"
    if cfg.init_from and saved.is_file():
        shape = PolicyConfig.from_dict(json.loads(saved.read_text())["policy"])
    opts = {"history": shape.history, "chunk": shape.chunk, "video_cache": cfg.data.video_cache,
            "format": cfg.data.format,
            "max_cache_mb": cfg.data.max_cache_mb / max(1, cfg.data.num_workers)}  # the budget is per process
    if cfg.data.video_cache == "disk":  # the directory is shared by the workers: not divided
        opts |= {"cache_dir": cfg.data.cache_dir or None, "disk_cache_mb": cfg.data.disk_cache_mb}
    parts = _mixture_paths(cfg)
    if parts:
        part_opts = {**opts, "max_cache_mb": opts["max_cache_mb"] / len(parts)}  # one budget for the mixture
        if "disk_cache_mb" in opts:
            part_opts["disk_cache_mb"] = opts["disk_cache_mb"] / len(parts)
        reader = MixtureDataset({n: open_reader(p, **part_opts) for n, (p, _) in parts.items()},
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
        reader = open_reader(cfg.data.path, **opts)
        if reader.meta.stats is None:
            raise StatsError(f"{cfg.data.path} has no meta/stats.json; run `vlaforge stats {cfg.data.path}`")
        mix, stats, robot = {}, reader.meta.stats, reader.meta.robot_spec()
    if cfg.init_from:  # fine-tune: the checkpoint fixes the architecture; the new data brings its statistics
        policy = VLAPolicy.from_pretrained(cfg.init_from)
        policy.check_compatible(robot, "dataset")
        policy.make_pipelines(stats, robot, **mix)
    else:
        policy = VLAPolicy(_with_env_state(cfg.policy.with_robot(robot), reader, cfg.data.path))
        policy.make_pipelines(stats, robot, **mix)
        policy.fit(reader, seed=cfg.seed)  # quantile bins / FAST tokenizers learn from the training actions
    return reader, policy


class _Logger:
    """metrics.jsonl + TensorBoard always; Weights & Biases when ``cfg.wandb`` (WANDB_MODE=offline works)."""

    def __init__(self, cfg: TrainConfig, out: Path, start: int, resume: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(Paths.tensorboard(out)), purge_step=start if resume else None)
        path = out / "metrics.jsonl"
        if resume and path.exists():  # drop lines logged after the checkpoint we resume from
            kept = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= start]
            atomic_write_text(path, "".join(k + "\n" for k in kept))
        self.file = open(path, "a")  # noqa: SIM115 - closed in close()
        self.wandb = None
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise ImportError("--wandb=true needs the wandb package: pip install wandb") from None
            self.wandb = wandb.init(project=cfg.wandb_project, dir=str(out), config=cfg.to_dict(),
                                    name=out.name, resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        self.tb.close()
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def train(cfg: TrainConfig, show_progress: bool = True) -> Path:
    """Train ``cfg`` into its run directory ``cfg.out``; returns the final checkpoint directory."""
    if not cfg.out:
        raise ValueError("no run directory: pass --out DIR")
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, show_progress)
    finally:
        torch.set_num_threads(threads)  # cfg.threads is this run's setting, not the caller's


def _float_only(multi_avg_fn: Callable) -> Callable:
    """An EMA update that leaves integer parameters alone: a QLoRA base's packed 4-bit weights are frozen, and
    torch's EMA would round ``decay * w + (1 - decay) * w`` back into uint8 (AveragedModel groups by dtype)."""

    def update(ema_params: list[Tensor], model_params: list[Tensor], n_averaged: Tensor) -> None:
        if ema_params and ema_params[0].is_floating_point():
            multi_avg_fn(ema_params, model_params, n_averaged)

    return update


def _train(cfg: TrainConfig, show_progress: bool) -> Path:
    out, resume = Path(cfg.out), cfg.resume
    last = Paths.last_checkpoint(out)
    if resume and not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}")
    if not resume and last.exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    changes: dict[str, tuple[Any, Any]] = {}
    if resume:  # before anything is built: options a resume may not change are refused with the reason
        saved = out / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {saved} not found")
        changes = resume_changes(TrainConfig.from_json(saved), cfg, read_train_state(last.resolve())["step"])
    runtime = make_runtime(cfg.distributed, cfg.precision, cfg)
    if cfg.ema > 0 and not runtime.supports_ema:
        raise NotImplementedError(f"--ema is not supported with --distributed={cfg.distributed} (its parameters are "
                                  f"partitioned or cast); use --distributed=ddp or fsdp for EMA")
    lora = cfg.policy.backbone.lora
    if lora is not None and lora.quantize != "none" and not runtime.supports_4bit:
        raise NotImplementedError(f"backbone.lora.quantize={lora.quantize!r} (QLoRA) is not supported with "
                                  f"--distributed={cfg.distributed} (it shards or casts the packed 4-bit weights); "
                                  f"use --distributed=none or ddp")
    seed_everything(cfg.seed)  # every process builds the same initial weights (FSDP shards them as they are)
    if not runtime.is_main:  # the main process builds the dataset's keyframe index (video_cache=seek) once
        runtime.barrier()
    reader, policy = build_reader_and_policy(cfg)
    if runtime.is_main:
        runtime.barrier()
    if runtime.rank > 0:
        seed_everything(cfg.seed + runtime.rank)  # then different noise per process; the data stream is shared
    cfg = cfg.replace(policy=policy.cfg)
    from vlaforge.train.optim import BudgetPlanner, make_optimizer, relay_schedule

    ema = None
    if cfg.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # parameters only: vlaforge's buffers are constants (bins, ids, image stats), and under FSDP the buffers
        # are plain tensors while the parameters are DTensor shards (one foreach update cannot mix them)
        ema = AveragedModel(policy, multi_avg_fn=_float_only(get_ema_multi_avg_fn(cfg.ema)), use_buffers=False)
    if resume:  # weights go into the full modules, before any sharding
        state = load_train_weights(last.resolve(), policy, ema)
    if runtime.shards:  # FSDP: parameters become shards (the EMA's alike), so the optimizer is built on them
        runtime.shard(policy)
        if ema is not None:
            runtime.shard(ema.module)
    optimizer, scheduler = make_optimizer(policy, cfg.optim, cfg.steps)
    raw_optimizer = optimizer
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in raw_optimizer.param_groups]  # with initial_lr
    model, optimizer = runtime.prepare(policy, optimizer)
    start = 0
    if resume:
        load_train_state(last.resolve(), state, runtime, model, raw_optimizer, scheduler)
        _apply_optim_config(fresh, scheduler, runtime.stepping_optimizer(optimizer))
        start = state["step"]
        log.info("resuming %s at step %d%s", out, start, "".join(
            f"{', ' if i else ' with '}{k} {a!r} -> {b!r}" for i, (k, (a, b)) in enumerate(changes.items())))
        if changes and runtime.is_main:  # config.json is the run's current configuration; resumes.jsonl the log
            cfg.replace(resume=False).to_json(out / "config.json")
            with open(out / "resumes.jsonl", "a") as f:
                f.write(json.dumps({"step": start, "changed": {k: list(v) for k, v in changes.items()}}) + "\n")
    elif runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_json(out / "config.json")
    runtime.barrier()
    n_params = parameter_count(policy)
    pipeline = policy.train_pipeline(augmentation(cfg.data, list(policy.cfg.cameras)))
    accum = cfg.grad_accum
    loader = make_loader(reader, pipeline, batch_size=cfg.batch_size, seed=cfg.seed, start_step=start * accum,
                         steps=cfg.steps * accum, num_workers=cfg.data.num_workers, rank=runtime.rank,
                         world=runtime.world, clip_frames=cfg.data.clip_frames,
                         shuffle_buffer=cfg.data.shuffle_buffer, device=runtime.device)
    global_batch = cfg.batch_size * accum * runtime.world
    logger = _Logger(cfg, out, start, resume) if runtime.is_main else None
    t0, step, stopped_early, total = _clock(), start, False, cfg.steps
    planner = BudgetPlanner(60 * cfg.max_minutes, start, cfg.steps) if cfg.budget == "fit" else None
    window_t, window_n = _clock(), 0
    with progress_bar(show_progress and runtime.is_main) as bar:
        job = bar.add_task(f"train ({n_params / 1e6:.1f}M params)", total=cfg.steps, completed=start)
        for batches in _micro_batches(loader, accum, runtime.device):
            m = train_step(model, optimizer, scheduler, batches, cfg.optim.grad_clip, runtime, ema)
            step += 1
            window_n += global_batch
            if planner is not None and (plan := planner.update(step, _clock() - t0)) is not None:
                plan = round(runtime.reduce_mean(float(plan)))  # every process keeps the same schedule
                if plan != total:
                    total = plan
                    relay_schedule(scheduler, cfg.optim, total)
                    _apply_optim_config(fresh, scheduler, runtime.stepping_optimizer(optimizer))
                    bar.update(job, total=total)
                    log.info("budget: %d steps fit the %g-minute budget (measured at step %d)", total,
                             cfg.max_minutes, step)
            if step % cfg.log_every == 0 or step == total:
                m["loss"] = runtime.reduce_mean(m["loss"])
                m["samples_per_s"] = window_n / max(_clock() - window_t, 1e-9)
                m["peak_mem_gb"] = peak_memory_gb(runtime.device)
                window_t, window_n = _clock(), 0
                if logger is not None:
                    logger.log(step, m)
                bar.update(job, description=f"train loss {m['loss']:.4f}")
            bar.update(job, completed=step)
            out_of_time = cfg.max_minutes is not None and (_clock() - t0) / 60 > cfg.max_minutes
            stop = out_of_time or step == cfg.stop_at
            if step % cfg.save_every == 0 or step == total or stop:
                _save(out, runtime, policy, model, raw_optimizer, scheduler, ema, step,
                      keep_last=cfg.keep_last, extra={"samples_seen": step * global_batch})
            if stop:
                stopped_early = True
                log.warning("stopping at step %d of %d (%s); continue with --resume", step, cfg.steps,
                            f"the {cfg.max_minutes}-minute budget is spent" if out_of_time else "stop_at")
                break
            if step == total:
                break
    if logger is None:
        return Paths.last_checkpoint(out).resolve()
    logger.close()
    plot_losses(out / "metrics.jsonl", out / "loss.png")
    if total != cfg.steps:  # the fitted schedule is this run's: a --resume continues it
        cfg.replace(steps=total, resume=False).to_json(out / "config.json")
    summary = {"steps": step, "planned_steps": cfg.steps, "stopped_early": stopped_early,
               "complete": step == total and not stopped_early, "budget": cfg.budget,
               "budget_minutes": cfg.max_minutes, "fitted_steps": total if planner is not None else None,
               "plans": planner.plans if planner is not None else [],
               "minutes": (_clock() - t0) / 60, "params": n_params, "distributed": cfg.distributed,
               "processes": runtime.world, "optimizer": type(runtime.stepping_optimizer(optimizer)).__name__,
               "precision": "bf16" if runtime.bf16 else "fp32"}
    atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    return Paths.last_checkpoint(out).resolve()
