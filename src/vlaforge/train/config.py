"""Training configuration: the policy, the data, the optimizer and the loop, as one frozen tree."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vlaforge.config import ConfigBase
from vlaforge.policy import PolicyConfig


@dataclass(frozen=True)
class OptimConfig(ConfigBase):
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    # Separate learning rates (None: `lr`). The groups: the VLM (vision tower + LM), the projector (the
    # vision->LM projector and the proprio encoder) and the head (action head, reasoning FiLM).
    lr_backbone: float | None = None
    lr_projector: float | None = None
    lr_head: float | None = None
    # torch's fused AdamW kernel (one pass over all parameters instead of a loop of small ops per tensor: the
    # quick start's optimizer step 0.30 -> 0.09 s on one CPU core). None: fused wherever every trainable parameter
    # is a plain floating tensor on CPU or CUDA (sharded FSDP parameters keep torch's default).
    fused: bool | None = None

    def validate(self) -> None:
        self.check(self.lr > 0, "lr", "> 0")
        for name in ("lr_backbone", "lr_projector", "lr_head"):
            v = getattr(self, name)
            self.check(v is None or v >= 0, name, ">= 0 or None")
        self.check(self.weight_decay >= 0, "weight_decay", ">= 0")
        self.check(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        self.check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        self.check(self.grad_clip > 0, "grad_clip", "> 0")


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    path: str = ""  # LeRobot v3 dataset directory (set by --data); with a named mixture, the folder holding them
    format: str = "auto"  # a registered dataset format (`vlaforge list formats`); auto: the one that detects it
    mixture: dict[str, float] = field(default_factory=dict)  # dataset dir -> weight (names are the dir names)
    mixture_name: str = ""  # a named mixture (vlaforge.data.rlds.MIXTURES); its datasets live in `path`/<name>
    balance: bool = False  # mixture weights times dataset sizes (OpenVLA's balance_weights)
    unnorm_key: str = ""  # mixtures: whose statistics the checkpoint uses (default: the heaviest dataset)
    shift_pad: int = 4  # random-shift image augmentation in pixels (0 = off)
    crop_scale: float = 1.0  # random resized crop keeping this fraction of the area at least (1 = off)
    rotate_deg: float = 0.0  # random rotation in [-deg, deg] (0 = off)
    color_jitter: float = 0.0  # brightness/contrast/saturation factors in [1-x, 1+x], hue +-x/4 (0 = off)
    num_workers: int = 0
    video_cache: str = "auto"  # auto (preload if it fits, else seek) | preload | episode | seek | disk
    max_cache_mb: float = 512.0  # decoded-video cache budget in RAM (episode|seek|disk), split evenly over the workers
    cache_dir: str = ""  # video_cache=disk: directory of decoded frames (default: <dataset>/.frame_cache)
    disk_cache_mb: float = 10240.0  # video_cache=disk: cap of that directory (shared by the workers)
    clip_frames: int = 1  # >1: draw k neighbouring frames per clip (amortises seek decodes; see train/data.py)
    shuffle_buffer: int = 256  # positions over which the clip sampler shuffles (>= batch size)

    def validate(self) -> None:
        self.check(self.shift_pad >= 0, "shift_pad", ">= 0")
        self.check(0 < self.crop_scale <= 1, "crop_scale", "in (0, 1]")
        self.check(0 <= self.rotate_deg <= 180, "rotate_deg", "in [0, 180]")
        self.check(0 <= self.color_jitter < 1, "color_jitter", "in [0, 1)")
        self.check(self.num_workers >= 0, "num_workers", ">= 0")
        self.check(not (self.mixture and self.mixture_name), "mixture", "either mixture or mixture_name, not both")
        self.check(self.video_cache in ("auto", "preload", "episode", "seek", "disk"), "video_cache",
                   "auto | preload | episode | seek | disk")
        self.check(self.max_cache_mb > 0, "max_cache_mb", "> 0")
        self.check(self.disk_cache_mb > 0, "disk_cache_mb", "> 0")
        self.check(self.clip_frames >= 1, "clip_frames", ">= 1")
        self.check(self.shuffle_buffer >= 1, "shuffle_buffer", ">= 1")


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out: str = ""  # run directory (set by --out)
    init_from: str | None = None  # start from this checkpoint's architecture and weights (fine-tuning)
    resume: bool = False  # continue the run in `out` from its last checkpoint
    steps: int = 2000
    batch_size: int = 32
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    keep_last: int = 2  # periodic checkpoints kept on disk (the final one is always kept)
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    max_minutes: float | None = None  # wall-clock budget; training saves and stops when it runs out
    # what the budget does to the schedule: stop (the schedule spans `steps`; a slow machine stops before its decay)
    # | fit (the step time is measured and the warmup + cosine laid out to end at the budget: fewer steps if needed)
    budget: str = "stop"
    stop_at: int | None = None  # save and stop after this step (the schedule still spans `steps`); --resume later
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights and optimizer state stay fp32) | auto (bf16 where fast)
    grad_accum: int = 1  # micro-batches of `batch_size` per optimizer step
    ema: float = 0.0  # EMA decay of the weights (DexVLA: 0.9999); when on, checkpoints and eval use the EMA
    distributed: str = "none"  # none | ddp | fsdp | deepspeed (launch with `accelerate launch` or `torchrun`)
    deepspeed_config: str = ""  # a DeepSpeed JSON (ZeRO-2/3) for distributed=deepspeed
    wandb: bool = False  # also log to Weights & Biases (WANDB_MODE=offline works without network)
    wandb_project: str = "vlaforge"

    def validate(self) -> None:
        self.check(self.steps >= 1, "steps", ">= 1")
        self.check(self.batch_size >= 1, "batch_size", ">= 1")
        self.check(self.save_every >= 1, "save_every", ">= 1")
        self.check(self.log_every >= 1, "log_every", ">= 1")
        self.check(self.keep_last >= 1, "keep_last", ">= 1")
        self.check(self.stop_at is None or 1 <= self.stop_at <= self.steps, "stop_at", f"in [1, steps={self.steps}]")
        self.check(self.precision in ("fp32", "bf16", "auto"), "precision", "fp32 | bf16 | auto")
        self.check(self.budget in ("stop", "fit"), "budget", "stop | fit")
        self.check(self.budget == "stop" or self.max_minutes is not None, "budget",
                   "'stop' without max_minutes (budget=fit lays the schedule out to end at max_minutes)")
        self.check(self.grad_accum >= 1, "grad_accum", ">= 1")
        self.check(0 <= self.ema < 1, "ema", "in [0, 1)")
        self.check(self.distributed in ("none", "ddp", "fsdp", "deepspeed"), "distributed",
                   "none | ddp | fsdp | deepspeed")
        self.check(self.distributed != "deepspeed" or bool(self.deepspeed_config), "deepspeed_config",
                   "a DeepSpeed JSON file when distributed=deepspeed")


# What `--resume` may change. The data stream (data, batch size, accumulation, seed), the model and the EMA are
# fixed by the checkpoint: changing them would make another experiment (start one with --init_from). The rest
# (the schedule, the optimizer's hyperparameters, the loop's intervals and budgets, the engine) applies from the
# resumed step on and is recorded in the run's config.json.
RESUME_CHANGEABLE = ("steps", "stop_at", "max_minutes", "budget", "save_every", "log_every", "keep_last", "threads",
                     "precision", "distributed", "deepspeed_config", "wandb", "wandb_project", "out", "resume",
                     "optim.", "data.num_workers", "data.video_cache",
                     "data.max_cache_mb", "data.cache_dir", "data.disk_cache_mb")
_ROBOT_FIELDS = ("cameras", "state_dim", "action_dim")  # filled from the dataset when the run starts


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and not (prefix == "data." and k == "mixture"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_changes(saved: TrainConfig, new: TrainConfig, step: int) -> dict[str, tuple[Any, Any]]:
    """The fields ``new`` changes in the run ``saved`` resumed at ``step``: ``{field: (old, new)}``.

    Raises :class:`ValueError` (one line) naming every field a resume may not change, and for ``steps`` before
    the checkpoint's step or a new ``stop_at`` at or before it.
    """
    policy = new.policy
    if saved.init_from:  # fine-tuning: the architecture came from init_from's checkpoint, not from `policy`
        policy = saved.policy
    else:
        policy = policy.replace(**{f: getattr(saved.policy, f) for f in _ROBOT_FIELDS})
    old_d = json.loads(json.dumps(saved.to_dict()))
    new_d = json.loads(json.dumps(new.replace(policy=policy).to_dict()))
    a, b = _flat(old_d), _flat(new_d)
    changed = {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
    refused = [k for k in changed if not any(k == c or (c.endswith(".") and k.startswith(c))
                                             for c in RESUME_CHANGEABLE)]
    if refused:
        parts = ", ".join(f"{k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise ValueError(f"--resume: the run's config.json fixes {parts} (a resumed run keeps its data, batch size, "
                         f"seed, model and EMA; start a new run with --init_from CHECKPOINT to change them)")
    if new.steps < step:
        raise ValueError(f"--resume: steps: expected >= {step} (the checkpoint's step), got {new.steps}")
    if "stop_at" in changed and new.stop_at is not None and new.stop_at <= step:
        raise ValueError(f"--resume: stop_at: expected > {step} (the checkpoint's step), got {new.stop_at}")
    return {k: v for k, v in changed.items() if k not in ("resume", "out")}
