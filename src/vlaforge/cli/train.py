"""vlaforge train PRESET --data DATASET --out RUN_DIR [--resume] [--head.type=dit --steps=2000 ...]

Fields of the policy can be given without the ``policy.`` prefix (``--head.num_steps=8``, ``--chunk=16``).

--resume continues the run in RUN_DIR from its last checkpoint, configured as its config.json says. Options given
with it apply from the resumed step on and are recorded (config.json, RUN_DIR/resumes.jsonl, the log): --steps,
--stop_at, --max_minutes, --save_every, --log_every, --keep_last, --threads, --precision, --distributed,
--deepspeed_config, --wandb, --wandb_project, --data.num_workers, --data.video_cache, and --lr / every --optim.*
(the schedule continues at the resumed step with the new learning rates). Options that would make it another
experiment are refused, naming them: the data (--data and the other --data.* options), --batch_size,
--grad_accum, --seed, --ema, --init_from and the model (--head.*, --backbone.*, --chunk, ...); start a new run
with --init_from RUN_DIR/checkpoints/last for those. --steps may not end before the checkpoint's step.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from vlaforge.cli.common import setup_logging, to_draccus
from vlaforge.config import parse_overrides
from vlaforge.presets import PRESETS, get_preset
from vlaforge.train.config import TrainConfig

ALIASES = {"data": "data.path", "lr": "optim.lr"}
PREFIXES = {"head": "policy.head", "backbone": "policy.backbone", "chunk": "policy.chunk",
            "history": "policy.history", "exec_steps": "policy.exec_steps"}


def main(argv: list[str]) -> int:
    setup_logging()
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip() + f"\n\npresets: {', '.join(PRESETS.names())}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    preset, rest = argv[0], argv[1:]
    args = to_draccus(rest, aliases=ALIASES, prefixes=PREFIXES, flags=["resume"])
    cfg = parse_overrides(get_preset(preset), args)
    if cfg.resume:  # the run as configured, with the options given now (train() refuses those a resume can't change)
        saved = Path(cfg.out) / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {saved} not found")
        cfg = parse_overrides(TrainConfig.from_json(saved), args)
    from vlaforge.train.trainer import train

    ckpt = train(cfg)
    print(f"final checkpoint: {ckpt}", file=sys.stderr)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # Every file is written (checkpoint, metrics, summary). Tearing down the interpreter with a live process
        # group (or right after destroying it) sometimes aborts a worker in C++ ("terminate called without an
        # active exception", exit -6: 2 of ~40 two-process test runs here, DDP and DeepSpeed alike), which turns a
        # finished run into a failed one. So the processes meet once more and leave without that teardown.
        dist.barrier()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
