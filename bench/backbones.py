"""Prefix-encode latency of every backbone family: batch 1, two camera views, a short instruction, on CPU.

Each family is measured at its ``tiny`` size (the tests' and quick start's scale) and at ``256m`` (random
weights with roughly SmolVLM-256M's shapes: a ViT-B tower at the family's resolution and SmolLM2-135M's decoder).
Writes ``bench/results/backbones.json`` and prints a Markdown table.

    python bench/backbones.py [--families smolvlm,qwen2_vl] [--sizes tiny,256m] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vlaforge.backbones.base import BACKBONES
from vlaforge.types import ATTENTION_MASK, INPUT_IDS, OBS_STATE, image_key

CAMERAS = ["front", "wrist"]


def measure(family: str, size: str, repeats: int, dtype: str) -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    bb = BACKBONES.get(family)(size=size, dtype=dtype).build(CAMERAS, state_dim=8).eval()
    build_s = time.perf_counter() - t0
    s = bb.image_size
    ids = torch.tensor([bb.tokenizer("pick up the red block and put it in the bowl", add_special_tokens=False)
                        ["input_ids"]])
    batch = {image_key(c): torch.rand(1, 3, s, s) for c in CAMERAS}
    batch.update({INPUT_IDS: ids, ATTENTION_MASK: torch.ones_like(ids), OBS_STATE: torch.zeros(1, 8)})
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t = time.perf_counter()
            ctx = bb.encode(batch, use_cache=True)
            if i >= 2:  # two warm-up runs
                times.append((time.perf_counter() - t) * 1000)
    params = sum(p.numel() for p in bb.parameters())
    result = {"family": family, "size": size, "dtype": dtype, "params_m": round(params / 1e6, 2),
              "image_size": s, "prefix_tokens": int(ctx.prefix_len),
              "encode_ms_median": round(statistics.median(times), 2), "encode_ms_min": round(min(times), 2),
              "build_s": round(build_s, 2)}
    del bb, ctx
    gc.collect()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(BACKBONES.names()))
    ap.add_argument("--sizes", default="tiny,256m")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "backbones.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for family in args.families.split(","):
        for size in args.sizes.split(","):
            row = measure(family, size, args.repeats, args.dtype)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "batch": 1, "views": len(CAMERAS)}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print("\n| family | size | params (M) | image | prefix tokens | encode ms (median) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['size']} | {r['params_m']} | {r['image_size']} | {r['prefix_tokens']} | "
              f"{r['encode_ms_median']} |")


if __name__ == "__main__":
    main()
