"""vlaforge train PRESET --data DATASET --out RUN_DIR [--resume] [--head.type=dit --steps=2000 ...]

Fields of the policy can be given without the ``policy.`` prefix (``--head.num_steps=8``, ``--chunk=16``).
"""

from __future__ import annotations

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
    if cfg.resume:  # continue the run as it was configured; only the options given now change
        saved = Path(cfg.out) / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {saved} not found")
        cfg = parse_overrides(TrainConfig.from_json(saved), args)
    from vlaforge.train.trainer import train

    ckpt = train(cfg)
    print(f"final checkpoint: {ckpt}", file=sys.stderr)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # join gloo/NCCL threads before the interpreter exits
        dist.destroy_process_group()
    return 0
