"""LeRobot's own loader on a LeRobot v3 dataset: frames/s of ``LeRobotDataset`` + torch ``DataLoader``.

Run by ``bench/data.py`` with the python of the separate LeRobot venv (``make lerobot-venv``); it imports lerobot
and torch only (not vlaforge). Random sampling (``shuffle=True``), the dataset's cameras at the current frame and
an action chunk of ``--chunk`` frames (``delta_timestamps``), as vlaforge's rows read them. Prints one JSON
object: frames/s, the video backend used, the versions, or ``error`` with the reason it could not run. Where
LeRobot's default backend (torchcodec) cannot load, it says why and measures LeRobot's pyav backend.

    .venv-lerobot/bin/python bench/lerobot_peer.py DATASET --workers 0 [--batch 32] [--steps 20] [--chunk 8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import traceback


def measure(root: str, workers: int, batch: int, steps: int, chunk: int, backend: str | None) -> dict:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    torch.set_num_threads(2)
    meta = LeRobotDatasetMetadata("local/bench", root=root)
    deltas = {"action": [i / meta.fps for i in range(chunk)]}
    kw = {"video_backend": backend} if backend else {}
    t_open = time.perf_counter()
    ds = LeRobotDataset("local/bench", root=root, delta_timestamps=deltas, **kw)
    open_s = time.perf_counter() - t_open
    # shuffled epochs back to back (as many as the timed batches need), as shuffle=True draws one
    sampler = torch.utils.data.RandomSampler(ds, num_samples=batch * (steps + 2),
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers)
    it = iter(loader)
    t0 = time.perf_counter()
    first = next(it)  # worker start-up included
    warm = time.perf_counter() - t0
    next(it)
    t1, n = time.perf_counter(), 0
    for _ in range(steps):
        b = next(it)
        n += len(b["action"])
    dt = time.perf_counter() - t1
    cams = list(meta.video_keys)
    shapes = {k: list(first[k].shape) for k in [*cams, "action"]}
    return {"frames_per_s": n / dt, "open_s": open_s, "first_batch_s": warm, "batches": steps,
            "video_backend": ds.video_backend, "cameras": cams, "shapes": shapes, "frame_digests": digests(ds, cams)}


def digests(ds, cams: list[str]) -> dict[str, dict[str, str]]:
    """sha256 of the uint8 HWC pixels LeRobot returns at the first, middle and last frame, per camera (the caller
    compares them with vlaforge's frames)."""
    import torch

    out = {}
    for i in (0, len(ds) // 2, len(ds) - 1):
        item = ds[i]
        out[str(i)] = {k: hashlib.sha256((item[k] * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
                                         .numpy().tobytes()).hexdigest() for k in cams}
    return out


def _reason(e: BaseException) -> str:
    last = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} ({last.filename}:{last.lineno})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--backend", help="video backend (default: LeRobot's own choice)")
    args = ap.parse_args()
    out: dict = {}
    try:
        import lerobot
        import torch

        out["versions"] = {"lerobot": getattr(lerobot, "__version__", None), "torch": torch.__version__}
        backend = args.backend
        if backend is None:  # LeRobot's default, torchcodec, needs the system's FFmpeg libraries; else pyav
            try:
                import torchcodec.decoders  # noqa: F401  (loads libtorchcodec and FFmpeg)
            except Exception as e:
                lines = [x for x in str(e).splitlines() if x.startswith("OSError: lib")]
                out["default_backend_error"] = f"torchcodec cannot load: {lines[0] if lines else _reason(e)}"
                backend = "pyav"
        out.update(measure(args.root, args.workers, args.batch, args.steps, args.chunk, backend))
    except Exception as e:  # the caller reports why the peer could not run instead of a number
        out["error"] = _reason(e)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
