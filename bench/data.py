"""Frames per second the data layer delivers to the trainer: video decode + transforms + collate, batch 32.

Builds (or reads, with ``--data``) a LeRobot v3 dataset with two cameras, wraps it in a tiny policy's training
pipeline (feature check, normalization, random shift, resize, tokenization) and times the trainer's own loader
with 0 and 2 worker processes, for each video cache mode (``preload``: decode every video once into memory;
``episode``: decode a whole episode per miss; ``seek``: decode only the group of pictures holding the frame,
through the keyframe index), ``seek`` also with the clip sampler (``--clip-frames`` neighbouring frames per clip,
shuffled over ``--shuffle-buffer`` positions). The episode / seek caches get ``--cache-frac`` (10 %) of the
decoded size, split over the workers as the trainer does. ``seek+raw`` is ``seek`` without the policy's
pipeline (decode + collate only: the work LeRobot's loader does). ``disk`` is ``seek`` with decoded groups also
written to a disk cache capped at ``--disk-frac`` (100 %) of the decoded size, starting empty; ``disk+warm`` first
fills it with one pass over the dataset (``disk_fill_s``). ``lerobot`` is the peer: LeRobot's own
``LeRobotDataset`` + torch ``DataLoader`` on the same dataset (random sampling, same cameras and action chunk),
run by ``bench/lerobot_peer.py`` in the separate venv of ``make lerobot-venv`` (``--lerobot-python``); where it
cannot run, its row says why instead of a number. With several ``--gops`` the synthetic dataset is written once per
keyframe interval and its video size is reported. Writes ``bench/results/data.json`` (with the machine's load
average: the numbers are only comparable within one run) and prints a Markdown table.

    python bench/data.py [--data DIR] [--size 96] [--episodes 10] [--steps 20] [--workers 0,2] [--gops 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlaforge.backbones.base import BACKBONES
from vlaforge.data.lerobot import LeRobotDataset, LeRobotWriter
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig, VLAPolicy
from vlaforge.processors.base import Pipeline
from vlaforge.train.config import DataConfig
from vlaforge.train.data import augmentation, make_loader
from vlaforge.types import ACTION, OBS_STATE, FeatureSpec, image_key

BATCH = 32
CHUNK = 8  # action chunk every row reads (LeRobot: delta_timestamps over the same frames)
LEROBOT_PYTHON = Path(__file__).resolve().parents[1] / ".venv-lerobot" / "bin" / "python"


def synthetic_dataset(root: Path, episodes: int, length: int, size: int, gop: int | None = None) -> Path:
    """Smooth moving images (compress like real camera frames, unlike noise) + random state/action."""
    feats = {image_key(c): FeatureSpec("video", (size, size, 3)) for c in ("scene", "wrist")}
    feats[OBS_STATE] = FeatureSpec("float32", (4,))
    feats[ACTION] = FeatureSpec("float32", (4,))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rng = np.random.default_rng(0)
    with LeRobotWriter(root, 20, feats, gop=gop) as w:
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


def decoded_bytes(root: Path) -> int:
    info = json.loads((root / "meta/info.json").read_text())
    return sum(info["total_frames"] * int(np.prod(f["shape"])) for f in info["features"].values()
               if f["dtype"] == "video")


def measure(root: Path, workers: int, cache: str, steps: int, image_size: int, cache_mb: float, clip: int,
            buffer: int, raw: bool = False, disk: dict | None = None) -> dict:
    disk = dict(disk or {})
    warm = disk.pop("warm", False)
    kw = {"chunk": CHUNK, "video_cache": cache, "max_cache_mb": cache_mb / max(1, workers), **disk}
    fill_s = None
    if warm:  # one pass over the dataset writes every group to disk
        t = time.perf_counter()
        filler = LeRobotDataset(root, **kw)
        for i in range(len(filler)):
            filler[i]
        fill_s = time.perf_counter() - t
    t_open = time.perf_counter()
    # preload decodes every video here; seek reads (or builds) the keyframe index; the budget is per process
    reader = LeRobotDataset(root, **kw)
    open_s = time.perf_counter() - t_open
    robot = reader.meta.robot_spec()
    cfg = PolicyConfig(backbone=BACKBONES.get("smolvlm")(size="tiny", image_size=image_size),
                       head=HEADS.get("mlp")(), chunk=CHUNK).with_robot(robot)
    policy = VLAPolicy(cfg)
    policy.make_pipelines(reader.meta.stats, robot)
    pipeline = Pipeline([]) if raw else policy.train_pipeline(augmentation(DataConfig(shift_pad=4),
                                                                           list(cfg.cameras)))
    loader = make_loader(reader, pipeline, batch_size=BATCH, seed=0, start_step=0, steps=steps + 2,
                         num_workers=workers, clip_frames=clip, shuffle_buffer=buffer)
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
    assert first[image_key("scene")].shape[-1] == (3 if raw else image_size)
    name = cache + ("+raw" if raw else "") + ("+warm" if fill_s is not None else "")
    return {"workers": workers, "video_cache": name, "clip_frames": clip, "disk_fill_s": fill_s,
            "disk_cache_mb": disk.get("disk_cache_mb"),
            "shuffle_buffer": buffer if clip > 1 else 0,
            "frames_per_s": n / dt, "open_s": open_s, "first_batch_s": warm, "batches": steps,
            "max_cache_mb": cache_mb if cache != "preload" else None}


def measure_lerobot(root: Path, workers: int, steps: int, python: Path) -> dict:
    """LeRobot's loader in a subprocess running the LeRobot venv's python; ``error`` says why it could not run."""
    row = {"workers": workers, "video_cache": "lerobot", "clip_frames": 1, "shuffle_buffer": 0, "frames_per_s": None,
           "batches": steps, "max_cache_mb": None}
    if not python.exists():
        return {**row, "error": f"no LeRobot venv: {python} does not exist (run `make lerobot-venv`)"}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    cmd = [str(python), str(Path(__file__).with_name("lerobot_peer.py")), str(root), "--workers", str(workers),
           "--batch", str(BATCH), "--steps", str(steps), "--chunk", str(CHUNK)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    except subprocess.TimeoutExpired:
        return {**row, "error": "lerobot_peer.py ran past 1800 s"}
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {**row, "error": f"lerobot_peer.py exited {p.returncode}: {tail}"}
    if "frame_digests" in out:  # the same pixels as vlaforge's reader at the frames LeRobot hashed?
        ours = LeRobotDataset(root, video_cache="seek")
        out["same_frames_as_vlaforge"] = all(
            hashlib.sha256(np.ascontiguousarray(ours[int(i)][k]).tobytes()).hexdigest() == h
            for i, per_cam in out["frame_digests"].items() for k, h in per_cam.items())
    return {**row, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="an existing LeRobot v3 dataset (default: a synthetic one)")
    ap.add_argument("--size", type=int, default=96, help="camera resolution of the synthetic dataset")
    ap.add_argument("--image-size", type=int, default=96, help="backbone input resolution")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20, help="timed batches per configuration")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--caches", default="preload,episode,seek,seek+clip,seek+raw,disk,disk+warm,lerobot")
    ap.add_argument("--disk-frac", type=float, default=1.0, help="disk cache cap / decoded size")
    ap.add_argument("--cache-frac", type=float, default=0.1, help="episode/seek cache budget / decoded size")
    ap.add_argument("--clip-frames", type=int, default=4)
    ap.add_argument("--shuffle-buffer", type=int, default=64)
    ap.add_argument("--gops", default="2", help="keyframe intervals of the synthetic dataset (comma-separated)")
    ap.add_argument("--lerobot-python", default=str(LEROBOT_PYTHON), help="python of the LeRobot venv")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    load_before = os.getloadavg()
    rows, sizes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for gop in ([None] if args.data else [int(g) for g in args.gops.split(",")]):
            root = Path(args.data) if args.data else synthetic_dataset(Path(tmp) / f"bench-g{gop}", args.episodes,
                                                                        args.length, args.size, gop)
            decoded = decoded_bytes(root)
            video = sum(p.stat().st_size for p in (root / "videos").rglob("*.mp4"))
            sizes[str(gop)] = {"video_bytes": video, "decoded_bytes": decoded}
            cache_mb = args.cache_frac * decoded / 2**20
            for c in args.caches.split(","):
                for w in args.workers.split(","):
                    if c == "lerobot":
                        rows.append({"gop": gop, **measure_lerobot(root, int(w), args.steps,
                                                                   Path(args.lerobot_python))})
                        continue
                    clip = args.clip_frames if c.endswith("+clip") else 1
                    disk = None
                    if c.startswith("disk"):  # a fresh cache directory per row
                        disk = {"cache_dir": Path(tmp) / f"frames-g{gop}-{c}-w{w}", "warm": c.endswith("+warm"),
                                "disk_cache_mb": args.disk_frac * decoded / 2**20}
                    row = measure(root, int(w), c.split("+")[0], args.steps, args.image_size, cache_mb,
                                  clip, args.shuffle_buffer, raw=c.endswith("+raw"), disk=disk)
                    rows.append({"gop": gop, **row})
            info = json.loads((root / "meta/info.json").read_text())
    base = {(r["gop"], r["workers"]): r["frames_per_s"] for r in rows if r["video_cache"] == "preload"}
    for r in rows:  # ratio to preload on the same dataset with the same workers
        key = (r["gop"], r["workers"])
        r["vs_preload"] = r["frames_per_s"] / base[key] if key in base and r["frames_per_s"] else None
    result = {"batch_size": BATCH, "frames": info["total_frames"], "episodes": info["total_episodes"],
              "camera_size": args.size, "image_size": args.image_size, "cameras": 2, "machine": platform.processor()
              or platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "cache_frac": args.cache_frac,
              "video_sizes": sizes, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{info['total_frames']} frames, 2 cameras {args.size}px -> {args.image_size}px, batch {BATCH}, "
          f"cache budget {args.cache_frac:.0%} of the decoded size, load average {load_before[0]:.1f}\n")
    print("| gop | video cache | clip frames | workers | frames/s | vs preload | open dataset (s) | first batch (s) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['vs_preload']:.2f}" if r["vs_preload"] else "-"
        name = r["video_cache"] + (f" ({r['video_backend']})" if r.get("video_backend") else "")
        if r["frames_per_s"] is None:
            print(f"| {r['gop'] or '-'} | {name} | - | {r['workers']} | did not run: {r['error']} | - | - | - |")
            continue
        print(f"| {r['gop'] or '-'} | {name} | {r['clip_frames']} | {r['workers']} | "
              f"{r['frames_per_s']:.0f} | {ratio} | {r['open_s']:.2f} | {r['first_batch_s']:.2f} |")
    if peer := next((r["versions"] for r in rows if r.get("versions")), None):
        same = {r.get("same_frames_as_vlaforge") for r in rows if r.get("versions")}
        print(f"LeRobot row: {peer} in its own venv; vlaforge rows: torch {torch.__version__} ({sys.executable}); "
              f"LeRobot's pixels equal vlaforge's at the checked frames: {same}")
    for g, v in sizes.items():
        print(f"gop {g}: video {v['video_bytes'] / 2**20:.2f} MiB, decoded {v['decoded_bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
