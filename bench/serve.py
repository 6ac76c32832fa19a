"""Load test of ``vlaforge serve`` on localhost: N concurrent clients for D seconds, dynamic batching on vs off.

Each client is a :class:`~vlaforge.serve.client.RemotePolicy` (unseeded, so the server may batch its requests
with the others') sending one observation at a time, back to back, in its own thread. The server runs in this
process on a background event loop with its policy on one worker thread, exactly as ``vlaforge serve`` does.
Both modes serve the same loaded policy: "on" with ``--max-batch`` / ``--max-wait-ms``, "off" with max_batch=1.
Reports failed requests, p50 / p99 latency, throughput (requests and actions per second), the mean batch size
the server formed, and on/off ratios; writes ``bench/results/serve.json`` and prints a Markdown table.

    python bench/serve.py [--checkpoint DIR] [--duration 30] [--clients 8] [--max-batch 8] [--max-wait-ms 5]

Without ``--checkpoint`` a tiny random-initialized checkpoint is built (smolvlm ``tiny`` at 32 px, a pi0-style
flow head with 10 Euler steps, chunk 8, two 64x64 cameras, state 8, action 7).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlaforge.inference import LocalPolicy
from vlaforge.serve.client import RemotePolicy
from vlaforge.serve.server import PolicyServer, ServeConfig, ServerThread
from vlaforge.types import ACTION, OBS_STATE, TASK, RobotSpec, image_key

ROBOT = RobotSpec(cameras={"front": (64, 64), "wrist": (64, 64)}, state_dim=8, action_dim=7)


def build_checkpoint(directory: Path) -> Path:
    """A tiny random-initialized checkpoint (no data needed: identity-ish normalization statistics)."""
    from vlaforge.backbones.base import BACKBONES
    from vlaforge.heads.base import HEADS
    from vlaforge.policy import PolicyConfig, VLAPolicy

    cfg = PolicyConfig(backbone=BACKBONES.get("smolvlm")(size="tiny", image_size=32), head=HEADS.get("flow")(),
                       chunk=8, exec_steps=4).with_robot(ROBOT)
    torch.manual_seed(0)
    policy = VLAPolicy(cfg)
    stats = {k: {"mean": np.zeros(d), "std": np.ones(d), "q01": -np.ones(d), "q99": np.ones(d),
                 "min": -np.ones(d), "max": np.ones(d)}
             for k, d in ((OBS_STATE, ROBOT.state_dim), (ACTION, ROBOT.action_dim))}
    policy.make_pipelines(stats, ROBOT)
    return policy.save_pretrained(directory)


def _observation(robot: RobotSpec, rng: np.random.Generator) -> dict[str, Any]:
    obs: dict[str, Any] = {image_key(c): rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                           for c, (h, w) in robot.cameras.items()}
    if robot.state_dim:
        obs[OBS_STATE] = rng.normal(size=robot.state_dim).astype(np.float32)
    obs[TASK] = "put the red block in the bowl"
    return obs


def load_test(policy: LocalPolicy, cfg: ServeConfig, clients: int, duration: float) -> dict[str, Any]:
    """Run ``clients`` closed-loop clients for ``duration`` seconds against a fresh server; latency stats."""
    server = PolicyServer(policy, cfg)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    rows: list[list[int]] = [[] for _ in range(clients)]
    failures: list[str] = []
    start = threading.Barrier(clients + 1)
    want = (policy.chunk, policy.robot.action_dim)

    deadline = [float("inf")]  # set when every client is connected and warm

    with ServerThread(server) as thread:
        def client(i: int) -> None:
            rng = np.random.default_rng(i)
            try:
                remote = RemotePolicy(thread.url, api_key=cfg.api_key or None, seed=None)
                remote.infer(_observation(remote.robot, rng))  # warm the connection (untimed)
            except Exception as e:
                failures.append(f"warm-up: {type(e).__name__}: {e}"[:200])
                start.wait()
                return
            start.wait()
            with remote:
                while time.perf_counter() < deadline[0]:
                    obs = _observation(remote.robot, rng)
                    t = time.perf_counter()
                    try:
                        out = remote.infer(obs)
                        if out["actions"].shape != want or not np.isfinite(out["actions"]).all():
                            raise ValueError(f"bad actions {out['actions'].shape}")
                    except Exception as e:
                        failures.append(f"{type(e).__name__}: {e}"[:200])
                        continue
                    latencies[i].append((time.perf_counter() - t) * 1000)
                    rows[i].append(int(out["server_timing"]["batch_rows"]))

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        deadline[0] = t0 + duration
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        health = server.health()

    lat = sorted(x for per in latencies for x in per)
    done = len(lat)
    return {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms, "clients": clients,
            "duration_s": round(elapsed, 2), "requests": done, "failed": len(failures),
            "failures": failures[:5], "server_errors": health["errors"],
            "p50_ms": round(statistics.median(lat), 2) if lat else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat else None,
            "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
            "throughput_rps": round(done / elapsed, 2),
            "actions_per_s": round(done * policy.chunk / elapsed, 1),
            "mean_batch_rows": round(statistics.fmean(r for per in rows for r in per), 2) if done else None}


def run(checkpoint: str | None, duration: float, clients: int, max_batch: int, max_wait_ms: float,
        threads: int | None = None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(checkpoint) if checkpoint else build_checkpoint(Path(tmp) / "ckpt")
        policy = LocalPolicy.load(ckpt)
        base = ServeConfig(checkpoint=str(ckpt), port=0, http=False, timeout_s=120, max_wait_ms=max_wait_ms)
        on = load_test(policy, base.replace(max_batch=max_batch), clients, duration)
        off = load_test(policy, base.replace(max_batch=1), clients, duration)
    return {
        "meta": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                 "machine": platform.machine(), "python": platform.python_version(),
                 "checkpoint": checkpoint or "tiny random-init (smolvlm tiny @32px, flow head 10 steps, chunk 8)",
                 "head": policy.policy.cfg.head.type, "chunk": policy.chunk, "robot": policy.robot.to_json(),
                 "clients": clients, "duration_s": duration},
        "batching_on": on, "batching_off": off,
        "throughput_ratio_on_off": round(on["throughput_rps"] / max(off["throughput_rps"], 1e-9), 2),
        "p50_ratio_on_off": round(on["p50_ms"] / off["p50_ms"], 2) if on["p50_ms"] and off["p50_ms"] else None,
    }


def table(result: dict[str, Any]) -> str:
    lines = ["| batching | max_batch | clients | requests | failed | p50 ms | p99 ms | req/s | actions/s | "
             "mean batch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("batching_on", "batching_off"):
        r = result[name]
        lines.append(f"| {name.split('_')[1]} | {r['max_batch']} | {r['clients']} | {r['requests']} | {r['failed']} "
                     f"| {r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} | {r['actions_per_s']} "
                     f"| {r['mean_batch_rows']} |")
    lines.append(f"\nthroughput on/off: {result['throughput_ratio_on_off']}x; p50 on/off: "
                 f"{result['p50_ratio_on_off']}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per mode")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    args = ap.parse_args(argv)
    result = run(args.checkpoint, args.duration, args.clients, args.max_batch, args.max_wait_ms, args.threads)
    result["meta"]["command"] = " ".join(["python bench/serve.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return result


if __name__ == "__main__":
    main()
