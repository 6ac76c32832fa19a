"""Frames per second the data layer delivers to the trainer: video decode + transforms + collate, batch 32.

Builds (or reads, with ``--data``) a LeRobot v3 dataset with two cameras, wraps it in a tiny policy's training
pipeline (feature check, normalization, random shift, resize, tokenization) and times the trainer's own loader
with 0 and 2 worker processes, for both video cache modes (``preload``: decode each episode's video once into
memory; ``episode``: keep only the current episode decoded). Writes ``bench/results/data.json`` and prints a
Markdown table.

    python bench/data.py [--data DIR] [--size 96] [--episodes 20] [--steps 30] [--workers 0,2]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlaforge.backbones.base import BACKBONES
from vlaforge.data.lerobot import LeRobotDataset, LeRobotWriter
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig, VLAPolicy
from vlaforge.train.config import DataConfig
from vlaforge.train.data import augmentation, make_loader
from vlaforge.types import ACTION, OBS_STATE, FeatureSpec, image_key

BATCH = 32


def synthetic_dataset(root: Path, episodes: int, length: int, size: int) -> Path:
    """Smooth moving images (compress like real camera frames, unlike noise) + random state/action."""
    feats = {image_key(c): FeatureSpec("video", (size, size, 3)) for c in ("scene", "wrist")}
    feats[OBS_STATE] = FeatureSpec("float32", (4,))
    feats[ACTION] = FeatureSpec("float32", (4,))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rng = np.random.default_rng(0)
    with LeRobotWriter(root, 20, feats) as w:
        for e in range(episodes):
            frames = {}
            for c, key in enumerate(k for k in feats if k.startswith("observation.images")):
                t = np.arange(length, dtype=np.float32)[:, None, None]
                cy, cx = size / 2 + size / 4 * np.sin(t / 9 + e + c), size / 2 + size / 4 * np.cos(t / 7 + e)
                blob = 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (size * 2))
                img = np.stack([60 + 80 * xx / size + blob, 90 + blob * 0.5,
                                np.broadcast_to(140 - 60 * yy / size, blob.shape)], -1)
                frames[key] = np.clip(img, 0, 255).astype(np.uint8)
            frames[OBS_STATE] = np.cumsum(rng.normal(0, 0.05, (length, 4)), 0).astype(np.float32)
            frames[ACTION] = rng.uniform(-1, 1, (length, 4)).astype(np.float32)
            w.add_episode(frames, f"task {e % 5}")
    return root


def measure(root: Path, workers: int, cache: str, steps: int, image_size: int) -> dict:
    t_open = time.perf_counter()
    reader = LeRobotDataset(root, chunk=8, video_cache=cache)  # preload decodes every video here
    open_s = time.perf_counter() - t_open
    robot = reader.meta.robot_spec()
    cfg = PolicyConfig(backbone=BACKBONES.get("smolvlm")(size="tiny", image_size=image_size),
                       head=HEADS.get("mlp")(), chunk=8).with_robot(robot)
    policy = VLAPolicy(cfg)
    policy.make_pipelines(reader.meta.stats, robot)
    pipeline = policy.train_pipeline(augmentation(DataConfig(shift_pad=4), list(cfg.cameras)))
    loader = make_loader(reader, pipeline, batch_size=BATCH, seed=0, start_step=0, steps=steps + 2,
                         num_workers=workers)
    it = iter(loader)
    t0 = time.perf_counter()
    first = next(it)  # includes worker start-up and, for preload, decoding every video
    warm = time.perf_counter() - t0
    next(it)
    t1 = time.perf_counter()
    n = 0
    for batch in it:
        n += len(batch[ACTION])
    dt = time.perf_counter() - t1
    assert first[image_key("scene")].shape[-1] == image_size
    return {"workers": workers, "video_cache": cache, "frames_per_s": n / dt, "open_s": open_s, "first_batch_s": warm,
            "batches": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="an existing LeRobot v3 dataset (default: a synthetic one)")
    ap.add_argument("--size", type=int, default=96, help="camera resolution of the synthetic dataset")
    ap.add_argument("--image-size", type=int, default=96, help="backbone input resolution")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30, help="timed batches per configuration")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--caches", default="preload,episode")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else synthetic_dataset(Path(tmp) / "bench", args.episodes, args.length,
                                                                    args.size)
        rows = [measure(root, int(w), c, args.steps, args.image_size)
                for c in args.caches.split(",") for w in args.workers.split(",")]
        info = json.loads((root / "meta/info.json").read_text())
    result = {"batch_size": BATCH, "frames": info["total_frames"], "episodes": info["total_episodes"],
              "camera_size": args.size, "image_size": args.image_size, "cameras": 2, "machine": platform.processor()
              or platform.machine(), "cpus": torch.get_num_threads(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{info['total_frames']} frames, 2 cameras {args.size}px -> {args.image_size}px, batch {BATCH}\n")
    print("| video cache | workers | frames/s | open dataset (s) | first batch (s) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['video_cache']} | {r['workers']} | {r['frames_per_s']:.0f} | {r['open_s']:.2f} "
              f"| {r['first_batch_s']:.2f} |")


if __name__ == "__main__":
    main()
