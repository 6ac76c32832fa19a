"""Load test of ``vlaforge serve`` on localhost: N concurrent clients for D seconds, dynamic batching on vs off.

Each client is a :class:`~vlaforge.serve.client.RemotePolicy` (unseeded, so the server may batch its requests
with the others') sending one observation at a time, back to back, in its own thread. The server runs in this
process on a background event loop with its policy on one worker thread, exactly as ``vlaforge serve`` does.
Both modes serve the same loaded policy: "on" with ``--max-batch`` / ``--max-wait-ms``, "off" with max_batch=1.
Reports failed requests, p50 / p99 latency, throughput (requests and actions per second), the mean batch size
the server formed, and on/off ratios; writes ``bench/results/serve.json`` and prints a Markdown table.

    python bench/serve.py [--checkpoint DIR] [--duration 30] [--clients 8] [--max-batch 8] [--max-wait-ms 5]

``--soak SECONDS`` runs a soak test instead (``bench/results/serve_soak.json``): for that long, valid clients,
clients sending garbage (invalid msgpack, a 100000-key map, a frame over ``max_items``, wrong shapes), clients
that send a 64-row batch and hang up at once, and HTTP clients that trickle their headers one byte at a time;
then the server idles for ``--idle`` seconds. It reports the process's RSS (server and clients share the process)
before, at peak and after idling, the event loop's stalls (how late a 10 ms ticker on the server's loop woke up:
p50 / p99 / max) and what each kind of client got.

Without ``--checkpoint`` a tiny random-initialized checkpoint is built (smolvlm ``tiny`` at 32 px, a pi0-style
flow head with 10 Euler steps, chunk 8, two 64x64 cameras, state 8, action 7).
"""

from __future__ import annotations

import argparse
import asyncio
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

import msgpack
import numpy as np
import torch
from websockets.sync.client import connect

from vlaforge.inference import LocalPolicy
from vlaforge.serve import protocol as P
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


# ----------------------------------------------------------------------------------------------- soak
def rss_mb() -> float | None:
    """This process's resident set size (Linux /proc; None elsewhere)."""
    try:
        return round(int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(float(np.percentile(values, 50)), 2), "p99": round(float(np.percentile(values, 99)), 2),
            "max": round(max(values), 2)}


def _garbage_frames(robot: RobotSpec) -> list[bytes]:
    rng = np.random.default_rng(0)
    wrong = _observation(robot, rng)
    wrong[OBS_STATE] = np.zeros(robot.state_dim + 1, np.float32)
    return [b"\xc1", rng.bytes(1024), msgpack.packb({f"k{i}": i for i in range(100_000)}),
            msgpack.packb({TASK: [list(range(1000))] * 300}), P.packb(wrong)]


def soak(policy: LocalPolicy, cfg: ServeConfig, seconds: float, idle: float) -> dict[str, Any]:
    """Valid, garbage, aborted and slow clients against one server for ``seconds``; RSS and loop stalls."""
    server = PolicyServer(policy, cfg)
    counts = {"valid_ok": 0, "valid_failed": 0, "garbage_refused": 0, "garbage_unexpected": 0, "aborted_sent": 0,
              "slow_http_dropped": 0, "slow_http_kept": 0}
    lock = threading.Lock()
    lateness: list[float] = []
    peak = [rss_mb() or 0.0]

    def count(key: str) -> None:
        with lock:
            counts[key] += 1

    with ServerThread(server) as thread:
        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            while True:
                t = loop.time()
                await asyncio.sleep(0.01)
                lateness.append((loop.time() - t - 0.01) * 1000)

        tick = asyncio.run_coroutine_threadsafe(ticker(), server.loop)
        rng = np.random.default_rng(0)
        batch = P.packb({"observations": [_observation(policy.robot, rng) for _ in range(cfg.max_rows)]})
        garbage = _garbage_frames(policy.robot)
        before = rss_mb()
        deadline = time.monotonic() + seconds

        def valid() -> None:
            with RemotePolicy(thread.url, seed=None) as remote:
                while time.monotonic() < deadline:
                    try:
                        remote.infer(_observation(remote.robot, rng))
                        count("valid_ok")
                    except Exception:
                        count("valid_failed")

        def bad() -> None:
            with connect(thread.url, compression=None, max_size=None) as conn:
                conn.recv(10)
                i = 0
                while time.monotonic() < deadline:
                    conn.send(garbage[i % len(garbage)])
                    count("garbage_refused" if isinstance(conn.recv(30), str) else "garbage_unexpected")
                    i += 1

        def aborted() -> None:
            while time.monotonic() < deadline:
                with connect(thread.url, compression=None, max_size=None) as conn:
                    conn.recv(10)
                    conn.send(batch)  # and hang up at once
                count("aborted_sent")
                time.sleep(0.05)

        def slow_http() -> None:
            import socket

            trickle = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
            while time.monotonic() < deadline:
                dropped = False
                with socket.create_connection((cfg.host, server.http_port)) as sock:
                    sock.settimeout(0.25)
                    for b in trickle:  # one byte every 0.25 s until the server hangs up
                        try:
                            sock.send(bytes([b]))
                            dropped = sock.recv(1) == b""
                        except TimeoutError:
                            continue
                        except OSError:
                            dropped = True
                        if dropped or time.monotonic() > deadline + cfg.read_timeout_s + 2:
                            break
                count("slow_http_dropped" if dropped else "slow_http_kept")

        def monitor() -> None:
            while time.monotonic() < deadline + idle:
                peak[0] = max(peak[0], rss_mb() or 0.0)
                time.sleep(0.1)

        workers = [valid, valid, bad, bad, aborted, aborted, slow_http, slow_http, monitor]
        threads = [threading.Thread(target=w, daemon=True) for w in workers]
        for t in threads:
            t.start()
        for t in threads[:-1]:
            t.join()
        after_load = rss_mb()
        threads[-1].join()
        tick.cancel()
        health = server.health()
        queued_bytes = server.batcher.pending_bytes if server.batcher else None
    return {"seconds": seconds, "idle_s": idle, **counts, "server_requests": health["requests"],
            "server_errors": health["errors"], "queue_bytes_after": queued_bytes,
            "rss_mb": {"before": before, "peak": peak[0], "end_of_load": after_load, "after_idle": rss_mb()},
            "loop_lateness_ms": {**_percentiles(lateness), "ticks": len(lateness)},
            "limits": {k: getattr(cfg, k) for k in ("max_bytes", "max_keys", "max_items", "max_queue",
                                                     "max_queue_bytes", "read_timeout_s", "max_connections")}}


def soak_table(result: dict[str, Any]) -> str:
    r = result["soak"]
    rss, late = r["rss_mb"], r["loop_lateness_ms"]
    return "\n".join([
        "| seconds | valid ok / failed | garbage refused | aborted 64-row batches | slow HTTP dropped / kept "
        "| RSS MB before / peak / after idle | loop lateness ms p50 / p99 / max |",
        "|---|---|---|---|---|---|---|",
        f"| {r['seconds']:g} | {r['valid_ok']} / {r['valid_failed']} | {r['garbage_refused']} | {r['aborted_sent']} "
        f"| {r['slow_http_dropped']} / {r['slow_http_kept']} | {rss['before']} / {rss['peak']} / {rss['after_idle']} "
        f"| {late['p50']} / {late['p99']} / {late['max']} |"])


def run_soak(checkpoint: str | None, seconds: float, idle: float, threads: int | None = None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(checkpoint) if checkpoint else build_checkpoint(Path(tmp) / "ckpt")
        policy = LocalPolicy.load(ckpt)
        cfg = ServeConfig(checkpoint=str(ckpt), port=0, timeout_s=30, read_timeout_s=2.0)
        result = soak(policy, cfg, seconds, idle)
    return {"meta": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                     "machine": platform.machine(), "python": platform.python_version(),
                     "checkpoint": checkpoint or "tiny random-init (smolvlm tiny @32px, flow head 10 steps, chunk 8)"},
            "soak": result}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per mode")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--soak", type=float, default=0.0,
                    help="seconds of soak (valid, garbage, aborted and slow clients) instead of the load test")
    ap.add_argument("--idle", type=float, default=5.0, help="soak: seconds the server idles before the last RSS")
    ap.add_argument("--out", default=None, help="default bench/results/serve.json (serve_soak.json with --soak)")
    args = ap.parse_args(argv)
    if args.soak > 0:
        result = run_soak(args.checkpoint, args.soak, args.idle, args.threads)
    else:
        result = run(args.checkpoint, args.duration, args.clients, args.max_batch, args.max_wait_ms, args.threads)
    result["meta"]["command"] = " ".join(["python bench/serve.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out or Path(__file__).parent / "results" / ("serve_soak.json" if args.soak > 0 else "serve.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(soak_table(result) if args.soak > 0 else table(result))
    return result


if __name__ == "__main__":
    main()
