"""Success of the scripted LIBERO expert (``vlaforge.eval.envs.libero_expert``) per task, cameras off.

Episodes use the tasks' fixed initial states in order (the standard protocol's seeds ``EVAL_SEED_START + i``: state
``i``), ten settle steps, the suite's max steps; :func:`vlaforge.eval.rollout.expert_baseline` runs them. The JSON is
rewritten after every task, so an interrupted run keeps what it measured; a re-run skips the tasks already in it.

    nice -n 10 python bench/libero_expert.py --tasks libero_object,libero_spatial --episodes 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vlaforge.eval.envs.libero import LiberoConfig, suite_of
from vlaforge.eval.rollout import expert_baseline, summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="libero_object,libero_spatial")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "libero_expert.json"))
    args = ap.parse_args()
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.exists() else {"tasks": {}}
    cfg = LiberoConfig()
    for task in cfg.task_names(args.tasks):
        if task in done["tasks"] and done["tasks"][task]["episodes"] >= args.episodes:
            continue
        t0 = time.perf_counter()
        try:
            results = expert_baseline(cfg, [task], args.episodes)
        except NotImplementedError as e:  # goals the expert does not script yet
            done["tasks"][task] = {"suite": suite_of(task), "episodes": 0, "unsupported": str(e)}
        else:
            row = summarize(results)["tasks"][task]
            row.update(suite=suite_of(task), wall_s=round(time.perf_counter() - t0, 1))
            done["tasks"][task] = row
        print(task, done["tasks"][task].get("successes"), "/", done["tasks"][task]["episodes"], flush=True)
        suites: dict[str, list[float]] = {}
        for row in done["tasks"].values():
            if row["episodes"]:
                suites.setdefault(row["suite"], []).append(row["success_rate"])
        done["suite_mean"] = {s: sum(v) / len(v) for s, v in suites.items()}
        done["settings"] = {"episodes_per_task": args.episodes, "init": "fixed states 0..N-1", "cameras": "off",
                            "command": f"python bench/libero_expert.py --tasks {args.tasks} --episodes {args.episodes}"}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done, indent=2))


if __name__ == "__main__":
    main()
