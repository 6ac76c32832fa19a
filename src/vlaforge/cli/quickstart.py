"""vlaforge quickstart: collect Meta-World demos -> train a tiny VLA -> evaluate -> report, on a CPU.

Re-running continues where it stopped: complete data is reused, an interrupted training resumes, and
evaluation runs again. ``--overwrite`` starts from scratch: it removes what a quick start wrote there (its dataset,
training run, videos and report) and nothing else, and refuses a folder that does not look like a quick start's.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vlaforge.cli.common import setup_logging, to_draccus
from vlaforge.config import ConfigBase, Paths, parse_args, parse_overrides
from vlaforge.data.lerobot import is_own_dataset
from vlaforge.eval.collect import collect
from vlaforge.eval.envs.metaworld import INSTRUCTIONS, MetaWorldConfig
from vlaforge.eval.report import machine, plot_success, write_report
from vlaforge.eval.rollout import EVAL_SEED_START, evaluate, expert_baseline, print_table, summarize
from vlaforge.eval.workers import make_pool
from vlaforge.presets import get_preset


@dataclass(frozen=True)
class QuickstartConfig(ConfigBase):
    out: str = ""  # default: $VLAFORGE_HOME/quickstart (runs/quickstart)
    tasks: str = "mt10"  # Meta-World MT10; or task names, mt50, a difficulty group (easy, medium, hard, very_hard)
    demos: int = 30  # successful scripted demos per task
    eval_episodes: int = 10  # per task
    preset: str = "quickstart_mlp"
    steps: int | None = None  # training steps (default: the preset's)
    max_train_minutes: float = 15.0  # the training budget (its schedule is laid out to end within it): 15 keeps
    #                                  `make demo` (install, collect, train, evaluate) within 30 minutes on 2 cores
    exec_steps: int | None = None  # actions executed per chunk (default: the policy's exec_steps)
    workers: int = 1  # evaluation: processes the envs run in (1: this process); the results do not depend on it
    # more `vlaforge train` options, space-separated KEY=VALUE (short forms as there: "lr=3e-4 chunk=8 head.type=mlp")
    train: str = ""
    overwrite: bool = False

    def validate(self) -> None:
        self.check(self.demos >= 1, "demos", ">= 1")
        self.check(self.eval_episodes >= 1, "eval_episodes", ">= 1")
        self.check(self.workers >= 1, "workers", ">= 1")
        bad = [w for w in self.train.split() if "=" not in w or w.startswith("=")]
        self.check(not bad, "train", "space-separated KEY=VALUE `vlaforge train` options")


def train_overrides(cfg: QuickstartConfig, data: Path, run_dir: Path) -> list[str]:
    """The draccus arguments the quick start trains its preset with: its data, folder and budget, ``--steps``, then
    ``--train``'s options (short forms as ``vlaforge train`` takes them)."""
    from vlaforge.cli.train import ALIASES, PREFIXES

    overrides = [f"--data.path={data}", f"--out={run_dir}", f"--max_minutes={cfg.max_train_minutes}",
                 "--budget=fit"]
    if cfg.steps is not None:
        overrides.append(f"--steps={cfg.steps}")
    return overrides + to_draccus([f"--{w.removeprefix('--')}" for w in cfg.train.split()], aliases=ALIASES,
                                  prefixes=PREFIXES)


# what a quick start writes into its folder; --overwrite removes these and nothing else
OUTPUT_FILES = ("report.md", "report.json", "success.png")
OUTPUT_DIRS = ("data", "train", "videos")


def clear_outputs(out: Path) -> None:
    """Remove a previous quick start's outputs from ``out``; other files there stay. A folder that holds none of
    them (or a ``data``/``train`` that vlaforge did not write) is refused before anything is removed."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"--out {out}: is a file, expected a quick start folder")
    if not any(out.iterdir()):
        return
    data, run_dir = out / "data", out / "train"
    if data.exists() and any(data.iterdir()) and not is_own_dataset(data):
        raise FileExistsError(f"--overwrite: {data} is not a dataset vlaforge wrote; refusing to delete it")
    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / "metrics.jsonl").is_file():
        raise FileExistsError(f"--overwrite: {run_dir} is not a vlaforge training run; refusing to delete it")
    ours = [out / n for n in (*OUTPUT_FILES, *OUTPUT_DIRS) if (out / n).exists()]
    if not ours:
        raise FileExistsError(f"--overwrite: {out} holds no quick start outputs ({', '.join(OUTPUT_DIRS)}, "
                              f"report.md); refusing to write into a folder vlaforge did not create")
    for path in ours:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def run(cfg: QuickstartConfig, argv: list[str]) -> dict:
    from vlaforge.data.lerobot import LeRobotDataset
    from vlaforge.inference import LocalPolicy
    from vlaforge.train.trainer import train

    out = Path(cfg.out) if cfg.out else Paths().run("quickstart")
    env = MetaWorldConfig()
    tasks = env.task_names(cfg.tasks)
    data, run_dir = out / "data", out / "train"
    # the training options are parsed before anything runs: a typo in --train fails now, not after the collection
    tcfg = parse_overrides(get_preset(cfg.preset), train_overrides(cfg, data, run_dir))
    if cfg.overwrite:
        clear_outputs(out)
    timings: dict[str, float] = {}

    t = time.time()
    if not (data / "meta" / "info.json").is_file():
        print(f"[1/3] collecting {cfg.demos} demos x {len(tasks)} tasks -> {data}", file=sys.stderr)
        collect(env, tasks, cfg.demos, data, overwrite=True)
    timings["collect"] = (time.time() - t) / 60

    t = time.time()
    summary_path = run_dir / "train_summary.json"
    done = summary_path.is_file() and json.loads(summary_path.read_text()).get("complete", False)
    if not done:
        resume = Paths.last_checkpoint(run_dir).exists()
        steps = (f"the steps that fit {cfg.max_train_minutes:g} minutes (at most {tcfg.steps})" if tcfg.budget == "fit"
                 else f"{tcfg.steps} steps")
        print(f"[2/3] training {cfg.preset} for {steps} -> {run_dir}" + (" (resuming)" if resume else ""),
              file=sys.stderr)
        train(tcfg.replace(resume=resume))
    timings["train"] = (time.time() - t) / 60
    train_summary = json.loads(summary_path.read_text())

    t = time.time()
    ckpt = Paths.last_checkpoint(run_dir).resolve()
    print(f"[3/3] evaluating {ckpt.name} on {cfg.eval_episodes} episodes x {len(tasks)} tasks", file=sys.stderr)
    policy = LocalPolicy.load(ckpt)
    with make_pool(env, min(10, cfg.eval_episodes), cfg.workers) as pool:
        results = evaluate(policy, env, tasks, cfg.eval_episodes, exec_steps=cfg.exec_steps, video_dir=out / "videos",
                           videos_per_task=1, pool=pool)
        summary = summarize(results)
        reference = summarize(expert_baseline(env, tasks, cfg.eval_episodes, pool=pool))
    timings["eval"] = (time.time() - t) / 60
    print_table(summary, reference, title="quick start: success on unseen seeds")

    metrics = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    meta = LeRobotDataset(data, video_cache="episode").meta
    report = {
        "preset": cfg.preset, "params": train_summary["params"], "batch_size": tcfg.batch_size,
        "dataset": {"episodes": meta.num_episodes, "frames": meta.num_frames, "path": str(data)},
        "eval": summary, "expert": reference, "eval_episodes": cfg.eval_episodes, "seed_start": EVAL_SEED_START,
        "train": train_summary, "final_loss": metrics[-1]["loss"],
        "instructions": {t_: INSTRUCTIONS[t_] for t_ in tasks},
        "loss_png": run_dir / "loss.png", "success_png": plot_success(summary, reference, out / "success.png"),
        "videos": sorted(str(p) for p in (out / "videos").glob("*.mp4")),
        "timings": {**timings, "total": sum(timings.values())}, "machine": machine(),
        "command": "vlaforge quickstart " + " ".join(argv), "checkpoint": str(ckpt),
    }
    md = write_report(out, report)
    print(f"report: {md}  (mean success {summary['mean_success']:.0%})", file=sys.stderr)
    return report


def main(argv: list[str]) -> int:
    setup_logging()
    cfg = parse_args(QuickstartConfig, to_draccus(argv, flags=["overwrite"]))
    run(cfg, argv)
    return 0
