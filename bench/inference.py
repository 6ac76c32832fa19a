"""Latency per action chunk of every head, batch 1, CPU; and what caching the prefix saves iterative samplers.

For each head: the median time of ``policy.sample`` (prefix encode + the head's decoding / denoising), actions
per second (chunk length / latency), at the ``tiny`` backbone size and at a realistic ``256m`` one (random
weights). For the iterative heads (DiT, UNet, flow, in-LLM diffusion) it also measures, in the same run, a naive
sampler that re-encodes the prefix at every one of its S steps — S single-step samples back to back — and
reports naive / cached as a ratio. Writes ``bench/results/inference.json`` and prints a Markdown table.

    python bench/inference.py [--backbone qwen2_vl] [--sizes tiny,256m] [--heads dit,flow] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vlaforge.backbones.base import BACKBONES
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig, VLAPolicy
from vlaforge.processors import collate
from vlaforge.types import ACTION, OBS_STATE, TASK, RobotSpec, image_key

CAMERAS = {"front": (224, 224), "wrist": (224, 224)}
CHUNK, ACTION_DIM, STATE_DIM = 8, 7, 8
ITERATIVE = {"dit": 10, "unet1d": 10, "flow": 10, "inllm_diffusion": 4}  # steps (each head's default)
HEAD_OPTIONS = {"tokens_fast": ("tokens", {"binning": "fast"})}


def build(backbone: str, size: str, head: str) -> tuple[VLAPolicy, dict]:
    name, options = HEAD_OPTIONS.get(head, (head, {}))
    robot = RobotSpec(cameras=CAMERAS, state_dim=STATE_DIM, action_dim=ACTION_DIM)
    cfg = PolicyConfig(backbone=BACKBONES.get(backbone)(size=size), head=HEADS.get(name)(**options),
                       chunk=CHUNK, exec_steps=CHUNK // 2).with_robot(robot)
    torch.manual_seed(0)
    policy = VLAPolicy(cfg)
    rng = np.random.default_rng(0)
    stats = {k: {"mean": np.zeros(d), "std": np.ones(d), "q01": -np.ones(d), "q99": np.ones(d), "min": -np.ones(d),
                 "max": np.ones(d)} for k, d in ((OBS_STATE, STATE_DIM), (ACTION, ACTION_DIM))}
    policy.make_pipelines(stats, robot)
    if policy.head.needs_fit:
        class Reader:  # smooth synthetic chunks are enough to train a FAST tokenizer for timing
            def __len__(self) -> int:
                return 512

            def __getitem__(self, i: int) -> dict:
                t = np.linspace(0, 1, CHUNK)[:, None]
                return {ACTION: 0.5 * np.sin(6 * t + rng.uniform(0, 6, ACTION_DIM)).astype(np.float32)}
        policy.fit(Reader())
    obs = {image_key(c): rng.integers(0, 255, (*hw, 3), dtype=np.uint8) for c, hw in CAMERAS.items()}
    obs.update({OBS_STATE: rng.normal(size=STATE_DIM).astype(np.float32), TASK: "put the red block in the bowl"})
    return policy.eval(), collate([policy.inputs(obs)])


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


def measure(backbone: str, size: str, head: str, repeats: int) -> dict:
    policy, batch = build(backbone, size, head)
    with torch.inference_mode():
        encode_ms = timed(lambda: policy.backbone.encode(batch, use_cache=True), repeats)
        sample_ms = timed(lambda: policy.sample(batch), repeats)
        row = {"backbone": backbone, "size": size, "head": head, "chunk": CHUNK, "encode_ms": round(encode_ms, 1),
               "chunk_ms": round(sample_ms, 1), "actions_per_s": round(CHUNK / sample_ms * 1000, 1),
               "params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 2)}
        steps = ITERATIVE.get(head)
        if steps:
            one = timed(lambda: policy.sample(batch, num_steps=1), repeats)
            naive = timed(lambda: [policy.sample(batch, num_steps=1) for _ in range(steps)], max(1, repeats // 2))
            row.update({"steps": steps, "one_step_ms": round(one, 1), "reencode_every_step_ms": round(naive, 1),
                        "cache_speedup": round(naive / sample_ms, 2)})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="qwen2_vl")
    ap.add_argument("--sizes", default="tiny,256m")
    ap.add_argument("--heads", default="tokens,tokens_fast,mlp,lstm,gpt,dit,unet1d,flow,inllm_diffusion,hybrid")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes.split(","):
        for head in args.heads.split(","):
            rows.append(measure(args.backbone, size, head, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"torch": torch.__version__, "threads": args.threads, "batch": 1,
                                        "cameras": len(CAMERAS), "image": 224}, "results": rows}, indent=2))
    print("\n| size | head | ms / chunk | actions / s | steps | re-encode every step ms | cached speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = (f"{r['steps']} | {r['reencode_every_step_ms']} | {r['cache_speedup']}x" if "steps" in r
                 else "- | - | -")
        print(f"| {r['size']} | {r['head']} | {r['chunk_ms']} | {r['actions_per_s']} | {extra} |")


if __name__ == "__main__":
    main()
