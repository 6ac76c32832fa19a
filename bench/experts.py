"""Success rates of the scripted experts on the evaluation seeds (the reference a policy is compared with).

Runs :func:`vlaforge.eval.rollout.expert_baseline` (no rendering) on ``--episodes`` seeds from ``EVAL_SEED_START``,
summarizes per task and, where the env has task groups (Meta-World's difficulties), per group with the mean of the
group means, and writes ``bench/results/experts_<env>.json``.

    python bench/experts.py --env pusht --tasks pusht --episodes 50
    python bench/experts.py --env metaworld --tasks mt50 --episodes 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vlaforge.eval.envs import ENVS
from vlaforge.eval.report import machine
from vlaforge.eval.rollout import EVAL_SEED_START, expert_baseline, print_table, summarize


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="pusht")
    ap.add_argument("--tasks", default="pusht")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed-start", type=int, default=EVAL_SEED_START)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    env = ENVS.get(args.env)()
    tasks = env.task_names(args.tasks)
    t0 = time.process_time(), time.perf_counter()
    results = expert_baseline(env, tasks, args.episodes, args.seed_start)
    cpu, wall = time.process_time() - t0[0], time.perf_counter() - t0[1]
    summary = summarize(results, env.task_groups())
    summary.pop("episodes")  # per task is enough here
    print_table(summary, title=f"scripted experts on {args.env} (seeds {args.seed_start}+)")
    out = Path(args.out or Path(__file__).parent / "results" / f"experts_{args.env}.json")
    record = {"env": env.to_dict(), "tasks_spec": args.tasks, "episodes_per_task": args.episodes,
              "seed_start": args.seed_start, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
              "command": "python bench/experts.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), **summary}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
