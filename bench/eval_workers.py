"""Evaluation throughput by worker count: episodes/hour and env steps/s of ``evaluate`` for ``--workers`` 1, 2, ...

The policy is a tiny random one (uniform actions from a seeded stream, a chunk of 8, 4 executed), so the numbers
are the simulator's and the worker plumbing's, not a VLA's: with a real policy add its batched inference time
(one call per ``exec_steps`` steps for up to ``--parallel-envs`` observations). Every worker count runs the same
episodes (same seeds, same batches), and the script checks that the results and every observation the policy was
given (a SHA-1 over them) are identical. Each count is timed
from the pool's start (process spawn + env builds included) to the last episode; CPU ms/step (this process and
its workers) shows the cost of the worker plumbing even on a busy machine, where wall time cannot. Writes
``bench/results/eval_workers.json`` and prints a Markdown table.

    python bench/eval_workers.py                                       # Meta-World reach + drawer-close, 96 px
    python bench/eval_workers.py --env libero --tasks libero_object --episodes 2 --image-size 0 --max-steps 0
    python bench/eval_workers.py --workers 1,2,ray:2 --ray local --out bench/results/eval_workers_ray.json

``ray:N``: N Ray actors on the cluster at ``--ray`` (``local`` starts one; its start is in the startup time). Their
CPU time is not this process's children's, so CPU ms/step is left out for them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from vlaforge.eval.envs import ENVS
from vlaforge.eval.rollout import evaluate
from vlaforge.eval.workers import make_pool
from vlaforge.types import RobotSpec


class RandomPolicy:
    """Uniform actions in [-scale, scale] from one seeded stream (the same batches give the same actions); keeps a
    digest of every observation it is given, so runs can be compared observation for observation."""

    def __init__(self, robot: RobotSpec, chunk: int = 8, exec_steps: int = 4, scale: float = 0.5) -> None:
        self.robot, self.chunk, self.exec_steps, self.scale = robot, chunk, exec_steps, scale
        self.rng = np.random.default_rng(0)
        self.digest = hashlib.sha1()

    def infer_batch(self, observations: list) -> np.ndarray:
        for obs in observations:
            for _, v in sorted(obs.items()):
                if isinstance(v, np.ndarray):
                    self.digest.update(np.ascontiguousarray(v).tobytes())
        shape = (len(observations), self.chunk, self.robot.action_dim)
        return self.rng.uniform(-self.scale, self.scale, shape).astype(np.float32)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the workers, once joined): robust to a busy box."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(args: argparse.Namespace, spec: str) -> dict:
    on_ray = spec.startswith("ray:")
    workers = int(spec.removeprefix("ray:"))
    overrides = {"image_size": args.image_size} if args.image_size else {}
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    env = ENVS.get(args.env)(**overrides)
    tasks = env.task_names(args.tasks)
    t0, cpu0 = time.perf_counter(), _cpu()
    with make_pool(env, min(args.parallel_envs, args.episodes), workers, ray=args.ray if on_ray else "") as pool:
        policy = RandomPolicy(pool.make(tasks[0]).robot)
        t1 = time.perf_counter()
        results = evaluate(policy, env, tasks, args.episodes, parallel_envs=args.parallel_envs, pool=pool,
                           show_progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    steps = sum(r.steps for r in results)
    return {"workers": spec, "episodes": len(results), "steps": steps, "wall_s": round(wall, 2),
            "startup_s": round(t1 - t0, 2), "episodes_per_hour": round(len(results) * 3600 / wall, 1),
            "steps_per_s": round(steps / wall, 1), "cpu_s": None if on_ray else round(cpu, 1),
            "cpu_ms_per_step": None if on_ray else round(1000 * cpu / steps, 2),
            "observations_sha1": policy.digest.hexdigest(),
            "results": [(r.task, r.seed, r.success, r.steps) for r in results]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="metaworld")
    ap.add_argument("--tasks", default="reach,drawer-close")
    ap.add_argument("--episodes", type=int, default=4, help="per task")
    ap.add_argument("--workers", default="1,2", help="comma-separated; ray:N = N Ray actors on --ray")
    ap.add_argument("--ray", default="local", help="Ray cluster address for the ray:N entries (local: start one)")
    ap.add_argument("--parallel-envs", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=96, help="0: the env's default")
    ap.add_argument("--max-steps", type=int, default=100, help="0: the env's (suite's) default")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_workers.json"))
    args = ap.parse_args()
    rows = [run(args, w) for w in args.workers.split(",")]
    same = all(r["results"] == rows[0]["results"] and r["observations_sha1"] == rows[0]["observations_sha1"]
               for r in rows)
    load = os.getloadavg()
    meta = {"env": args.env, "tasks": args.tasks, "episodes_per_task": args.episodes,
            "parallel_envs": args.parallel_envs, "image_size": args.image_size, "max_steps": args.max_steps,
            "cpus": os.cpu_count(), "load_avg_1_5_15": [round(x, 1) for x in load], "python": platform.python_version(),
            "identical_results": same, "command": "python bench/eval_workers.py " + " ".join(
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "out")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "runs": [{k: v for k, v in r.items() if k != "results"} for r in rows]},
                              indent=2))
    print(f"| workers | episodes | env steps | wall s (startup s) | episodes/hour | steps/s | CPU ms/step |  "
          f"({args.env}, {args.parallel_envs} envs, load {load[0]:.1f} on {os.cpu_count()} CPUs)")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['episodes']} | {r['steps']} | {r['wall_s']} ({r['startup_s']}) | "
              f"{r['episodes_per_hour']} | {r['steps_per_s']} | {r['cpu_ms_per_step'] or '-'} |")
    print(f"identical results and observations across worker counts: {same}")
    if not same:
        raise SystemExit("results differ between worker counts")


if __name__ == "__main__":
    main()
