"""Training throughput and memory of every ``*_tiny`` seed preset (HybridVLA, DexVLA, DiVLA, LLaVA-VLA, ...).

Writes a synthetic LeRobot v3 dataset (two cameras, 32 px, with ``bench/data.py``'s writer), then trains each
preset for ``--steps`` steps in its own subprocess, so that the peak resident memory (``ru_maxrss``) is that
preset's alone. Throughput is samples/s over the steps after two warm-up steps, from the run's
``metrics.jsonl`` (the trainer logs ``samples_per_s`` per step with ``log_every=1``): the mean, and the median
step (robust to other jobs on a shared machine).

Model FLOPs utilization: MFU = training FLOPs per sample × samples/s (median step) / peak FLOP/s. The FLOPs per
sample are counted by torch's ``FlopCounterMode`` over one forward + backward of a freshly built policy (not
6 × params × tokens: frozen weights get no weight-gradient matmuls, LoRA and repeated diffusion steps count as they
run). The peak is the data sheet's dense bf16 / fp32 rate on a known GPU and, on a CPU, the measured rate of a
2048² matmul at the run's precision and thread count, measured once between the presets' runs so that every row
divides by the same number (``peak_source`` says which). Writes
``bench/results/train.json`` and prints a Markdown table.

Memory besides the run's peak RSS (which includes building the model): the bytes of the policy's weights as
held in memory (``weights_mb``: a QLoRA base counts its packed 4-bit weights and their scales), the saved
``model.safetensors`` (``ckpt_mb``), and, on CPU, the peak RSS of three optimizer steps on a freshly built policy
after the kernel's high-water mark is reset (``step_peak_rss_mb``: what training needs once the model is built;
measured first, before the run, so that nothing the run left behind counts).
``--set KEY=VALUE`` overrides every preset's config as ``vlaforge train --KEY=VALUE`` does, e.g. LoRA vs QLoRA:

    python bench/train.py [--presets hybridvla_tiny,divla_tiny] [--steps 20] [--batch 8]
    python bench/train.py --presets divla --batch 2 --steps 6 --size 64 \
        --set policy.backbone.lora.quantize=nf4 --out bench/results/train_qlora.json
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
# Dense peak FLOP/s per precision (vendor data sheets), by a substring of torch.cuda.get_device_name(); the first
# match wins, so a variant comes before its family's name ("H100 PCIe" before "H100", "L40S" before "L40").
PEAK_FLOPS = {"H100 PCIe": {"bf16": 756e12, "fp32": 51e12}, "H100 NVL": {"bf16": 835e12, "fp32": 60e12},
              "H200": {"bf16": 989e12, "fp32": 67e12}, "H100": {"bf16": 989e12, "fp32": 67e12},
              "A100": {"bf16": 312e12, "fp32": 19.5e12}, "L40S": {"bf16": 362e12, "fp32": 91.6e12},
              "L40": {"bf16": 181e12, "fp32": 90.5e12}, "4090": {"bf16": 165e12, "fp32": 82.6e12},
              "A6000": {"bf16": 155e12, "fp32": 38.7e12}}


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
    from vlaforge.processors.base import collate, to_device

    reader = LeRobotDataset(root, chunk=policy.cfg.chunk, history=policy.cfg.history)
    batch = collate([policy.inputs(reader[i]) for i in range(2)])
    batch = to_device(batch, policy.device)
    with torch.no_grad():
        ctx = policy.encode(batch)
    frames = policy.cfg.history if policy.cfg.backbone.history == "per_frame" else 1
    return float(ctx.mask.sum(-1).float().mean()) * frames + policy.cfg.chunk


def _rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (``VmRSS``) or its high-water mark (``VmHWM``), from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _matmul_peak_flops(kind: str, n: int = 2048, reps: int = 20) -> float:
    """This CPU's dense matmul rate (FLOP/s, best of ``reps`` n×n matmuls in ``kind`` = bf16 | fp32 at the run's
    threads): the denominator of MFU where no data sheet applies (AMX makes bf16 several times fp32 here)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[kind]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _fresh_policy_step(cfg, batch: int, steps: int = 3) -> dict:
    """Build a policy from ``cfg`` as training does, then measure on it, before the timed run:

    - ``step_peak_rss_mb`` (CPU, Linux): peak RSS of ``steps`` AdamW steps (autocast as the run has it) after
      resetting the kernel's high-water mark once the policy is built: what training needs beyond building it;
    - ``flops_per_sample``: the matmul / convolution / attention FLOPs of one training forward + backward, counted
      by torch's ``FlopCounterMode`` (``vlaforge.train.flops``) and divided by the batch. Counted, not estimated:
      frozen weights get no weight-gradient matmuls, repeated diffusion steps and every camera's vision tokens
      count. Gradient checkpointing is switched off while counting, so its recomputed forward does not count
      (attention's backward does count its recomputed scores, as torch counts it for the GPU kernels).
    """
    import gc

    import torch

    from vlaforge.processors.base import collate, to_device
    from vlaforge.train.flops import flop_counter
    from vlaforge.train.trainer import build_reader_and_policy

    reader, policy = build_reader_and_policy(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy.to(device).train()
    pipeline = policy.train_pipeline()
    batch_ = collate([pipeline(reader[i]) for i in range(batch)])
    batch_ = to_device(batch_, device)

    def loss() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            return policy.loss(batch_)["loss"]

    out: dict = {"step_peak_rss_mb": None}
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        resettable = device.type == "cpu"
    except OSError:
        resettable = False
    for _ in range(steps):
        loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if resettable:
        out["step_peak_rss_mb"] = _rss_mb("VmHWM")
    if cfg.policy.backbone.gradient_checkpointing:
        disable = getattr(policy.backbone.model, "activation_checkpointing_disable", None)
        if disable is None:
            raise RuntimeError(f"{type(policy.backbone.model).__name__} cannot switch gradient checkpointing off: "
                               f"its recomputed forward would count as model FLOPs")
        disable()
    with flop_counter() as counter:  # torch's counter + CPU attention and bitsandbytes' 4-bit matmul
        loss().backward()
    out["flops_per_sample"] = counter.get_total_flops() / batch
    return out


def worker(preset: str, data: Path, steps: int, batch: int, out: Path, overrides: list[str]) -> dict:
    """Train one preset in this process; return its numbers (run in a subprocess by ``main``)."""
    import torch

    from vlaforge.config import parse_overrides
    from vlaforge.policy import VLAPolicy
    from vlaforge.presets import get_preset
    from vlaforge.quantize import parameter_count
    from vlaforge.train.trainer import train

    cfg = parse_overrides(get_preset(preset), [f"--{o.removeprefix('--')}" for o in overrides])
    cfg = cfg.replace(data=cfg.data.replace(path=str(data)), out=str(out), steps=steps, batch_size=batch,
                      save_every=steps, log_every=1)
    fresh = _fresh_policy_step(cfg, batch)
    if torch.cuda.is_available():  # the run's own peak, not the measuring policy's
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    final = train(cfg, show_progress=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > WARMUP]
    per_step = sorted(batch / r["samples_per_s"] for r in timed)
    seconds = sum(per_step)
    median = per_step[len(per_step) // 2]
    policy = VLAPolicy.from_pretrained(final)
    params, trainable = parameter_count(policy), parameter_count(policy, trainable=True)
    weights_mb = sum(t.numel() * t.element_size() for t in policy.state_dict().values()) / 2**20
    result = {"preset": preset, "overrides": overrides, "backbone": cfg.policy.backbone.type,
              "head": cfg.policy.head.type, "weights_mb": weights_mb,
              "ckpt_mb": (final / "model.safetensors").stat().st_size / 2**20,
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
    result["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    if result["gpu"]:
        result["gpu_peak_mem_gb"] = max((r.get("peak_mem_gb") or 0.0 for r in rows), default=None)
    # MFU on the median step (the mean carries the shared machine's hiccups)
    result["flops_per_sample"] = fresh["flops_per_sample"]
    result["achieved_tflops"] = fresh["flops_per_sample"] * result["samples_per_s_median"] / 1e12
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    result["step_peak_rss_mb"] = fresh["step_peak_rss_mb"]
    return result


def _peak_flops(kind: str) -> tuple[float | None, str]:
    """The MFU denominator for ``kind`` = bf16 | fp32: a GPU's data-sheet dense peak, or this CPU's measured matmul
    rate (measured once, in the parent, so that every row divides by the same number)."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v[kind] for k, v in PEAK_FLOPS.items() if k in name), None)
        return peak, f"{name} data sheet, dense {kind}" if peak else f"{name}: not in PEAK_FLOPS"
    return _matmul_peak_flops(kind), f"measured 2048² {kind} matmul on this CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="", help="comma-separated preset names (default: every seed *_tiny)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--length", type=int, default=40)
    ap.add_argument("--size", type=int, default=32, help="camera resolution of the synthetic dataset")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override every preset's config (as `vlaforge train --KEY=VALUE`); repeatable")
    ap.add_argument("--out", default=str(HERE / "results" / "train.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, Path(args.data), args.steps, args.batch, Path(args.run),
                                            args.set)))
        return
    if args.steps <= WARMUP:
        ap.error(f"--steps must be > {WARMUP} (the warm-up steps are not timed)")
    from vlaforge.presets.seeds import SEED_PRESETS

    presets = [p for p in args.presets.split(",") if p] or [f"{n}_tiny" for n in SEED_PRESETS]
    rows: list[dict] = []
    peaks: dict[str, tuple[float | None, str]] = {}
    env = {**os.environ, "VLAFORGE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        data = _synthetic_dataset(Path(tmp) / "data", args.episodes, args.length, args.size)
        for preset in presets:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", preset, "--data", str(data),
                   "--run", str(Path(tmp) / preset), "--steps", str(args.steps), "--batch", str(args.batch),
                   *[f"--set={o}" for o in args.set]]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                rows.append({"preset": preset, "error": (proc.stderr or proc.stdout).strip()[-1500:]})
                print(f"{preset}: FAILED\n{rows[-1]['error']}", file=sys.stderr)
                continue
            rows.append(json.loads(line[len("RESULT "):]))
            kind = "bf16" if rows[-1]["precision"] == "bf16" else "fp32"
            if kind not in peaks:  # between the presets' runs, never during one
                peaks[kind] = _peak_flops(kind)
            peak, rows[-1]["peak_source"] = peaks[kind]
            rows[-1]["peak_tflops"] = peak / 1e12 if peak else None
            rows[-1]["mfu"] = rows[-1]["achieved_tflops"] / rows[-1]["peak_tflops"] if peak else None
            print(f"{preset}: {rows[-1]['samples_per_s']:.1f} samples/s, {rows[-1]['peak_rss_mb']:.0f} MB",
                  file=sys.stderr)
    import torch

    result = {"steps": args.steps, "warmup_steps": WARMUP, "batch_size": args.batch, "cameras": 2,
              "camera_size": args.size, "episodes": args.episodes, "episode_length": args.length,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "overrides": args.set,
              "peaks": {k: {"tflops": p / 1e12 if p else None, "source": src} for k, (p, src) in peaks.items()},
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{args.steps} steps ({WARMUP} warm-up) of batch {args.batch}, 2 cameras {args.size}px, "
          f"{result['machine']} x{result['cpus']}, {result['gpu'] or 'no GPU'}\n")
    if args.set:
        print("overrides: " + " ".join(f"--{o}" for o in args.set) + "\n")
    print("| preset | backbone + head | params (M) | samples/s (mean) | median step (ms) | peak RSS (MB) "
          "| step peak RSS (MB) | weights (MB) | tokens/sample | GFLOP/sample | TFLOP/s | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | failed |" + " |" * 10)
            continue
        mfu = f"{r['mfu']:.1%}" if isinstance(r.get("mfu"), float) else "n/a"
        tok = f"{r['tokens_per_sample']:.0f}" if r.get("tokens_per_sample") else "?"
        step_rss = f"{r['step_peak_rss_mb']:.0f}" if r.get("step_peak_rss_mb") else "n/a"
        print(f"| {r['preset']} | {r['backbone']} + {r['head']} | {r['params_m']:.2f} | {r['samples_per_s']:.1f} "
              f"| {r['step_ms_median']:.0f} | {r['peak_rss_mb']:.0f} | {step_rss} | {r['weights_mb']:.0f} | {tok} "
              f"| {r['flops_per_sample'] / 1e9:.2f} | {r['achieved_tflops']:.3f} | {mfu} |")
    for kind, (peak, source) in peaks.items():
        print(f"\nMFU ({kind}) against: {source}" + (f", {peak / 1e12:.3f} TFLOP/s" if peak else ""))


if __name__ == "__main__":
    main()
