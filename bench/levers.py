"""CPU throughput levers for the quick-start recipe, as ratios measured in one run (issue 15).

Trains the quick-start preset (real size: two 96 px cameras, batch 32 unless ``--batch``) on a synthetic dataset
with vlaforge's own loader, pipeline and ``train_step``, once per lever, and reports each lever's median step time
and its speed-up over the baseline (fp32, torch's default threads, no loader workers). The levers run in
interleaved rounds (A B C … A B C …) so that a shared machine's drift hits them alike; ratios, not absolute
times, are the result. Levers:

- ``threads=1``: torch intra-op threads 1 instead of the default (all cores);
- ``bf16``: autocast to bfloat16 (weights and optimizer stay fp32), as ``--precision=bf16`` trains; fast only
  where the CPU has bf16 matmul units (AMX, AVX512-BF16); on a CPU its attention runs torch's math kernel
  (``vlaforge.train.runtime.attention_kernels``);
- ``bf16_flash``: the same with torch's own attention kernel choice (the CPU flash kernel, slow in bf16 backward);
- ``channels_last``: the model and the image batch in channels-last memory format (helps convolutions);
- ``compile``: ``torch.compile`` (inductor) of the policy's training forward; its compile time is reported
  separately and not counted in the step time;
- ``workers=1``: one data-loader worker process (decode + augment overlap the step; on 2 cores it competes);
- ``adamw_loop``: torch's per-tensor AdamW loop instead of the fused kernel the trainer uses by default.

    python bench/levers.py [--preset quickstart_tokens] [--steps 8] [--rounds 2] [--levers all|bf16,compile]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LEVERS = ("baseline", "threads=1", "bf16", "bf16_flash", "channels_last", "compile", "workers=1", "adamw_loop")
WARMUP = 2


def _synthetic_dataset(root: Path, episodes: int, length: int, size: int) -> Path:
    spec = importlib.util.spec_from_file_location("_bench_data", HERE / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_dataset(root, episodes, length, size)


class Lever:
    """One configuration: its policy, optimizer and loader, built once and stepped in rounds."""

    def __init__(self, name: str, cfg: Any, default_threads: int) -> None:
        import torch

        from vlaforge.train.data import augmentation, make_loader
        from vlaforge.train.optim import make_optimizer
        from vlaforge.train.runtime import make_runtime
        from vlaforge.train.trainer import build_reader_and_policy

        self.name, self.cfg = name, cfg
        self.threads = 1 if name == "threads=1" else default_threads
        torch.manual_seed(0)
        reader, policy = build_reader_and_policy(cfg)
        self.runtime = make_runtime("none", "bf16" if name.startswith("bf16") else "fp32")
        self.runtime.math_attention = name != "bf16_flash"
        optim = cfg.optim.replace(fused=False) if name == "adamw_loop" else cfg.optim
        self.optimizer, self.scheduler = make_optimizer(policy, optim, 10**6)
        self.model = policy
        self.channels_last = name == "channels_last"
        if self.channels_last:
            policy.to(memory_format=torch.channels_last)
        self.compile_s = None
        if name == "compile":
            self.model = torch.compile(policy)
        pipeline = policy.train_pipeline(augmentation(cfg.data, list(policy.cfg.cameras)))
        loader = make_loader(reader, pipeline, batch_size=cfg.batch_size, seed=0, start_step=0, steps=10**6,
                             num_workers=1 if name == "workers=1" else 0)
        self.batches = iter(loader)
        self.times: list[float] = []

    def _batch(self) -> dict[str, Any]:
        import torch

        batch = next(self.batches)
        if self.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.ndim == 4 else v
                     for k, v in batch.items()}
        return batch

    def run(self, steps: int, first: bool) -> None:
        import torch

        from vlaforge.train.trainer import train_step

        torch.set_num_threads(self.threads)
        for i in range(steps + (WARMUP if first else 0)):
            t0 = time.perf_counter()
            batch = self._batch()  # loading counts: a worker lever overlaps it with the step
            train_step(self.model, self.optimizer, self.scheduler, [batch], self.cfg.optim.grad_clip, self.runtime)
            dt = time.perf_counter() - t0
            if first and i == 0 and self.name == "compile":
                self.compile_s = dt
            if not first or i >= WARMUP:
                self.times.append(dt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quickstart_tokens")
    ap.add_argument("--levers", default="all", help=f"comma-separated among {', '.join(LEVERS)} (baseline always)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per lever per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="default: the preset's")
    ap.add_argument("--size", type=int, default=96, help="camera resolution of the synthetic dataset")
    ap.add_argument("--data", default="", help="a LeRobot dataset to train on instead of the synthetic one (e.g. the "
                    "quick start's, which quickstart_mlp's environment-state target needs)")
    ap.add_argument("--out", default=str(HERE / "results" / "levers.json"))
    args = ap.parse_args()

    import torch

    from vlaforge.config import parse_overrides
    from vlaforge.eval.report import machine
    from vlaforge.presets import get_preset

    names = list(LEVERS) if args.levers == "all" else ["baseline", *(n for n in args.levers.split(",") if n)]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        sys.exit(f"--levers: unknown {', '.join(unknown)}; expected some of {', '.join(LEVERS)}")
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or _synthetic_dataset(Path(tmp) / "data", episodes=8, length=40, size=args.size)
        overrides = [f"--data.path={data}", f"--out={Path(tmp) / 'run'}"]
        if args.batch:
            overrides.append(f"--batch_size={args.batch}")
        cfg = parse_overrides(get_preset(args.preset), overrides)
        levers, errors = [], {}
        for name in names:
            try:
                levers.append(Lever(name, cfg, default_threads))
            except Exception as e:  # a lever this machine cannot use is reported, not fatal
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        for r in range(args.rounds):
            for lever in list(levers):
                try:
                    lever.run(args.steps, first=r == 0)
                except Exception as e:
                    errors[lever.name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    levers.remove(lever)
                print(f"round {r + 1}/{args.rounds} {lever.name}: "
                      f"{statistics.median(lever.times) if lever.times else float('nan'):.3f} s/step",
                      file=sys.stderr)
    base = next((lv for lv in levers if lv.name == "baseline"), None)
    if base is None:
        sys.exit(f"the baseline failed: {errors.get('baseline')}")
    base_s = statistics.median(base.times)
    rows = [{"lever": lv.name, "median_step_s": statistics.median(lv.times), "steps_timed": len(lv.times),
             "speedup": base_s / statistics.median(lv.times), "compile_s": lv.compile_s} for lv in levers]
    rows += [{"lever": n, "error": e} for n, e in errors.items()]
    result = {"preset": args.preset, "batch": cfg.batch_size, "camera_px": args.size, "rounds": args.rounds,
              "steps_per_round": args.steps, "default_threads": default_threads,
              "data": args.data or "synthetic", "machine": machine(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{args.preset}, batch {cfg.batch_size}, {args.size} px, {args.rounds} interleaved rounds x "
          f"{args.steps} steps\n\n| lever | median s/step | speed-up vs baseline | note |\n|---|---:|---:|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['lever']} | - | - | {row['error']} |")
        else:
            note = f"compile {row['compile_s']:.0f} s" if row["compile_s"] else ""
            print(f"| {row['lever']} | {row['median_step_s']:.3f} | {row['speedup']:.2f}x | {note} |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
