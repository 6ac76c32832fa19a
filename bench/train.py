"""Training throughput and memory of every ``*_tiny`` seed preset (HybridVLA, DexVLA, DiVLA, LLaVA-VLA, ...).

Writes a synthetic LeRobot v3 dataset (two cameras, 32 px, with ``bench/data.py``'s writer), then trains each
preset for ``--steps`` steps in its own subprocess, so that the peak resident memory (``ru_maxrss``) is that
preset's alone. Throughput is samples/s over the steps after two warm-up steps, from the run's
``metrics.jsonl`` (the trainer logs ``samples_per_s`` per step with ``log_every=1``): the mean, and the median
step (robust to other jobs on a shared machine). With a GPU it also reports
MFU = 6 × params × tokens per sample × samples/s / peak FLOP/s (tokens: the prefix plus the action chunk);
without one it records that no GPU was available. Writes ``bench/results/train.json`` and prints a Markdown table.

    python bench/train.py [--presets hybridvla_tiny,divla_tiny] [--steps 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARMUP = 2
# Dense peak FLOP/s per precision, by a substring of torch.cuda.get_device_name() (vendor data sheets).
PEAK_FLOPS = {"H200": {"bf16": 989e12, "fp32": 67e12}, "H100": {"bf16": 989e12, "fp32": 67e12},
              "A100": {"bf16": 312e12, "fp32": 19.5e12}, "L40": {"bf16": 181e12, "fp32": 90.5e12},
              "4090": {"bf16": 165e12, "fp32": 82.6e12}, "A6000": {"bf16": 155e12, "fp32": 38.7e12}}


def _synthetic_dataset(root: Path, episodes: int, length: int, size: int) -> Path:
    """``bench/data.py``'s writer (two cameras, 4-d state and action), imported by path."""
    spec = importlib.util.spec_from_file_location("_bench_data", HERE / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_dataset(root, episodes, length, size)


def _tokens_per_sample(policy, root: Path) -> float:
    """Mean real tokens the VLM sees per sample (every history frame) plus the action chunk's tokens."""
    import torch

    from vlaforge.data.lerobot import LeRobotDataset
    from vlaforge.processors.base import collate

    reader = LeRobotDataset(root, chunk=policy.cfg.chunk, history=policy.cfg.history)
    batch = collate([policy.inputs(reader[i]) for i in range(2)])
    batch = {k: v.to(policy.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.no_grad():
        ctx = policy.backbone.encode(batch, use_cache=False)
    frames = policy.cfg.history if policy.cfg.backbone.history == "per_frame" else 1
    return float(ctx.mask.sum(-1).float().mean()) * frames + policy.cfg.chunk


def worker(preset: str, data: Path, steps: int, batch: int, out: Path) -> dict:
    """Train one preset in this process; return its numbers (run in a subprocess by ``main``)."""
    import torch

    from vlaforge.policy import VLAPolicy
    from vlaforge.presets import get_preset
    from vlaforge.train.trainer import train

    cfg = get_preset(preset)
    cfg = cfg.replace(data=cfg.data.replace(path=str(data)), out=str(out), steps=steps, batch_size=batch,
                      save_every=steps, log_every=1)
    t0 = time.perf_counter()
    final = train(cfg, show_progress=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > WARMUP]
    per_step = sorted(batch / r["samples_per_s"] for r in timed)
    seconds = sum(per_step)
    median = per_step[len(per_step) // 2]
    policy = VLAPolicy.from_pretrained(final)
    params = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    result = {"preset": preset, "backbone": cfg.policy.backbone.type, "head": cfg.policy.head.type,
              "params_m": params / 1e6, "trainable_m": trainable / 1e6, "steps": steps, "batch_size": batch,
              "samples_per_s": len(timed) * batch / seconds, "step_ms": 1000 * seconds / len(timed),
              "step_ms_median": 1000 * median, "samples_per_s_median": batch / median,
              "wall_s": wall, "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
              "precision": cfg.precision, "threads": torch.get_num_threads()}
    try:
        result["tokens_per_sample"] = _tokens_per_sample(policy, data)
    except Exception as e:  # a diagnostic only; never fail the benchmark on it
        result["tokens_per_sample"] = None
        result["tokens_error"] = f"{type(e).__name__}: {e}"[:200]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        result["gpu"] = name
        if peak and result["tokens_per_sample"]:
            flops = 6 * params * result["tokens_per_sample"] * result["samples_per_s"]
            result["mfu"] = flops / peak["bf16" if cfg.precision == "bf16" else "fp32"]
        result["gpu_peak_mem_gb"] = max((r.get("peak_mem_gb") or 0.0 for r in rows), default=None)
    else:
        result["gpu"] = None
        result["mfu"] = "no GPU available"
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="", help="comma-separated preset names (default: every seed *_tiny)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--length", type=int, default=40)
    ap.add_argument("--size", type=int, default=32, help="camera resolution of the synthetic dataset")
    ap.add_argument("--out", default=str(HERE / "results" / "train.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, Path(args.data), args.steps, args.batch, Path(args.run))))
        return
    if args.steps <= WARMUP:
        ap.error(f"--steps must be > {WARMUP} (the warm-up steps are not timed)")
    from vlaforge.presets.seeds import SEED_PRESETS

    presets = [p for p in args.presets.split(",") if p] or [f"{n}_tiny" for n in SEED_PRESETS]
    rows = []
    env = {**os.environ, "VLAFORGE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        data = _synthetic_dataset(Path(tmp) / "data", args.episodes, args.length, args.size)
        for preset in presets:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", preset, "--data", str(data),
                   "--run", str(Path(tmp) / preset), "--steps", str(args.steps), "--batch", str(args.batch)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                rows.append({"preset": preset, "error": (proc.stderr or proc.stdout).strip()[-1500:]})
                print(f"{preset}: FAILED\n{rows[-1]['error']}", file=sys.stderr)
                continue
            rows.append(json.loads(line[len("RESULT "):]))
            print(f"{preset}: {rows[-1]['samples_per_s']:.1f} samples/s, {rows[-1]['peak_rss_mb']:.0f} MB",
                  file=sys.stderr)
    import torch

    result = {"steps": args.steps, "warmup_steps": WARMUP, "batch_size": args.batch, "cameras": 2,
              "camera_size": args.size, "episodes": args.episodes, "episode_length": args.length,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "note": None if torch.cuda.is_available() else "no GPU available: MFU not measured",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{args.steps} steps ({WARMUP} warm-up) of batch {args.batch}, 2 cameras {args.size}px, "
          f"{result['machine']} x{result['cpus']}, {result['gpu'] or 'no GPU'}\n")
    print("| preset | backbone + head | params (M) | samples/s (mean) | median step (ms) | peak RSS (MB) "
          "| tokens/sample | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | failed | | | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if isinstance(r.get("mfu"), float) else "n/a (no GPU)"
        tok = f"{r['tokens_per_sample']:.0f}" if r.get("tokens_per_sample") else "?"
        print(f"| {r['preset']} | {r['backbone']} + {r['head']} | {r['params_m']:.2f} | {r['samples_per_s']:.1f} "
              f"| {r['step_ms_median']:.0f} | {r['peak_rss_mb']:.0f} | {tok} | {mfu} |")


if __name__ == "__main__":
    main()
