"""vlaforge collect ENV --tasks mt10 --episodes 50 --out data/mt10 [--env.image_size=128 ...]"""

from __future__ import annotations

from vlaforge.cli.common import setup_logging, to_draccus
from vlaforge.config import parse_args
from vlaforge.eval.collect import CollectConfig, run_collect


def main(argv: list[str]) -> int:
    setup_logging()
    cfg = parse_args(CollectConfig, to_draccus(argv, positionals=["env.type"], flags=["overwrite"]))
    summary = run_collect(cfg)
    for s in summary:
        print(f"{s.task:<28} kept {s.kept}/{s.attempts} attempts, mean length {s.mean_length:.0f}  ({s.instruction})")
    print(f"dataset written to {cfg.out}")
    return 0
