"""Does a Meta-World policy read the goal from its cameras? Where the hand ends against where the goal is (issue 15).

A policy that localises the goal ends near it wherever it is; one that does not ends near the demonstrations' mean
endpoint whatever the goal. For each unseen seed this rolls a checkpoint out on one task (chunks executed as the
policy's ``exec_steps``) and records the goal (the env's target position, which the policy never sees), the hand's
final position and its closest approach. The spread of the final hand positions against the spread of the goals
says which of the two it is.

    python bench/goal_endpoints.py runs/quickstart/train/checkpoints/last --task reach-v3 --episodes 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vlaforge.eval.envs.metaworld import MetaWorldConfig
from vlaforge.eval.rollout import EVAL_SEED_START
from vlaforge.inference import LocalPolicy


def rollout(policy: LocalPolicy, env: object, seed: int, exec_steps: int) -> dict:
    obs = env.reset(seed)
    goal = np.asarray(env._env._target_pos, dtype=float).copy()
    closest, success, steps = np.inf, False, 0
    while steps < env.max_steps and not success:
        for action in policy.infer(obs)["actions"][:exec_steps]:
            obs, success, _ = env.step(action)
            steps += 1
            closest = min(closest, float(np.linalg.norm(env._obs[:3] - goal)))
            if success or steps >= env.max_steps:
                break
    hand = np.asarray(env._obs[:3], dtype=float)
    return {"seed": seed, "success": success, "steps": steps, "goal": goal.round(4).tolist(),
            "hand_end": hand.round(4).tolist(), "end_distance": float(np.linalg.norm(hand - goal)),
            "closest": closest}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed-start", type=int, default=EVAL_SEED_START)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON (default: print only)")
    args = ap.parse_args(argv)
    if not Path(args.checkpoint).exists():
        sys.exit(f"goal_endpoints: checkpoint {args.checkpoint}: no such file or directory")
    torch.set_num_threads(args.threads)
    policy = LocalPolicy.load(args.checkpoint)
    exec_steps = policy.policy.cfg.exec_steps
    env = MetaWorldConfig().make(args.task)
    try:
        rows = [rollout(policy, env, args.seed_start + i, exec_steps) for i in range(args.episodes)]
    finally:
        env.close()
    goals, ends = np.array([r["goal"] for r in rows]), np.array([r["hand_end"] for r in rows])
    summary = {"checkpoint": args.checkpoint, "task": args.task, "exec_steps": exec_steps,
               "success_rate": float(np.mean([r["success"] for r in rows])),
               "goal_std_xyz": goals.std(0).round(4).tolist(), "hand_end_std_xyz": ends.std(0).round(4).tolist(),
               "corr_goal_hand_end_xyz": [float(np.corrcoef(goals[:, i], ends[:, i])[0, 1]) for i in range(3)],
               "mean_end_distance": float(np.mean([r["end_distance"] for r in rows])), "episodes": rows}
    for r in rows:
        print(f"seed {r['seed']}: {'success' if r['success'] else 'failure'} in {r['steps']} steps, goal "
              f"{r['goal']}, hand ends {r['hand_end']} ({r['end_distance']:.3f} m; closest {r['closest']:.3f} m)")
    print(f"{args.task}: success {summary['success_rate']:.0%}; spread (std, m) of the goals "
          f"{summary['goal_std_xyz']} vs of the hand's end {summary['hand_end_std_xyz']}; correlation per axis "
          f"{np.round(summary['corr_goal_hand_end_xyz'], 2).tolist()}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
