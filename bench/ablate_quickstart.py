"""Why does the quick-start VLA fail to localise small objects (issue 15)? One run per variant of its preset.

Each variant is a list of ``vlaforge train`` overrides on the quick-start preset (``quickstart_tokens``: a 6.4 M
parameter SmolVLM-architecture model trained from scratch with a discrete-token head). Every variant trains on the
same dataset (the quick start's, or one collected here with ``bench/peer_cnn.py``'s collect) with the same
wall-clock budget (``--max_minutes=M --budget=fit``: the warm-up + cosine schedule is laid out to end at the budget)
and is evaluated by ``vlaforge eval`` (:func:`vlaforge.eval.rollout.evaluate`) on the same tasks, episodes and seeds
(``EVAL_SEED_START``+) as the quick start and the CNN peer (``bench/peer_cnn.py``).

Every variant's overrides are parsed by the parser ``vlaforge train`` uses, and its policy is built once on the
dataset's cameras and sizes, before anything trains: a typo fails in one line, not hours later. Each variant trains
and evaluates in its own subprocess (a crash or out-of-memory in one is recorded and the sweep goes on), under
``--work`` (``WORK/VARIANT/train``, ``WORK/VARIANT/eval/eval.json``, logs). A re-run skips the variants whose
``eval.json`` exists, evaluates the ones whose training completed, and retrains the others from scratch.
Results: ``--out`` (JSON: per variant its per-task success, mean, steps, parameters, minutes and overrides) and a
Markdown table beside it (``.md``: variant x task, the change against ``baseline`` in brackets).

    python bench/ablate_quickstart.py --data runs/quickstart/data --tasks mt10 --minutes 20 --episodes 10
    python bench/ablate_quickstart.py --variants baseline,head_mlp,img192 ...      # some variants
    python bench/ablate_quickstart.py --variants head,image ...                     # or whole groups
    python bench/ablate_quickstart.py --list                                        # the variants
    python bench/ablate_quickstart.py --only-table                                  # the table from --out
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
PRESET = "quickstart_tokens"
BASELINE = "baseline"


@dataclass(frozen=True)
class Variant:
    group: str
    overrides: tuple[str, ...]  # `vlaforge train` options on top of the preset (its short forms work: --head.*)
    what: str
    preset: str = PRESET  # another preset: an architecture compared on the same data, budget and seeds


def recorded_args(name: str, args: list[str]) -> list[str]:
    """What a variant's folder records: its train arguments, led by its preset where that is not the default."""
    preset = VARIANTS[name].preset
    return args if preset == PRESET else [f"preset={preset}", *args]


# Only options the code has. The tiny SmolVLM tower has patch 16 and pixel shuffle 2 fixed by its size table: on the
# 96 px cameras it gives 3 x 3 = 9 tokens per view. --backbone.image_size upsamples the camera before the tower, so
# 192 px is, on the recorded pixels, what a patch of 8 would be (6 x 6 = 36 tokens per view).
QUICKSTART_OPTIM = ("--batch_size=32", "--lr=3e-4", "--optim.warmup_steps=100", "--optim.min_lr_ratio=0.1",
                    "--steps=2000", "--chunk=8", "--exec_steps=2")
RECIPE = ("--backbone.vision_stem=conv", "--head.type=mlp", "--backbone.readout=act")
LEAN = (*RECIPE, "--backbone.stem_width=16", "--backbone.vision_layers=2", "--backbone.lm_layers=2",
        "--backbone.image_special_tokens=false")
LEAN_KP = (*LEAN, "--backbone.keypoints=32", "--backbone.keypoints_to_readout=true")
VARIANTS: dict[str, Variant] = {
    BASELINE: Variant("baseline", (), "the quick-start preset as it ships (tokens head, 96 px, chunk 8 / exec 2)"),
    "img64": Variant("image", ("--backbone.image_size=64",), "64 px: 2 x 2 tokens per view"),
    "img128": Variant("image", ("--backbone.image_size=128",), "128 px: 4 x 4 tokens per view"),
    "img192": Variant("image", ("--backbone.image_size=192",),
                      "192 px: 6 x 6 tokens per view (= patch 8 on the 96 px cameras)"),
    "img192_head_mlp": Variant("image", ("--backbone.image_size=192", "--head.type=mlp"),
                               "192 px with the L1 MLP head (detail and head together)"),
    "patch8": Variant("image", ("--backbone.patch_size=8",),
                      "ViT patch 8 instead of 16: 12 x 12 patches, 6 x 6 tokens per view after the pixel shuffle"),
    "shuffle1": Variant("image", ("--backbone.pixel_shuffle=1",),
                        "no pixel shuffle: all 6 x 6 patches of a view reach the LM (4x the image tokens)"),
    "conv_stem": Variant("image", ("--backbone.vision_stem=conv",),
                         "a 3x3 stride-2 convolutional stem instead of the 16 px patch convolution"),
    "patch8_conv_stem": Variant("image", ("--backbone.patch_size=8", "--backbone.vision_stem=conv"),
                                "patch 8 with the convolutional stem"),
    "head_mlp": Variant("head", ("--head.type=mlp",), "L1 regression MLP on the mean-pooled prefix"),
    "head_mlp_act": Variant("head", ("--head.type=mlp", "--backbone.readout=act"),
                            "L1 MLP on a learned readout token that attends to every image token"),
    "head_mlp_last": Variant("head", ("--head.type=mlp", "--backbone.readout=last"),
                             "L1 MLP on the last prompt token's hidden state"),
    "head_mlp_oft": Variant("head", ("--head.type=mlp", "--head.readout=placeholders", "--head.mlp=resnet",
                                     "--backbone.attention=bidirectional"),
                            "OpenVLA-OFT's parallel decoding: the MLP reads chunk x action_dim placeholder tokens"),
    "head_flow": Variant("head", ("--head.type=flow",), "flow-matching action expert on the prefix KV cache"),
    "head_dit": Variant("head", ("--head.type=dit",),
                        "DiT diffusion head cross-attending to every prefix token (image tokens into the head)"),
    "head_dit_pooled": Variant("head", ("--head.type=dit", "--head.cross_attention=false"),
                               "DiT on the pooled prefix only (no per-token features into the head)"),
    "chunk8_exec1": Variant("chunk", ("--exec_steps=1",), "re-plan after every action"),
    "chunk8_exec4": Variant("chunk", ("--exec_steps=4",), "execute half of each chunk"),
    "chunk4_exec2": Variant("chunk", ("--chunk=4",), "chunk of 4, executing 2 as the preset"),
    "chunk16_exec4": Variant("chunk", ("--chunk=16", "--exec_steps=4"), "longer chunk"),
    "no_shift": Variant("augment", ("--data.shift_pad=0",), "no random-shift augmentation (preset: 4 px)"),
    "shift8": Variant("augment", ("--data.shift_pad=8",), "random shift of 8 px"),
    "no_proprio": Variant("proprio", ("--backbone.proprio=none",), "no proprio state (preset: one MLP token)"),
    "proprio_tokens": Variant("proprio", ("--backbone.proprio=tokens",), "proprio as binned action tokens"),
    "lr_x3": Variant("optim", ("--lr=9e-4",), "peak learning rate 9e-4 (preset: 3e-4)"),
    "lr_div3": Variant("optim", ("--lr=1e-4",), "peak learning rate 1e-4"),
    "cosine_to_zero": Variant("optim", ("--optim.min_lr_ratio=0",), "cosine decays to 0 (preset: to 0.1 x lr)"),
    "constant_lr": Variant("optim", ("--optim.min_lr_ratio=1",), "constant learning rate after the warm-up"),
    "warmup_500": Variant("optim", ("--optim.warmup_steps=500",), "warm-up of 500 steps (preset: 100)"),
    "conv_stem_head_mlp_act": Variant("recipe", RECIPE,
                                      "conv stem + L1 MLP on a learned readout token (candidate recipe)"),
    "conv_stem_kp32_head_mlp_act": Variant("recipe", ("--backbone.vision_stem=conv", "--backbone.keypoints=32",
                                                      "--head.type=mlp", "--backbone.readout=act"),
                                           "the candidate + 32 spatial-softmax keypoints per view as a prefix token"),
    # cheaper per sample (the CNN peer at the VLA's 32 k samples gets 56 %, the recipe 58 %: the gap is throughput)
    "lean": Variant("recipe", LEAN,
                    "the candidate, half the cost per sample: a narrow stem (16..128 channels), 2 ViT and 2 LM "
                    "layers, no image wrapper tokens"),
    "lean_kp32_skip": Variant("recipe", LEAN_KP,
                              "lean + 32 keypoints per view, also added to the readout past the LM"),
    "lean_p8_kp32_skip": Variant("recipe", (*(a.replace("vision_layers=2", "vision_layers=1") for a in LEAN_KP),
                                            "--backbone.patch_size=8", "--backbone.pixel_shuffle=4", "--steps=4000"),
                                 "lean_kp32_skip on a 12 x 12 patch grid (the peer's keypoint resolution): patch 8, "
                                 "one ViT layer, pixel shuffle 4 (still 9 LM tokens per view); steps set by the "
                                 "budget"),
    "lean_kp32_skip_lr1e-3": Variant("recipe", (*LEAN_KP, "--lr=1e-3", "--steps=4000"),
                                     "lean_kp32_skip at the peer's learning rate 1e-3; steps set by the budget"),
    "lean_kp32s8_skip": Variant("recipe", (*LEAN_KP, "--backbone.keypoints_stride=8", "--steps=4000"),
                                "lean_kp32_skip with the keypoints on the conv stem's 12 x 12 map at stride 8 (the "
                                "peer's keypoint resolution) instead of the 6 x 6 patch grid; steps set by the budget"),
    "lean_kp32s8_skip_ema": Variant("recipe", (*LEAN_KP, "--backbone.keypoints_stride=8", "--ema=0.995",
                                               "--steps=4000"),
                                    "lean_kp32s8_skip evaluated on an EMA of its weights (decay 0.995)"),
    "lean_kp32_skip_env": Variant("recipe", (*LEAN_KP, "--policy.env_state_loss=1", "--steps=4000"),
                                  "lean_kp32_skip that also regresses the objects' and the goal's positions from its "
                                  "readout (auxiliary MSE, weight 1; training only); steps set by the budget"),
    # the published architectures (issue 18) on the quick start's optimisation (their presets carry a fine-tuning
    # recipe: lr 2.5e-5 / 1e-4 at batch 8, which a random-initialised model does not learn from in 20 minutes) and
    # its chunk of 8 with 2 executed, on the cameras' own 96 px
    "pi0_tiny": Variant("preset", (*QUICKSTART_OPTIM, "--backbone.image_size=96"),
                        "pi0's architecture: tiny PaliGemma + a Gemma expert sharing attention layer by layer, "
                        "flow matching, 10 Euler steps", preset="pi0_tiny"),
    "smolvla_tiny": Variant("preset", (*QUICKSTART_OPTIM, "--backbone.image_size=96"),
                            "SmolVLA's architecture: truncated tiny SmolVLM + an expert alternating cross- and "
                            "self-attention, flow matching", preset="smolvla_tiny"),
    "budget_stop": Variant("optim", ("--budget=stop",),
                           "the preset's 2000-step schedule, cut by the budget wherever it is (not fitted)"),
}


def load_peer() -> Any:
    """``bench/peer_cnn.py`` (bench/ is not a package): its dataset collection and task resolution."""
    spec = importlib.util.spec_from_file_location("_bench_peer_cnn", BENCH / "peer_cnn.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def select(spec: str) -> list[str]:
    """``all``, or comma-separated variant and group names -> variant names in table order (baseline first)."""
    if spec == "all":
        return list(VARIANTS)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    groups = {v.group for v in VARIANTS.values()}
    unknown = [w for w in wanted if w not in VARIANTS and w not in groups]
    if unknown or not wanted:
        raise ValueError(f"--variants: {unknown[0] if unknown else spec!r} is not a variant or group; expected "
                         f"'all' or names from {sorted(VARIANTS)} or groups {sorted(groups)}")
    return [n for n, v in VARIANTS.items() if n in wanted or v.group in wanted]


def train_args(variant: Variant, common: list[str]) -> list[str]:
    """The full draccus arguments of ``vlaforge train PRESET``: ``common`` then the variant's (which win)."""
    from vlaforge.cli.common import to_draccus
    from vlaforge.cli.train import ALIASES, PREFIXES

    merged: dict[str, str] = {}
    for arg in [*to_draccus(common, aliases=ALIASES, prefixes=PREFIXES),
                *to_draccus(list(variant.overrides), aliases=ALIASES, prefixes=PREFIXES)]:
        key, _, value = arg.removeprefix("--").partition("=")
        merged[key] = value
    return [f"--{k}={v}" for k, v in merged.items()]


def resolve(name: str, common: list[str]) -> Any:
    """The variant's :class:`~vlaforge.train.config.TrainConfig`, parsed as ``vlaforge train`` parses it; a bad
    override is one line naming the variant."""
    from vlaforge.config import parse_overrides
    from vlaforge.presets import get_preset

    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):  # argparse prints its usage there, then exits
            return parse_overrides(get_preset(VARIANTS[name].preset), train_args(VARIANTS[name], common))
    except SystemExit:
        lines = usage.getvalue().strip().splitlines() or ["not a valid option"]
        why = lines[-1].partition("error: ")[2] or lines[-1]
        raise ValueError(f"variant {name} {list(VARIANTS[name].overrides)}: {why}") from None
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"variant {name} {list(VARIANTS[name].overrides)}: {e}") from None


def check_builds(name: str, cfg: Any, robot: Any) -> int:
    """Build the variant's policy on the dataset's cameras and sizes (errors the parser cannot see); its size."""
    from vlaforge.policy import VLAPolicy

    policy_cfg = cfg.policy.replace(cameras=tuple(robot.cameras), state_dim=robot.state_dim,
                                    action_dim=robot.action_dim)
    try:
        policy = VLAPolicy(policy_cfg)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"variant {name} {list(VARIANTS[name].overrides)}: {e}") from None
    return sum(p.numel() for p in policy.parameters())


def last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    return lines[-1][:300] if lines else "(no output)"


def run_logged(cmd: list[str], log: Path, env: dict[str, str]) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode


def check_variant_dir(name: str, vdir: Path, args: list[str]) -> None:
    """A variant's folder records the arguments it was trained with; results made with others are not reused."""
    path = vdir / "train_args.json"
    if path.is_file() and json.loads(path.read_text()) != args:
        raise ValueError(f"variant {name}: {vdir} was trained with {json.loads(path.read_text())}, now {args}; "
                         f"remove {vdir} to run it again")
    vdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(args) + "\n")


def train_done(run_dir: Path) -> bool:
    path = run_dir / "train_summary.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("steps"))


def variant_result(name: str, vdir: Path, tasks: list[str]) -> dict[str, Any]:
    """A finished variant's row, from its run directory and eval.json."""
    train = json.loads((vdir / "train" / "train_summary.json").read_text())
    ev = json.loads((vdir / "eval" / "eval.json").read_text())
    metrics = (vdir / "train" / "metrics.jsonl").read_text().splitlines()
    timings = json.loads((vdir / "timings.json").read_text()) if (vdir / "timings.json").is_file() else {}
    return {"status": "done", "group": VARIANTS[name].group, "what": VARIANTS[name].what,
            "preset": VARIANTS[name].preset, "overrides": list(VARIANTS[name].overrides),
            "success": {t: ev["tasks"][t]["success_rate"] for t in tasks}, "mean_success": ev["mean_success"],
            "steps": train["steps"], "fitted_steps": train.get("fitted_steps"), "complete": train.get("complete"),
            "params": train["params"], "minutes": train["minutes"], "eval_minutes": timings.get("eval_minutes"),
            "final_loss": json.loads(metrics[-1]).get("loss") if metrics else None}


def run_variant(name: str, vdir: Path, common: list[str], tasks: list[str], episodes: int,
                env: dict[str, str], device: str = "cpu") -> dict[str, Any]:
    """Train (unless done) and evaluate one variant in subprocesses; its row, or the failure."""
    from vlaforge.config import Paths

    base = [sys.executable, "-m", "vlaforge.cli.main"]
    run_dir, eval_dir = vdir / "train", vdir / "eval"
    failed = {"status": "failed", "group": VARIANTS[name].group, "what": VARIANTS[name].what,
              "preset": VARIANTS[name].preset, "overrides": list(VARIANTS[name].overrides)}
    timings: dict[str, float] = {}
    if not train_done(run_dir):
        if run_dir.exists():  # an interrupted run: retrained from scratch, so that every variant has one budget
            shutil.rmtree(run_dir)
        print(f"[{name}] training -> {run_dir}", file=sys.stderr)
        t = time.time()
        args = train_args(VARIANTS[name], [*common, f"--out={run_dir}"])
        rc = run_logged([*base, "train", VARIANTS[name].preset, *args], vdir / "train.log", env)
        timings["train_wall_minutes"] = (time.time() - t) / 60
        if rc != 0 or not train_done(run_dir):
            return {**failed, "stage": "train", "error": f"exit {rc}: {last_line(vdir / 'train.log')}"}
    print(f"[{name}] evaluating {episodes} episodes x {len(tasks)} tasks", file=sys.stderr)
    t = time.time()
    rc = run_logged([*base, "eval", str(Paths.last_checkpoint(run_dir).resolve()), "--env", "metaworld",
                     "--tasks", ",".join(tasks), f"--episodes={episodes}", f"--out={eval_dir}", "--expert=false",
                     "--videos=0", f"--device={device}"], vdir / "eval.log", env)
    timings["eval_minutes"] = (time.time() - t) / 60
    (vdir / "timings.json").write_text(json.dumps(timings) + "\n")
    if rc != 0 or not (eval_dir / "eval.json").is_file():
        return {**failed, "stage": "eval", "error": f"exit {rc}: {last_line(vdir / 'eval.log')}"}
    return variant_result(name, vdir, tasks)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def _delta(x: float, ref: float | None) -> str:
    return f"{_pct(x)} ({100 * (x - ref):+.0f})" if ref is not None else _pct(x)


def markdown_table(results: dict[str, Any]) -> str:
    """Success (%) per variant and task on the unseen seeds; in brackets the change against ``baseline``."""
    tasks, rows = results["tasks"], results["variants"]
    base = rows.get(BASELINE) if rows.get(BASELINE, {}).get("status") == "done" else None
    head = ["variant", *tasks, "mean", "steps", "params (M)", "train min", "overrides"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|"]
    for name in [*[n for n in VARIANTS if n in rows], *[n for n in rows if n not in VARIANTS]]:
        r = rows[name]
        preset = r.get("preset", PRESET)
        over = " ".join([*([f"preset `{preset}`"] if preset != PRESET else []),
                         *(f"`{o}`" for o in r.get("overrides", []))]) or "(preset)"
        if r.get("status") != "done":
            cells = ["-"] * len(tasks) + [f"failed ({r.get('stage', '?')})", "-", "-", "-"]
        else:
            ref = base if base is not None and name != BASELINE else None
            cells = [_delta(r["success"][t], ref["success"][t] if ref else None) for t in tasks]
            cells += [_delta(r["mean_success"], ref["mean_success"] if ref else None), str(r["steps"]),
                      f"{r['params'] / 1e6:.1f}", f"{r['minutes']:.1f}"]
        lines.append("| " + " | ".join([name, *cells, over]) + " |")
    expert = results.get("expert")
    if expert:
        lines.append("| " + " | ".join(["scripted expert", *[_pct(expert["success"][t]) for t in tasks],
                                        _pct(expert["mean_success"]), "", "", "", "same seeds"]) + " |")
    title = (f"Quick-start ablation (issue 15): success % on {results['episodes']} unseen-seed episodes per task "
             f"(seeds {results['seed_start']}+), {results['budget_minutes']:g} min training budget each, "
             f"preset {results['preset']}; (+/-) = change vs baseline in points.")
    return title + "\n\n" + "\n".join(lines) + "\n"


def write_outputs(results: dict[str, Any], out: Path) -> str:
    from vlaforge.config import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    atomic_write_text(out.with_suffix(".md"), table)
    return table


def check_work(work: Path, settings: dict[str, Any]) -> None:
    """A work folder holds one sweep's settings: finished variants are only reused under the same ones."""
    path = work / "sweep.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if diff:
            k, (old, new) = next(iter(diff.items()))
            raise ValueError(f"--work {work}: its runs were made with {k}={old!r}, got {new!r}; choose another "
                             f"--work (or remove it) to run other settings")
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vlaforge.data.lerobot import LeRobotDataset
    from vlaforge.eval.envs.metaworld import MetaWorldConfig
    from vlaforge.eval.report import machine
    from vlaforge.eval.rollout import EVAL_SEED_START, expert_baseline, summarize

    names = select(args.variants)
    peer = load_peer()
    env_cfg, data, work = MetaWorldConfig(), Path(args.data).resolve(), Path(args.work).resolve()
    common = [f"--data.path={data}", f"--max_minutes={args.minutes}", "--budget=fit", f"--seed={args.seed}"]
    if args.threads:
        common.append(f"--threads={args.threads}")
        torch.set_num_threads(args.threads)
    # every variant is checked before anything runs: a typo or a combination the model refuses is one line now
    configs = {n: resolve(n, common) for n in names}
    peer.ensure_dataset(env_cfg, data, args.tasks, args.demos)
    reader = LeRobotDataset(data, video_cache="episode")
    tasks = peer.resolve_tasks(env_cfg, args.tasks, reader)
    if not args.no_build_check:
        robot = reader.meta.robot_spec()
        for n, cfg in configs.items():
            check_builds(n, cfg, robot)
    check_work(work, {"data": str(data), "tasks": tasks, "episodes": args.episodes, "minutes": args.minutes,
                      "seed": args.seed, "preset": PRESET})
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    if results.get("work") != str(work) or results.get("tasks") != tasks:
        results = {}
    results.update({"bench": "ablate_quickstart", "preset": PRESET, "data": str(data), "work": str(work),
                    "tasks": tasks, "episodes": args.episodes, "seed_start": EVAL_SEED_START,
                    "budget_minutes": args.minutes, "threads": args.threads, "machine": machine(),
                    "dataset": {"episodes": reader.meta.num_episodes, "frames": reader.meta.num_frames},
                    "command": "python bench/ablate_quickstart.py " + " ".join(sys.argv[1:])})
    results.setdefault("variants", {})
    if results.get("expert") is None:
        ref = summarize(expert_baseline(env_cfg, tasks, args.episodes))
        results["expert"] = {"mean_success": ref["mean_success"],
                             "success": {t: s["success_rate"] for t, s in ref["tasks"].items()}}
    env = dict(os.environ)
    if args.threads:  # the eval subprocess has no thread option: torch reads these when it starts
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    for n in names:
        check_variant_dir(n, work / n, recorded_args(n, train_args(VARIANTS[n], common)))
    todo = [n for n in names if not (work / n / "eval" / "eval.json").is_file()]
    print(f"{len(names)} variants ({len(names) - len(todo)} done): about {len(todo)} x ({args.minutes:g} min "
          f"training + evaluation) to go", file=sys.stderr)
    for n in names:
        vdir = work / n
        if n in todo:
            results["variants"][n] = run_variant(n, vdir, common, tasks, args.episodes, env, args.device)
        else:
            results["variants"][n] = variant_result(n, vdir, tasks)
        r = results["variants"][n]
        print(f"[{n}] " + (f"mean success {r['mean_success']:.0%} after {r['steps']} steps" if r["status"] == "done"
                           else f"FAILED in {r['stage']}: {r['error']} (logs: {vdir})"), file=sys.stderr)
        write_outputs(results, out)
    return results


def main(argv: list[str] | None = None) -> int:
    from vlaforge.cli.quickstart import QuickstartConfig
    from vlaforge.config import Paths

    quickstart = QuickstartConfig()
    qs = "the quick start's: %(default)s"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Paths().run("quickstart") / "data"),
                    help="LeRobot v3 dataset; collected first if it does not exist (%(default)s)")
    ap.add_argument("--tasks", default="", help="tasks to evaluate (and collect: default mt10); default: the "
                                                "dataset's")
    ap.add_argument("--demos", type=int, default=quickstart.demos, help=f"demos per task when collecting ({qs})")
    ap.add_argument("--minutes", type=float, default=quickstart.max_train_minutes,
                    help=f"training budget per variant ({qs})")
    ap.add_argument("--episodes", type=int, default=quickstart.eval_episodes, help=f"eval episodes per task ({qs})")
    ap.add_argument("--variants", default="all", help="'all', or comma-separated variant / group names (--list)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of every run (default: torch's)")
    ap.add_argument("--seed", type=int, default=0, help="training seed of every variant")
    ap.add_argument("--device", default="cpu", help="evaluation device (training takes a GPU when there is one; "
                                                    "%(default)s)")
    ap.add_argument("--work", default=str(Paths().run("ablate_quickstart")),
                    help="runs, evaluations and logs per variant (%(default)s)")
    ap.add_argument("--out", default=str(BENCH / "results" / "ablate_quickstart.json"),
                    help="result JSON; the Markdown table goes beside it (.md)")
    ap.add_argument("--only-table", action="store_true", help="rebuild the table from --out; run nothing")
    ap.add_argument("--list", action="store_true", help="print the variants and their overrides")
    ap.add_argument("--no-build-check", action="store_true", help="parse the overrides but build no policy first")
    args = ap.parse_args(argv)
    if args.list:
        for n, v in VARIANTS.items():
            print(f"{n:<16} {v.group:<9} {' '.join(v.overrides) or '(preset)':<48} {v.what}")
        return 0
    try:
        if args.only_table:
            out = Path(args.out)
            if not out.is_file():
                raise FileNotFoundError(f"--only-table: {out} not found (run the sweep first)")
            table = markdown_table(json.loads(out.read_text()))
            out.with_suffix(".md").write_text(table)
            print(table)
            return 0
        if args.minutes <= 0 or args.episodes < 1:
            ap.error(f"--minutes must be > 0 and --episodes >= 1, got {args.minutes} and {args.episodes}")
        results = sweep(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"ablate_quickstart: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ablate_quickstart: interrupted; the same command continues (finished variants are kept, an "
              "unfinished training starts again)", file=sys.stderr)
        return 130
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
