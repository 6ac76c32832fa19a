"""The plain baseline the quick-start VLA must beat (issue 15): a small CNN per camera + proprio + a task embedding.

Same data, same wall-clock budget, same evaluation as ``vlaforge quickstart``: it reads the LeRobot v3 dataset the
quick start collects (or collects one with the same ``collect`` call), trains for ``--minutes`` of wall clock and
evaluates with :func:`vlaforge.eval.rollout.evaluate` on the same tasks, episodes and seeds (``EVAL_SEED_START``+).

Model (1.9 M parameters at the defaults, as the issue's peer): per camera four 3x3 convs (GroupNorm, ReLU;
strides 2, 2, 2, 1) read out by a spatial softmax (expected x, y of learned keypoints, for localisation) and a global
average pool; a proprio MLP; a learned embedding of the dataset's task index; an MLP to a chunk of ``--chunk``
actions. L1 on actions normalised by vlaforge's own pipelines (``meta/stats.json``; padded chunk steps masked),
AdamW, DrQ random-shift augmentation.

The schedule ends at the budget: 20 steps inside the warm-up measure the step time, then the total step count is
fixed so that the cosine decay completes; it is re-planned from the recent step time every tenth of the run, as a
shared machine's speed drifts. Evaluation runs the first ``--exec-steps`` actions of each chunk through vlaforge's
``ActionChunker`` (inside ``evaluate``), on 10 envs in lockstep, with the expert's success on the same seeds beside.

    python bench/peer_cnn.py --data runs/quickstart/data              # the quick start's dataset and budget
    python bench/peer_cnn.py --data runs/peer/mt10 --tasks mt10       # collects MT10 (30 demos/task) if missing
    python bench/peer_cnn.py --data runs/quickstart/data --time-precision 4 --out peer_bf16.json  # fp32 vs bf16 step
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.processors.base import Pipeline, collate
from vlaforge.processors.image import ImageStep, RandomShift
from vlaforge.processors.pipelines import build_pipelines
from vlaforge.types import ACTION, ACTION_IS_PAD, OBS_ENV_STATE, OBS_STATE, TASK, RobotSpec, image_key

MODES = {OBS_STATE: "mean_std", ACTION: "q01_q99"}  # vlaforge's default normalisation (PolicyConfig)


@dataclass(frozen=True)
class PeerConfig:
    cameras: tuple[str, ...]
    state_dim: int
    action_dim: int
    tasks: tuple[str, ...]  # the dataset's task table (instruction strings); the embedding's rows
    chunk: int = 4
    channels: tuple[int, ...] = (16, 32, 64, 128)  # narrow early layers: most of a CPU step is spent there
    keypoints: int = 64
    embed: int = 64  # proprio and task feature width
    hidden: int = 1024
    env_state_dim: int = 0  # > 0: an auxiliary head regresses the environment state (--env-state-loss)


class SpatialSoftmax(nn.Module):
    """Feature map (B, C, H, W) -> the expected image coordinates of ``k`` learned keypoints (B, 2k)."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, k, 1)
        self.log_temp = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        attn = torch.softmax(self.proj(x).flatten(2) / self.log_temp.exp(), dim=-1)  # (B, k, HW)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                                indexing="ij")
        grid = torch.stack([xs.flatten(), ys.flatten()], -1)  # (HW, 2)
        return (attn @ grid).reshape(b, -1)


class CameraEncoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], keypoints: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip((3, *channels[:-1]), channels, strict=True)):
            stride = 2 if i < len(channels) - 1 else 1
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(min(8, c_out), c_out), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.keypoints = SpatialSoftmax(channels[-1], keypoints)
        self.out_dim = 2 * keypoints + channels[-1]

    def forward(self, img: Tensor) -> Tensor:  # (B, 3, H, W) in [0, 1] -> (B, out_dim)
        x = self.convs(img - 0.5)
        return torch.cat([self.keypoints(x), x.mean((2, 3))], -1)


class PeerCNN(nn.Module):
    """Cameras + proprio + task -> a chunk of normalised actions (B, chunk, action_dim)."""

    def __init__(self, cfg: PeerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.task_ids = {t: i for i, t in enumerate(cfg.tasks)}
        self.cams = nn.ModuleDict({c: CameraEncoder(cfg.channels, cfg.keypoints) for c in cfg.cameras})
        self.proprio = nn.Sequential(nn.Linear(cfg.state_dim, cfg.embed), nn.ReLU(), nn.Linear(cfg.embed, cfg.embed))
        self.task = nn.Embedding(len(cfg.tasks), cfg.embed)
        width = sum(e.out_dim for e in self.cams.values()) + 2 * cfg.embed
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(),
                                 nn.Linear(cfg.hidden, cfg.chunk * cfg.action_dim))
        self.env_state = (nn.Sequential(nn.Linear(width, cfg.hidden), nn.ReLU(),
                                        nn.Linear(cfg.hidden, cfg.env_state_dim)) if cfg.env_state_dim else None)

    def _task_index(self, instructions: list[str]) -> Tensor:
        unknown = sorted(set(instructions) - set(self.task_ids))
        if unknown:
            raise ValueError(f"task {unknown[0]!r}: not in the training data's task table {sorted(self.task_ids)}")
        return torch.tensor([self.task_ids[t] for t in instructions], device=self.task.weight.device)

    def features(self, batch: dict[str, Any]) -> Tensor:
        feats = [enc(batch[image_key(cam)].float()) for cam, enc in self.cams.items()]
        feats += [self.proprio(batch[OBS_STATE].float()), self.task(self._task_index(batch[TASK]))]
        return torch.cat(feats, -1)

    def actions(self, feats: Tensor) -> Tensor:
        return self.mlp(feats).reshape(-1, self.cfg.chunk, self.cfg.action_dim)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.actions(self.features(batch))

    def loss(self, batch: dict[str, Any], env_state_loss: float = 0.0) -> Tensor:
        """L1 on the normalised chunk; steps past the episode's end (``action_is_pad``) do not count. With
        ``env_state_loss`` > 0 plus that weight times the MSE of the regressed (normalised) environment state."""
        feats = self.features(batch)
        err = (self.actions(feats) - batch[ACTION].float()).abs()
        keep = (~batch[ACTION_IS_PAD].bool()).unsqueeze(-1).float()
        loss = (err * keep).sum() / (keep.sum() * err.shape[-1]).clamp(min=1)
        if env_state_loss:
            loss = loss + env_state_loss * nn.functional.mse_loss(self.env_state(feats), batch[OBS_ENV_STATE].float())
        return loss


def make_pipelines(reader: LeRobotDataset, env_state: bool = False) -> tuple[Pipeline, Pipeline, RobotSpec]:
    """vlaforge's own inputs (feature check, normalisation, images to float) and outputs (unnormalisation)."""
    robot = reader.meta.robot_spec()
    images = ImageStep(cameras=list(robot.cameras), size=max(max(hw) for hw in robot.cameras.values()),
                       resize="squash")
    modes = {**MODES, OBS_ENV_STATE: "mean_std"} if env_state else MODES
    inputs, outputs = build_pipelines(robot, 1, modes, reader.meta.stats, {}, [images])
    return inputs, outputs, robot


class PeerPolicy:
    """What :func:`~vlaforge.eval.rollout.evaluate` needs of a policy (:class:`vlaforge.inference.InferencePolicy`)."""

    def __init__(self, model: PeerCNN, inputs: Pipeline, outputs: Pipeline, robot: RobotSpec, exec_steps: int) -> None:
        self.model, self.inputs, self.outputs, self.robot = model.eval(), inputs, outputs, robot
        self.chunk, self.exec_steps = model.cfg.chunk, exec_steps

    @torch.no_grad()
    def infer_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        batch = collate([self.inputs(dict(o)) for o in observations])
        actions = self.model(batch).cpu().numpy()
        return np.stack([self.outputs({ACTION: a})[ACTION] for a in actions])

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"actions": self.infer_batch([obs])[0]}


@dataclass(frozen=True)
class TrainOptions:
    minutes: float  # wall-clock budget; the schedule is laid out to end at it
    steps: int | None = None  # a fixed step count instead (tests); the budget still stops training
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    probe: int = 20  # steps timed (after 3 untimed) to plan the total
    replans: int = 10  # then re-planned every total/replans steps (a shared machine's speed drifts)
    shift_pad: int = 4
    seed: int = 0
    workers: int = 0
    env_state_loss: float = 0.0  # weight of the auxiliary environment-state regression (0: the plain peer)
    precision: str = "auto"  # fp32 | bf16 (autocast) | auto: bf16 where the CPU has bf16 units, as the quick start


def make_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int, done: int = 0) -> Any:
    """Linear warm-up, then cosine decay to zero at step ``total`` (torch's schedulers), advanced to ``done``."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    warmup = min(warmup, total - 1)
    parts = [LinearLR(optimizer, 1 / (warmup + 1), total_iters=warmup), CosineAnnealingLR(optimizer, total - warmup)]
    schedule = SequentialLR(optimizer, parts, milestones=[warmup])
    for _ in range(done):
        schedule.step()
    return schedule


def plan_steps(done: int, elapsed_s: float, step_s: float, budget_s: float, margin: float = 0.98) -> int:
    """Total steps so that the rest, at ``step_s`` seconds each, ends just inside the budget."""
    return done + max(0, math.floor((budget_s - elapsed_s) * margin / step_s))


def train_peer(model: PeerCNN, reader: LeRobotDataset, inputs: Pipeline, opts: TrainOptions,
               show_progress: bool = True) -> dict[str, Any]:
    """Train ``model`` in place; returns the steps run and planned, the minutes and the loss curve."""
    from vlaforge.train.data import make_loader
    from vlaforge.utils import progress_bar

    torch.manual_seed(opts.seed)
    pipeline = Pipeline([RandomShift(cameras=list(model.cfg.cameras), pad=opts.shift_pad), *inputs.steps])
    total = opts.steps or 10**9  # with a budget: re-planned after the probe
    matrices = [p for p in model.parameters() if p.dim() >= 2]  # weight decay on weights, not biases/norms
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": opts.weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.95))
    scheduler = make_schedule(optimizer, opts.warmup, total)
    loader = make_loader(reader, pipeline, batch_size=opts.batch_size, seed=opts.seed, start_step=0, steps=total,
                         num_workers=opts.workers)
    budget_s, losses, step, plans = opts.minutes * 60, [], 0, []
    mark_step, mark_t, next_plan = 3, 0.0, 3 + opts.probe  # steps 1-3 (allocation, first imports) are not timed
    from vlaforge.train.runtime import resolve_precision

    bf16 = resolve_precision(opts.precision, torch.device("cpu")) == "bf16"
    model.train()
    t0 = time.time()
    with progress_bar(show_progress) as bar:
        job = bar.add_task("train peer (timing)", total=opts.steps or next_plan)
        for batch in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(batch, opts.env_state_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
            bar.update(job, advance=1, description=f"train peer  loss {np.mean(losses[-20:]):.4f}")
            now = time.time()
            if step == mark_step:
                mark_t = now
            if opts.steps is None and step == next_plan:  # (re-)plan from the recent step time
                total = max(step, plan_steps(step, now - t0, (now - mark_t) / (step - mark_step), budget_s))
                scheduler = make_schedule(optimizer, opts.warmup, total, done=step)
                plans.append((step, total))
                mark_step, mark_t, next_plan = step, now, step + max(opts.probe, total // opts.replans)
                bar.update(job, total=total)
            if step >= total or now - t0 > budget_s:
                break
    minutes = (time.time() - t0) / 60
    return {"steps": step, "planned_steps": total, "schedule_completed": step >= total, "plans": plans,
            "precision": "bf16" if bf16 else "fp32",
            "minutes": minutes, "final_loss": float(np.mean(losses[-20:])), "losses": losses}


def time_precisions(model: PeerCNN, reader: LeRobotDataset, inputs: Pipeline, opts: TrainOptions, rounds: int,
                    steps: int = 8) -> dict[str, Any]:
    """The peer's median training step in fp32 and in bf16 autocast, in interleaved rounds (fp32, bf16, fp32 ...)
    of ``steps`` steps on the same batches, so a shared machine's drift hits both alike (``--time-precision``)."""
    import copy
    import statistics

    from vlaforge.train.data import make_loader

    pipeline = Pipeline([RandomShift(cameras=list(model.cfg.cameras), pad=opts.shift_pad), *inputs.steps])
    loader = iter(make_loader(reader, pipeline, batch_size=opts.batch_size, seed=opts.seed, start_step=0,
                              steps=(rounds + 1) * steps, num_workers=0))
    arms = {name: copy.deepcopy(model).train() for name in ("fp32", "bf16")}
    optims = {name: torch.optim.AdamW(m.parameters(), lr=opts.lr) for name, m in arms.items()}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds + 1):  # round 0 warms both up (allocation, first kernels) and is not counted
        batches = [next(loader) for _ in range(steps)]
        for name, m in arms.items():
            for batch in batches:
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                    loss = m.loss(batch, opts.env_state_loss)
                optims[name].zero_grad(set_to_none=True)
                loss.backward()
                optims[name].step()
                if r:
                    times[name].append(time.perf_counter() - t)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    return {"median_step_s": median, "bf16_speedup": median["fp32"] / median["bf16"], "steps_timed": rounds * steps,
            "batch": opts.batch_size}


def save_weights(model: PeerCNN, path: Path, train: dict[str, Any]) -> None:
    """The trained weights, with the model's config and the training record as metadata (for ``--weights``)."""
    save_file(model.state_dict(), str(path), metadata={"train": json.dumps(train), "model": json.dumps(
        asdict(model.cfg))})


def load_weights(model: PeerCNN, path: Path) -> dict[str, Any]:
    """Weights written by an earlier run (``--weights``) into ``model``; returns that run's training record."""
    if not path.is_file():
        raise SystemExit(f"--weights {path}: no such file")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    saved = json.loads(meta.get("model", "{}"))
    if saved != json.loads(json.dumps(asdict(model.cfg))):
        raise SystemExit(f"--weights {path}: written for another model or dataset (model config {saved}), expected "
                         f"{asdict(model.cfg)}")
    model.load_state_dict(load_file(str(path)))
    return json.loads(meta["train"])


def resolve_tasks(env: Any, spec: str, reader: LeRobotDataset) -> list[str]:
    """Env task names to evaluate: ``spec`` (checked against the dataset), or every task the dataset holds."""
    from vlaforge.eval.envs.metaworld import INSTRUCTIONS

    by_instruction = {v: k for k, v in INSTRUCTIONS.items()}
    if spec:
        tasks = env.task_names(spec)
        missing = [t for t in tasks if INSTRUCTIONS[t] not in reader.meta.tasks]
        if missing:
            raise ValueError(f"--tasks {spec}: {missing} have no demos in {reader.root} (its tasks: "
                             f"{reader.meta.tasks})")
        return tasks
    unknown = [t for t in reader.meta.tasks if t not in by_instruction]
    if unknown:
        raise ValueError(f"{reader.root}: task {unknown[0]!r} is not a Meta-World instruction")
    return [by_instruction[t] for t in reader.meta.tasks]


def ensure_dataset(env: Any, data: Path, tasks: str, demos: int) -> None:
    """Collect ``demos`` scripted demos of each of ``tasks`` (default mt10) into ``data`` unless a dataset is there."""
    from vlaforge.eval.collect import collect

    if not (data / "meta" / "info.json").is_file():
        names = env.task_names(tasks or "mt10")
        print(f"collecting {demos} demos x {len(names)} tasks -> {data}", file=sys.stderr)
        collect(env, names, demos, data, overwrite=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from vlaforge.eval.envs.metaworld import MetaWorldConfig
    from vlaforge.eval.report import machine
    from vlaforge.eval.rollout import EVAL_SEED_START, evaluate, expert_baseline, print_table, summarize

    if args.threads:
        torch.set_num_threads(args.threads)
    env, data = MetaWorldConfig(), Path(args.data)
    ensure_dataset(env, data, args.tasks, args.demos)
    reader = LeRobotDataset(data, chunk=args.chunk)
    tasks = resolve_tasks(env, args.tasks, reader)
    env_state = reader.meta.features.get(OBS_ENV_STATE) if args.env_state_loss else None
    if args.env_state_loss and env_state is None:
        raise SystemExit(f"--env-state-loss: {data} has no '{OBS_ENV_STATE}' (collect it again)")
    inputs, outputs, robot = make_pipelines(reader, env_state=env_state is not None)
    cfg = PeerConfig(cameras=tuple(robot.cameras), state_dim=robot.state_dim, action_dim=robot.action_dim,
                     tasks=tuple(reader.meta.tasks), chunk=args.chunk, hidden=args.hidden,
                     env_state_dim=env_state.shape[0] if env_state is not None else 0)
    model = PeerCNN(cfg)
    params = sum(p.numel() for p in model.parameters())
    opts = TrainOptions(minutes=args.minutes, steps=args.steps, batch_size=args.batch, lr=args.lr,
                        workers=args.workers, seed=args.seed, env_state_loss=args.env_state_loss,
                        precision=args.precision)
    print(f"peer CNN: {params / 1e6:.2f} M parameters, {len(reader)} frames, {args.minutes} min budget",
          file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = out.with_suffix(".safetensors")  # written before the evaluation: a crash there keeps the training
    if args.time_precision:
        timing = {**time_precisions(model, reader, inputs, opts, args.time_precision), "machine": machine(),
                  "command": "python bench/peer_cnn.py " + " ".join(sys.argv[1:])}
        out.write_text(json.dumps(timing, indent=2) + "\n")
        print(f"{out}: fp32 {timing['median_step_s']['fp32']:.3f} s/step, bf16 {timing['median_step_s']['bf16']:.3f} "
              f"s/step ({timing['bf16_speedup']:.2f}x)", file=sys.stderr)
        return timing
    if args.weights:
        train = load_weights(model, Path(args.weights))
    else:
        train = train_peer(model, reader, inputs, opts)
        save_weights(model, weights, train)
        print(f"{weights}: the trained weights (evaluate them again with --weights)", file=sys.stderr)
    policy = PeerPolicy(model, inputs, outputs, robot, args.exec_steps)
    summary = summarize(evaluate(policy, env, tasks, args.episodes, exec_steps=args.exec_steps,
                                 video_dir=Path(args.videos) if args.videos else None))
    reference = summarize(expert_baseline(env, tasks, args.episodes))
    print_table(summary, reference, title="peer CNN: success on unseen seeds")
    result = {"method": "peer_cnn", "mean_success": summary["mean_success"],
              "success": {t: s["success_rate"] for t, s in summary["tasks"].items()},
              "eval": summary, "expert": reference, "eval_episodes": args.episodes, "seed_start": EVAL_SEED_START,
              "params": params, "steps": train["steps"], "planned_steps": train["planned_steps"],
              "schedule_completed": train["schedule_completed"], "plans": train["plans"], "minutes": train["minutes"],
              "budget_minutes": args.minutes, "final_loss": train["final_loss"],
              "loss_every_10": train["losses"][::10], "model": asdict(cfg), "train": asdict(opts),
              "exec_steps": args.exec_steps,
              "dataset": {"path": str(data), "episodes": reader.meta.num_episodes, "frames": reader.meta.num_frames},
              "machine": machine(), "command": "python bench/peer_cnn.py " + " ".join(sys.argv[1:])}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{out}: mean success {summary['mean_success']:.0%} after {train['steps']} steps "
          f"({train['minutes']:.1f} min), {params / 1e6:.2f} M parameters", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> None:
    from vlaforge.cli.quickstart import QuickstartConfig

    quickstart = QuickstartConfig()  # demos, evaluation episodes and training budget are the quick start's
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="LeRobot v3 dataset; collected here first if it does not exist")
    ap.add_argument("--tasks", default="", help="tasks to collect and evaluate (default: the dataset's; mt10 to "
                                                "collect)")
    qs = "the quick start's: %(default)s"
    ap.add_argument("--demos", type=int, default=quickstart.demos, help=f"demos per task when collecting ({qs})")
    ap.add_argument("--minutes", type=float, default=quickstart.max_train_minutes, help=f"training wall clock ({qs})")
    ap.add_argument("--steps", type=int, default=None, help="fixed step count instead of the budget's plan")
    ap.add_argument("--episodes", type=int, default=quickstart.eval_episodes, help=f"eval episodes per task ({qs})")
    ap.add_argument("--chunk", type=int, default=4, help="actions predicted per call (%(default)s)")
    ap.add_argument("--exec-steps", type=int, default=2, help="actions run per chunk before re-planning (%(default)s)")
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    ap.add_argument("--batch", type=int, default=defaults["batch_size"], help="%(default)s")
    ap.add_argument("--lr", type=float, default=defaults["lr"], help="peak learning rate (%(default)s)")
    ap.add_argument("--hidden", type=int, default=PeerConfig.hidden, help="width of the action MLP (%(default)s)")
    ap.add_argument("--env-state-loss", type=float, default=0.0, help="weight of an auxiliary regression of the "
                    "data's object and goal positions (%(default)s: the plain peer)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=defaults["precision"],
                    help="autocast (auto: bf16 where the CPU has bf16 units; %(default)s)")
    ap.add_argument("--time-precision", type=int, default=0, metavar="ROUNDS", help="only time the training step "
                    "in fp32 vs bf16 autocast (ROUNDS interleaved rounds of 8 steps) and write that JSON to --out")
    ap.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--videos", default="", help="write one rollout video per task here")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "peer_cnn.json"),
                    help="result JSON; the trained weights go beside it (.safetensors)")
    ap.add_argument("--weights", default="", help="evaluate the weights an earlier run wrote (no training)")
    args = ap.parse_args(argv)
    if not 1 <= args.exec_steps <= args.chunk:
        ap.error(f"--exec-steps: expected 1..{args.chunk} (--chunk), got {args.exec_steps}")
    run(args)


if __name__ == "__main__":
    main()
