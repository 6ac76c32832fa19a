"""vlaforge eval CHECKPOINT --env metaworld --tasks drawer-open,door-open --episodes 10 [--workers N] [--out DIR]
vlaforge eval CHECKPOINT --tasks mt50|mt10|easy|medium|hard|very_hard   (Meta-World: per-group means + their mean)
vlaforge eval CHECKPOINT ... --ensemble=K [--ensemble_temp=0.01]   (ACT temporal ensembling, a query every step)
vlaforge eval CHECKPOINT ... --sampling "num_steps=20 init_noise=0"   (the head's sampling options, this run only)
vlaforge eval CHECKPOINT ... --ray HOST:6379 --workers 32   (envs on a Ray cluster's CPUs; `local` starts one)
vlaforge eval [CHECKPOINT] --remote ws://HOST:PORT ...   (through `vlaforge serve`; API key from $VLAFORGE_API_KEY)"""

from __future__ import annotations

import os

from vlaforge.cli.common import setup_logging, to_draccus
from vlaforge.config import parse_args
from vlaforge.eval.runner import EvalConfig, run_eval


def main(argv: list[str]) -> int:
    setup_logging()
    args = to_draccus(argv, positionals=["checkpoint"], aliases={"env": "env.type"}, flags=["expert"])
    cfg = parse_args(EvalConfig, args)
    if not cfg.remote:
        run_eval(cfg)
        return 0
    from vlaforge.serve.client import RemotePolicy

    # seed=0: the same sampling stream as the LocalPolicy a local `vlaforge eval` builds
    with RemotePolicy(cfg.remote, api_key=os.environ.get("VLAFORGE_API_KEY"), seed=0) as policy:
        run_eval(cfg, policy=policy)
    return 0
