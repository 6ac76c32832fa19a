"""``vlaforge serve``: openpi's own client against our server, malformed input and fuzzing, HTTP, API keys,
dynamic batching with failure isolation, reproducible remote sampling, remote == local eval, async brokers,
and the load-test benchmark (short)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from helpers import load_bench
from vlaforge.inference import LocalPolicy
from vlaforge.serve import protocol as P
from vlaforge.serve.client import ActionChunkBroker, AsyncActionBroker, RemotePolicy, ServerError
from vlaforge.serve.server import PolicyServer, ServeConfig, ServerThread
from vlaforge.types import ACTION, OBS_STATE, TASK, RobotSpec, image_key

KEY = "test-key-123"
ROBOT = RobotSpec(cameras={"scene": (32, 32), "wrist": (32, 32)}, state_dim=4, action_dim=4, fps=80)
CHUNK = 4
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny random-init checkpoint with Meta-World's cameras/dims and a stochastic (flow) head."""
    import torch

    from vlaforge.backbones.base import BACKBONES
    from vlaforge.heads.base import HEADS
    from vlaforge.policy import PolicyConfig, VLAPolicy

    cfg = PolicyConfig(backbone=BACKBONES.get("smolvlm")(size="tiny", image_size=32),
                       head=HEADS.get("flow")(width=64, num_steps=3), chunk=CHUNK, exec_steps=2).with_robot(ROBOT)
    torch.manual_seed(0)
    policy = VLAPolicy(cfg)
    stats = {k: {"mean": np.zeros(4), "std": np.ones(4), "q01": -np.ones(4), "q99": np.ones(4),
                 "min": -np.ones(4), "max": np.ones(4)} for k in (OBS_STATE, ACTION)}
    policy.make_pipelines(stats, ROBOT)
    return policy.save_pretrained(tmp_path_factory.mktemp("serve") / "ckpt")


@pytest.fixture(scope="module")
def local(ckpt) -> LocalPolicy:
    return LocalPolicy.load(ckpt)


@pytest.fixture(scope="module")
def server(local, ckpt):
    cfg = ServeConfig(checkpoint=str(ckpt), port=0, max_batch=8, max_wait_ms=30, max_bytes=64 * 1024,
                      timeout_s=20, api_key=KEY)
    with ServerThread(PolicyServer(local, cfg)) as thread:
        yield thread


def obs(seed: int = 0, task: str = "close the drawer") -> dict:
    rng = np.random.default_rng(seed)
    o = {image_key(c): rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in ROBOT.cameras}
    o[OBS_STATE] = rng.normal(size=4).astype(np.float32)
    o[TASK] = task
    return o


def ws(server, key: str | None = KEY):
    conn = connect(server.url, additional_headers={"x-api-key": key} if key else None, compression=None,
                   max_size=None)
    P.unpackb(conn.recv(10))  # metadata
    return conn


def roundtrip(conn, payload: bytes | str) -> bytes | str:
    conn.send(payload)
    return conn.recv(30)


def assert_ok(reply: bytes | str, shape=(CHUNK, 4)) -> dict:
    assert not isinstance(reply, str), reply
    out = P.unpackb(reply)
    assert out["actions"].shape == shape and np.isfinite(out["actions"]).all()
    return out


# ----------------------------------------------------------------------------------------------- openpi
def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline, seen = time.time() + timeout, []
    while time.time() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"server did not start:\n{''.join(seen)}")


def test_openpi_client_against_vlaforge_serve_cli(ckpt):
    # openpi-client pins numpy<2: install it with `pip install --no-deps openpi-client` (+ msgpack, websockets, dm-tree)
    openpi = pytest.importorskip("openpi_client.websocket_client_policy")

    env = {**os.environ, "VLAFORGE_API_KEY": KEY, "COLUMNS": "400"}
    proc = subprocess.Popen([sys.executable, "-m", "vlaforge.cli.main", "serve", str(ckpt), "--port", "0",
                             "--max-batch", "4", "--max-wait-ms", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = _read_until(proc, "listening on ws://", 120)
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])
        client = openpi.WebsocketClientPolicy(host="127.0.0.1", port=port, api_key=KEY)  # openpi, unmodified
        meta = client.get_server_metadata()
        assert set(meta["observation_schema"]) == {"observation.images.scene", "observation.images.wrist",
                                                   "observation.state", "task"}
        assert meta["observation_schema"]["observation.images.scene"] == {"shape": [32, 32, 3], "dtype": "uint8"}
        assert meta["action_schema"]["actions"]["shape"] == [CHUNK, 4] and meta["chunk"] == CHUNK
        out = client.infer(meta["example_observation"])  # the example is valid as is
        assert out["actions"].shape == (CHUNK, 4) and out["actions"].dtype == np.float32
        o = obs(1)
        o["prompt"] = o.pop(TASK)  # openpi's key for the instruction
        assert client.infer(o)["actions"].shape == (CHUNK, 4)
        bad = {**obs(2), "observation.state": np.zeros(3, np.float32)}
        with pytest.raises(RuntimeError, match=r"observation.state: expected shape \(4,\), got \(3,\)"):
            client.infer(bad)
        assert client.infer(obs(3))["actions"].shape == (CHUNK, 4)  # same connection keeps working
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read())
        assert health["status"] == "ok" and health["errors"] == 1 and health["requests"] == 3
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0  # SIGTERM stops it cleanly


# ----------------------------------------------------------------------------------------------- malformed
def _nd(data: bytes, dtype, shape) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


def _raw(obj) -> bytes:
    return msgpack.packb(obj, default=P._pack_default, use_bin_type=True)


MALFORMED = [
    (b"\xc1\x00", r"frame: expected valid msgpack-numpy"),
    ("hello", r"frame: expected a binary msgpack frame, got a text frame"),
    (P.packb([1, 2]), r"frame: expected a map"),
    (P.packb({k: v for k, v in obs().items() if k != "observation.images.wrist"}),
     r"observation.images.wrist: expected uint8 image of shape \(32, 32, 3\), got nothing"),
    (P.packb({**obs(), "observation.images.scene": np.zeros((16, 16, 3), np.uint8)}),
     r"observation.images.scene: expected shape \(32, 32, 3\), got \(16, 16, 3\)"),
    (P.packb({**obs(), "observation.images.scene": np.zeros((32, 32, 3), np.float32)}),
     r"observation.images.scene: expected dtype uint8, got float32"),
    (P.packb({**obs(), OBS_STATE: np.array([0, np.nan, 0, 0], np.float32)}),
     r"observation.state: expected finite values, got nan at index \[1\]"),
    (P.packb({**obs(), OBS_STATE: np.array([0, 0, np.inf, 0])}), r"observation.state: expected finite values"),
    (P.packb({**obs(), OBS_STATE: "1,2,3,4"}), r"observation.state: expected float array of shape \(4,\), got str"),
    (P.packb({**obs(), TASK: 7}), r"task: expected an instruction string, got int"),
    (P.packb({**obs(), "bogus": 1}), r"bogus: expected one of .*unknown key"),
    (P.packb({**obs(), "prompt": "also"}), r"prompt: expected 'task' given once, got both 'task' and 'prompt'"),
    (_raw({**{k: v for k, v in obs().items() if k != OBS_STATE}, OBS_STATE: _nd(b"abc", "<f4", [4])}),
     r"frame: expected valid msgpack-numpy.*needs 16 bytes, got 3"),
    (_raw({**{k: v for k, v in obs().items() if k != OBS_STATE}, OBS_STATE: _nd(b"x" * 32, "|O", [4])}),
     r"dtype: expected a bool/int/uint/float dtype"),
    (_raw({**{k: v for k, v in obs().items() if k != OBS_STATE}, OBS_STATE: _nd(b"", "<f4", [-4])}),
     r"ndarray shape: expected a list"),
    (P.packb({**obs(), "seed": "abc"}), r"seed: expected an int"),
    (P.packb({**obs(), "rng_state": b"xx"}), r"rng_state: expected the rng_state of a previous reply"),
    (P.packb({"observations": [obs(), {**obs(), TASK: None}]}), r"observations\[1\].task: expected"),
    (P.packb({"observations": []}), r"observations: expected a list of 1..64 observations"),
]


def test_malformed_frames_get_clear_errors_and_the_server_keeps_serving(server):
    conn = ws(server)
    for payload, pattern in MALFORMED:
        reply = roundtrip(conn, payload)
        assert isinstance(reply, str), (pattern, P.unpackb(reply))
        assert re.search(pattern, reply, re.S), (pattern, reply)
    assert_ok(roundtrip(conn, P.packb(obs())))  # same connection, next request fine
    batch = P.unpackb(roundtrip(conn, P.packb({"observations": [obs(1), obs(2), obs(3)]})))
    assert batch["actions"].shape == (3, CHUNK, 4)
    conn.close()


def test_oversize_payload_and_disconnect_mid_request(server):
    conn = ws(server)
    big = P.packb({**obs(), "observation.images.scene": np.zeros((200, 200, 3), np.uint8)})  # 120 KB > 64 KB
    conn.send(big)
    with pytest.raises(ConnectionClosed) as info:
        conn.recv(10)
    assert info.value.rcvd.code == 1009 and "exceeds limit of 65536 bytes" in info.value.rcvd.reason
    for i in range(3):  # hang up while the server works on the request
        c = ws(server)
        c.send(P.packb({**obs(i), "seed": i}))
        c.close()
    conn = ws(server)
    assert_ok(roundtrip(conn, P.packb(obs())))
    conn.close()
    health = json.loads(urllib.request.urlopen(server.url.replace("ws://", "http://") + "/healthz").read())
    assert health["status"] == "ok"


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_random_payloads_never_break_the_server(server, data):
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=20),
                       st.binary(max_size=40))
    values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.one_of(st.text(max_size=12),
                                                                                    st.binary(max_size=4)),
                                                                          inner, max_size=4)), max_leaves=12)
    ndarrays = st.builds(_nd, st.binary(max_size=64),
                         st.one_of(st.sampled_from(["<f4", "|u1", "<f8", ">i2", "|O", "<U3", "f4,i4", "<c8", "zz"]),
                                   values),
                         st.one_of(st.lists(st.integers(-3, 70), max_size=4), values))
    base = {k: v for k, v in obs(data.draw(st.integers(0, 3))).items()}
    keys = [*base, "seed", "rng_state", "observations", "prompt", "images", "state", "x"]
    kind = data.draw(st.sampled_from(["bytes", "value", "mutate", "mutate", "ndarray"]))
    if kind == "bytes":
        payload = data.draw(st.one_of(st.binary(max_size=200), st.sampled_from([b"\xd4\x05\x00", b"\xc7\x00\xff"])))
    elif kind == "value":
        payload = _raw(data.draw(values))
    else:
        msg = {k: (P._pack_default(v) if isinstance(v, np.ndarray) else v) for k, v in base.items()}
        for _ in range(data.draw(st.integers(1, 3))):
            key = data.draw(st.sampled_from(keys))
            action = data.draw(st.sampled_from(["set", "delete"] if kind == "mutate" else ["nd"]))
            if action == "delete":
                msg.pop(key, None)
            else:
                msg[key] = data.draw(ndarrays if action == "nd" or data.draw(st.booleans()) else values)
        payload = _raw(msg)
    conn = server.fuzz_conn if getattr(server, "fuzz_conn", None) else ws(server)
    server.fuzz_conn = conn
    try:
        reply = roundtrip(conn, payload)
    except ConnectionClosed:  # only an oversize frame may close the connection
        assert len(payload) > 64 * 1024
        server.fuzz_conn = None
        return
    if not isinstance(reply, str):
        assert_ok(reply, shape=P.unpackb(reply)["actions"].shape)


def test_server_survives_the_fuzzing(server):
    conn = ws(server)
    assert_ok(roundtrip(conn, P.packb(obs(7))))
    conn.close()


# ----------------------------------------------------------------------------------------------- HTTP / auth
def _post(server, body, key: str | None = KEY, path: str = "/predict"):
    data = json.dumps(body).encode()
    req = urllib.request.Request(server.http_url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **({"x-api-key": key} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _png(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_http_predict_metadata_and_errors(server):
    o = obs(4)
    body = {"images": {"scene": _png(o["observation.images.scene"]),
                       "wrist": o["observation.images.wrist"].tolist()},  # base64 PNG or nested lists
            "instruction": "close the drawer", "state": o[OBS_STATE].tolist()}
    status, out = _post(server, body)
    assert status == 200 and out["shape"] == [CHUNK, 4] and np.isfinite(out["actions"]).all()
    req = urllib.request.Request(server.http_url + "/metadata", headers={"Authorization": f"Bearer {KEY}"})
    meta = json.loads(urllib.request.urlopen(req, timeout=10).read())
    status, _ = _post(server, meta["example_request"])  # the advertised example works as is
    assert status == 200
    # reproducible over HTTP too: seed, then the returned rng_state, as LocalPolicy(seed=0)'s stream
    lp = LocalPolicy.load(server.server.cfg.checkpoint)
    first = _post(server, {**body, "seed": 0})[1]
    second = _post(server, {**body, "rng_state": first["rng_state"]})[1]
    for got in (first, second):
        assert np.array_equal(np.asarray(got["actions"], np.float32), lp.infer(o)["actions"])
    status, out = _post(server, {**body, "state": [1, 2, "x", 4]})
    assert status == 400 and out["problems"][0]["field"] == "observation.state"
    status, out = _post(server, {**body, "images": {"scene": "not base64!", "wrist": body["images"]["wrist"]}})
    assert status == 400 and "images.scene" in out["error"]
    assert _post(server, body, key=None)[0] == 401
    assert _post(server, body, key="wrong")[0] == 401
    status, out = _post(server, {"pad": "x" * 70_000})
    assert status == 413 and "at most 65536 bytes" in out["error"]
    assert _post(server, body, path="/nope")[0] == 404
    health = json.loads(urllib.request.urlopen(server.http_url + "/healthz", timeout=10).read())
    assert health["status"] == "ok"


def test_api_key_is_required_on_the_websocket(server):
    with pytest.raises(InvalidStatus) as info:
        connect(server.url)
    assert info.value.response.status_code == 401
    with pytest.raises(ServerError, match="401"):
        RemotePolicy(server.url, api_key="wrong")
    conn = connect(server.url, additional_headers={"Authorization": f"Bearer {KEY}"})
    assert P.unpackb(conn.recv(10))["protocol"] == P.PROTOCOL
    conn.close()


# ----------------------------------------------------------------------------------------------- batching
def test_concurrent_requests_are_batched_and_a_failing_one_fails_alone(server, monkeypatch):
    inner = server.server._infer
    calls: list[int] = []

    def flaky(rows, request):
        calls.append(len(rows))
        if any(r[TASK] == "poison" for r in rows):
            raise RuntimeError("boom")
        return inner(rows, request)

    monkeypatch.setattr(server.server, "_infer", flaky)

    def burst(tasks: list[str]) -> list:
        conns = [ws(server) for _ in tasks]
        for i, (c, task) in enumerate(zip(conns, tasks, strict=True)):  # within a few ms: one batch (30 ms wait)
            c.send(P.packb(obs(i, task=task)))
        out = [c.recv(30) for c in conns]
        for c in conns:
            c.close()
        return out

    results = burst(["close the drawer"] * 5)
    assert calls == [5] and all(assert_ok(r)["server_timing"]["batch_rows"] == 5 for r in results)
    calls.clear()
    results = burst(["poison" if i == 2 else "close the drawer" for i in range(6)])
    assert isinstance(results[2], str) and "policy error: RuntimeError: boom" in results[2]
    for i, r in enumerate(results):
        if i != 2:
            assert_ok(r)
    assert calls == [6] + [1] * 6  # the batch failed, so each of its requests ran alone: only the culprit failed


def test_dynamic_batcher_groups_shared_jobs_runs_seeded_alone_and_bounds_the_queue():
    from vlaforge.serve.server import DynamicBatcher, Job, Outcome, RequestError

    batches: list[list[str]] = []

    def run(jobs):
        batches.append([j.request.observations[0]["id"] for j in jobs])
        return [Outcome(actions=np.zeros((j.rows, 1, 1))) for j in jobs]

    async def scenario():
        loop = asyncio.get_running_loop()
        b = DynamicBatcher(run, max_batch=3, max_wait_s=0.05, max_queue=6)
        jobs = []
        for name, rows, seed in [("a", 1, None), ("s", 1, 0), ("b", 2, None), ("c", 1, None), ("d", 1, None)]:
            jobs.append(Job(P.Request([{"id": name}] * rows, rows > 1, seed=seed), loop.create_future()))
            b.submit(jobs[-1])
        b.submit(Job(P.Request([{"id": "e"}], False), loop.create_future()))
        with pytest.raises(RequestError, match=r"server busy: 6 requests waiting \(max_queue=6\)"):
            b.submit(Job(P.Request([{"id": "f"}], False), loop.create_future()))
        task = asyncio.create_task(b.loop())
        await asyncio.gather(*(j.future for j in jobs))
        task.cancel()
        b.executor.shutdown()

    asyncio.run(scenario())
    # a + b fill max_batch=3 (c does not fit); the seeded job runs alone; then c, d, e together
    assert batches == [["a", "b"], ["s"], ["c", "d", "e"]]


def test_timeout_is_reported_and_the_server_recovers(server, monkeypatch):
    inner = server.server._infer

    def slow(rows, request):
        if rows[0][TASK] == "slow":
            time.sleep(1.5)
        return inner(rows, request)

    monkeypatch.setattr(server.server, "_infer", slow)
    monkeypatch.setattr(server.server, "cfg", server.server.cfg.replace(timeout_s=0.5))
    conn = ws(server)
    reply = roundtrip(conn, P.packb(obs(task="slow")))
    assert isinstance(reply, str) and "timed out after 0.5 s" in reply
    monkeypatch.setattr(server.server, "cfg", server.server.cfg.replace(timeout_s=20))
    assert_ok(roundtrip(conn, P.packb(obs())))
    conn.close()


# ----------------------------------------------------------------------------------------------- determinism
def test_seeded_remote_policy_reproduces_local_policy(server, ckpt):
    lp = LocalPolicy.load(ckpt)  # seed 0, fresh generator
    calls = [[obs(1), obs(2)], [obs(3)], [obs(4), obs(5), obs(6)]]
    with RemotePolicy(server.url, api_key=KEY, seed=0) as rp:
        assert rp.robot == ROBOT and rp.chunk == CHUNK and rp.exec_steps == 2
        remote = [rp.infer_batch(c) for c in calls] + [rp.infer(obs(7))["actions"]]
    local = [lp.infer_batch(c) for c in calls] + [lp.infer(obs(7))["actions"]]
    for r, loc in zip(remote, local, strict=True):
        assert r.dtype == loc.dtype and np.array_equal(r, loc)
    with RemotePolicy(server.url, api_key=KEY, seed=1) as rp:  # a different stream differs (the check can fail)
        assert not np.array_equal(rp.infer_batch(calls[0]), local[0])


class Recorder:
    """Wraps an InferencePolicy and keeps every chunk it returned."""

    def __init__(self, policy) -> None:
        self.policy, self.robot, self.chunk, self.exec_steps = policy, policy.robot, policy.chunk, policy.exec_steps
        self.chunks: list[np.ndarray] = []

    def infer_batch(self, observations):
        out = self.policy.infer_batch(observations)
        self.chunks.append(out)
        return out


def test_remote_eval_equals_local_eval(server, ckpt, tmp_path, monkeypatch):
    pytest.importorskip("metaworld")
    from vlaforge.cli.main import main
    from vlaforge.eval.runner import EvalConfig, run_eval

    common = ["--env", "metaworld", "--tasks", "drawer-close", "--episodes", "2", "--env.image_size=32",
              "--env.max_steps=12", "--videos=0", "--expert=false"]
    # local, through the runner, recording every chunk the policy produced
    local = Recorder(LocalPolicy.load(ckpt))
    cfg = EvalConfig(checkpoint=str(ckpt), tasks="drawer-close", episodes=2, videos=0, expert=False,
                     out=str(tmp_path / "local"),
                     env=EvalConfig().env.replace(image_size=32, max_steps=12))
    run_eval(cfg, show_progress=False, policy=local)
    # remote, through the command line; the server records what it sends back
    sent: list[np.ndarray] = []
    inner = server.server._infer

    def recording(rows, request):
        out = inner(rows, request)
        sent.append(out[0])
        return out

    monkeypatch.setattr(server.server, "_infer", recording)
    monkeypatch.setenv("VLAFORGE_API_KEY", KEY)
    assert main(["eval", "--remote", server.url, *common, "--out", str(tmp_path / "remote")]) == 0
    a = json.loads((tmp_path / "local" / "eval.json").read_text())
    b = json.loads((tmp_path / "remote" / "eval.json").read_text())
    assert a["tasks"] == b["tasks"] and a["episodes"] == b["episodes"] and len(a["episodes"]) == 2
    assert b["config"]["remote"] == server.url and b["checkpoint"] is None
    assert len(sent) == len(local.chunks) >= 6
    for x, y in zip(sent, local.chunks, strict=True):
        assert np.array_equal(x, y)  # bit-identical action chunks, call by call


# ----------------------------------------------------------------------------------------------- brokers
class Counting:
    """A fake policy: the chunk for an observation at step t holds actions t, t+1, ... (after ``latency``)."""

    chunk, exec_steps = 8, 4

    def __init__(self, latency: float = 0.0) -> None:
        self.latency, self.calls = latency, 0

    def infer(self, o):
        self.calls += 1
        time.sleep(self.latency)
        return {"actions": (o["t"] + np.arange(self.chunk, dtype=np.float32))[:, None]}


def test_action_chunk_broker_receding_horizon():
    policy = Counting()
    broker = ActionChunkBroker(policy)
    acts = [broker.act({"t": t})[0] for t in range(10)]
    assert acts == list(range(10)) and policy.calls == 3  # steps 0-3, 4-7, 8-9


@pytest.mark.parametrize("aggregate", ["latest", "average"])
def test_async_broker_aligns_stale_chunks(aggregate):
    policy = Counting(latency=0.02)
    broker = AsyncActionBroker(policy, threshold=0.5, aggregate=aggregate)
    acts = []
    for t in range(40):
        acts.append(float(broker.act({"t": t})[0]))
        time.sleep(0.01)  # the robot executes the action
    broker.close()
    assert acts == list(range(40))  # every action is the one planned for its step, despite latency
    assert broker.stats["stale_dropped"] > 0  # chunks arrived late and were shifted
    assert broker.stats["requests"] > 40 / Counting.chunk  # overlapping requests ...
    assert broker.stats["stalls"] <= 2  # ... so the queue (almost) never ran dry


# ----------------------------------------------------------------------------------------------- bench
def test_bench_serve_short_run(ckpt, tmp_path):
    bench = load_bench("serve")
    out = tmp_path / "serve.json"
    result = bench.main(["--checkpoint", str(ckpt), "--duration", "2", "--clients", "8", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["batching_on"]["failed"] == 0 and saved["batching_off"]["failed"] == 0
    assert result["batching_on"]["requests"] > 0 and result["batching_off"]["mean_batch_rows"] == 1.0
    assert result["batching_on"]["mean_batch_rows"] > 1.0 and result["throughput_ratio_on_off"] > 0
