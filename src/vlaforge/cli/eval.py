"""vlaforge eval CHECKPOINT --env metaworld --tasks drawer-open,door-open --episodes 10 [--out DIR]"""

from __future__ import annotations

import draccus

from vlaforge.cli.common import setup_logging, to_draccus
from vlaforge.eval.runner import EvalConfig, run_eval


def main(argv: list[str]) -> int:
    setup_logging()
    args = to_draccus(argv, positionals=["checkpoint"], aliases={"env": "env.type"}, flags=["expert"])
    run_eval(draccus.parse(EvalConfig, args=args))
    return 0
