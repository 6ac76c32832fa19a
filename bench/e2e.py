"""End to end on one simulator: scripted demos -> a tiny VLA -> evaluation, with and without ACT temporal ensembling.

Each stage is the `vlaforge` command a user would type, run in a subprocess with its output in a log under
``--work``; the stages that finished are reused on a re-run (the dataset when its ``meta/info.json`` exists, the
training when its ``train_summary.json`` says complete, an evaluation when its ``eval.json`` exists), so a run cut
short resumes where it stopped. Training runs a fixed number of steps (``--steps``; no wall-clock budget: the result
does not depend on how busy the machine is, the wall time is reported beside it).

    python bench/e2e.py --env pusht --tasks pusht --demos 100 --steps 800 --episodes 20 --ensemble 8 \\
        --set backbone.vision_stem=conv --set head.type=mlp --set backbone.readout=act
    python bench/e2e.py --env aloha --tasks transfer_cube --demos 30 --env-set image_height=96 ...
    python bench/e2e.py --env libero --tasks libero_object:0,libero_object:1 --demos 12 --episodes 10 ...

Writes ``--out`` (JSON: settings, dataset size, per-stage wall and CPU minutes, each evaluation's per-task success
with its Wilson interval and the scripted expert's on the same seeds) and a Markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage(name: str, cmd: list[str], log: Path, env: dict[str, str], timings: dict[str, Any]) -> None:
    """Run one `vlaforge` command with its output in ``log``; its wall and CPU minutes into ``timings``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {' '.join(cmd[2:])}  (log: {log})", file=sys.stderr)
    t, cpu = time.time(), _cpu_children()
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
    timings[name] = {"wall_minutes": (time.time() - t) / 60, "cpu_minutes": (_cpu_children() - cpu) / 60}
    if rc != 0:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise SystemExit(f"e2e: stage {name} failed (exit {rc}): {tail[0][:300]} (log: {log})")


def eval_rows(path: Path) -> dict[str, Any]:
    ev = json.loads(path.read_text())
    keys = ("success_rate", "successes", "episodes", "ci95", "mean_steps", "mean_score")  # score: PushT's coverage
    tasks = {t: {k: r[k] for k in keys if k in r} for t, r in ev["tasks"].items()}
    out = {"mean_success": ev["mean_success"], "tasks": tasks}
    if ev.get("expert"):
        out["expert"] = {"mean_success": ev["expert"]["mean_success"],
                         "tasks": {t: r["success_rate"] for t, r in ev["expert"]["tasks"].items()}}
    return out


def markdown(result: dict[str, Any]) -> str:
    evals = result["evals"]
    expert = next((e["expert"] for e in evals.values() if e.get("expert")), None)
    cols = list(evals) + (["scripted expert"] if expert else [])
    lines = [f"End to end on `{result['env']}` ({result['demos']} scripted demos per task, {result['steps']} training "
             f"steps of batch {result['batch_size']}, {result['episodes']} episodes per task): success % (95 % CI)",
             "", "| task | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    tasks = list(next(iter(evals.values()))["tasks"])
    for t in [*tasks, "mean"]:
        cells = []
        for e in evals.values():
            if t == "mean":
                cells.append(f"**{100 * e['mean_success']:.0f}**")
            else:
                r = e["tasks"][t]
                cells.append(f"{100 * r['success_rate']:.0f} ({100 * r['ci95'][0]:.0f}–{100 * r['ci95'][1]:.0f})"
                             + (f", score {r['mean_score']:.2f}" if "mean_score" in r else ""))
        if expert:
            cells.append(f"{100 * (expert['mean_success'] if t == 'mean' else expert['tasks'][t]):.0f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "| stage | wall (min) | CPU (min) |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['wall_minutes']:.1f} | {v['cpu_minutes']:.1f} |" for k, v in result["timings"].items()]
    lines += ["", f"Policy: `{result['preset']}` {' '.join('--' + s for s in result['set'])}; "
                  f"{result['params'] / 1e6:.1f} M parameters; final loss {result['final_loss']:.4f}.",
              f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", required=True, help="aloha | pusht | libero | metaworld")
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--demos", type=int, default=50, help="successful scripted demos per task")
    ap.add_argument("--preset", default="quickstart_tokens")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a `vlaforge train` override (as --KEY=VALUE); repeatable")
    ap.add_argument("--env-set", action="append", default=[], metavar="KEY=VALUE",
                    help="an env option for collect and eval (as --env.KEY=VALUE); repeatable")
    ap.add_argument("--steps", type=int, default=800, help="training steps (fixed; no wall-clock budget)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task")
    ap.add_argument("--ensemble", type=int, default=0, help="K > 0: also evaluate with ACT temporal ensembling")
    ap.add_argument("--ensemble-temp", type=float, default=0.01)
    ap.add_argument("--no-expert", action="store_true",
                    help="skip the scripted expert on the evaluation's seeds (LIBERO's takes as long as the policy)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of every stage (default: torch's)")
    ap.add_argument("--workers", type=int, default=1, help="evaluation env processes")
    ap.add_argument("--work", default=None, help="default: runs/e2e_<env>")
    ap.add_argument("--out", default=None, help="default: bench/results/e2e_<env>.json")
    args = ap.parse_args(argv)

    work = Path(args.work or f"runs/e2e_{args.env}").resolve()
    out = Path(args.out or BENCH / "results" / f"e2e_{args.env}.json")
    env = {**os.environ, "VLAFORGE_NO_PROGRESS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    if args.threads:  # torch reads these when each stage's process starts
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    vf = [sys.executable, "-m", "vlaforge.cli.main"]
    env_opts = [f"--env.{s}" for s in args.env_set]
    data, run_dir = work / "data", work / "train"
    timings_path = work / "timings.json"
    timings: dict[str, Any] = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def save() -> None:
        work.mkdir(parents=True, exist_ok=True)
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")

    if not (data / "meta" / "info.json").is_file():
        stage("collect", [*vf, "collect", args.env, "--tasks", args.tasks, "--episodes", str(args.demos),
                          "--out", str(data), "--overwrite", *env_opts], work / "collect.log", env, timings)
        save()
    summary = run_dir / "train_summary.json"
    if not (summary.is_file() and json.loads(summary.read_text()).get("complete")):
        train_args = [f"--data.path={data}", f"--out={run_dir}", f"--steps={args.steps}",
                      f"--batch_size={args.batch}", *(f"--{s}" for s in args.set)]
        if args.threads:
            train_args.append(f"--threads={args.threads}")
        if (run_dir / "metrics.jsonl").is_file():
            train_args.append("--resume=true")
        stage("train", [*vf, "train", args.preset, *train_args], work / "train.log", env, timings)
        save()
    ckpt = run_dir / "checkpoints" / "last"
    runs = {"receding horizon": (work / "eval", [f"--expert={str(not args.no_expert).lower()}", "--videos=1"])}
    if args.ensemble:
        runs[f"ensemble K={args.ensemble}"] = (work / "eval_ensemble", [
            f"--ensemble={args.ensemble}", f"--ensemble_temp={args.ensemble_temp}", "--expert=false", "--videos=1"])
    for eval_dir, extra in runs.values():
        if not (eval_dir / "eval.json").is_file():
            key = eval_dir.name
            stage(key, [*vf, "eval", str(ckpt.resolve()), "--env", args.env, "--tasks", args.tasks,
                        f"--episodes={args.episodes}", f"--out={eval_dir}", f"--workers={args.workers}", *extra,
                        *env_opts], work / f"{key}.log", env, timings)
            save()

    train = json.loads(summary.read_text())
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    info = json.loads((data / "meta" / "info.json").read_text())
    from vlaforge.eval.report import machine

    result = {"bench": "e2e", "env": args.env, "tasks": args.tasks, "demos": args.demos, "preset": args.preset,
              "set": args.set, "env_set": args.env_set, "steps": train["steps"], "batch_size": args.batch,
              "params": train["params"], "final_loss": json.loads(metrics[-1])["loss"],
              "episodes": args.episodes, "ensemble": args.ensemble, "ensemble_temp": args.ensemble_temp,
              "dataset": {"episodes": info["total_episodes"], "frames": info["total_frames"]},
              "evals": {name: eval_rows(d / "eval.json") for name, (d, _) in runs.items()},
              "timings": timings, "threads": args.threads, "machine": machine(),
              "command": "python bench/e2e.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
