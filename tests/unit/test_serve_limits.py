"""``vlaforge serve`` under adversarial load (issue 14): work per frame is bounded before validation, error
messages are short, logging never runs on the event loop, the HTTP port drops slow clients and caps its
connections, the queue is bounded by bytes and forgets requests whose clients hung up. A fake policy (no model)
keeps these fast; tests/e2e/test_serve.py covers the real one."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.request
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from vlaforge.serve import protocol as P
from vlaforge.serve.server import DynamicBatcher, Job, Outcome, PolicyServer, RequestError, ServeConfig, ServerThread
from vlaforge.types import OBS_STATE, TASK, RobotSpec, image_key

ROBOT = RobotSpec(cameras={"scene": (8, 8)}, state_dim=2, action_dim=2)


class FakePolicy:
    """What PolicyServer needs of a LocalPolicy; zeros as actions, after ``delay`` seconds; counts the rows run."""

    robot, chunk, options = ROBOT, 2, {}

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.rows = delay, []
        self.policy = SimpleNamespace(cfg=SimpleNamespace(history=1), device="cpu", prepare=self._prepare,
                                      sample=lambda x, generator: x, postprocess=lambda x: x)

    def _prepare(self, rows):
        return self.infer_batch(rows)

    def infer_batch(self, rows):
        time.sleep(self.delay)
        self.rows.extend(r[TASK] for r in rows)
        return np.zeros((len(rows), self.chunk, ROBOT.action_dim), np.float32)

    def metadata(self):
        return {"robot": ROBOT.to_json(), "chunk": self.chunk, "exec_steps": 1}


def obs(task: str = "push") -> dict:
    return {image_key("scene"): np.zeros((8, 8, 3), np.uint8), OBS_STATE: np.zeros(2, np.float32), TASK: task}


def start(policy=None, **cfg) -> ServerThread:
    return ServerThread(PolicyServer(policy or FakePolicy(), ServeConfig(port=0, **cfg)))


def ws(thread: ServerThread):
    conn = connect(thread.url, compression=None, max_size=None)
    P.unpackb(conn.recv(5))  # metadata
    return conn


def health(thread: ServerThread, timeout: float = 5) -> dict:
    return json.loads(urllib.request.urlopen(thread.http_url + "/healthz", timeout=timeout).read())


# ----------------------------------------------------------------------------------------------- bullet 1
def test_a_frame_of_many_keys_is_refused_early_with_a_short_message():
    frame = msgpack.packb({f"k{i}": i for i in range(100_000)})  # ~0.9 MB, what froze the server
    with start(max_items=1000) as thread:
        conn = ws(thread)
        t = time.perf_counter()
        conn.send(frame)
        reply = conn.recv(5)
        took = time.perf_counter() - t
        assert isinstance(reply, str) and len(reply) < 1000, reply[:300]
        assert "max_keys" in reply and "exceeds max_map_len(64)" in reply
        assert took < 1.0
        conn.send(msgpack.packb({"task": list(range(5000))}))  # one list over max_items=1000
        reply = conn.recv(5)
        assert isinstance(reply, str) and "5000 exceeds max_array_len(1000)" in reply
        conn.send(msgpack.packb({"task": [list(range(400))] * 5}))  # 2005 items in all
        reply = conn.recv(5)
        assert isinstance(reply, str) and "more than 1000 items in one frame" in reply
        conn.send(P.packb(obs()))
        assert P.unpackb(conn.recv(5))["actions"].shape == (2, 2)  # the connection keeps working
        conn.close()
        # the JSON body (HTTP) is bounded too: one short problem, not 100000 lines
        req = urllib.request.Request(thread.http_url + "/predict", method="POST",
                                     data=json.dumps({f"k{i}": i for i in range(100_000)}).encode())
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 400
        body = info.value.read()
        assert len(body) < 2000 and b"100000 keys, e.g. k0, k1, k2" in body, body[:300]


def test_unknown_keys_are_summarised_and_messages_are_capped():
    schema = P.ObservationSchema(ROBOT)
    problems: list[P.Problem] = []
    schema.check({**obs(), **{f"extra{i}": 0 for i in range(50)}}, "", problems)
    assert [str(p) for p in problems] == [f"<keys>: expected one of {schema.keys} (or seed / rng_state), got "
                                          "50 unknown keys, e.g. extra0, extra1, extra2"]
    err = P.ProtocolError([P.Problem(f"f{i}", "x" * 1000, "y") for i in range(40)])
    assert len(str(err)) < 5000 and "... and 30 more" in str(err)
    assert P.describe({str(i): i for i in range(10_000)}).startswith("map of 10000 keys")


def test_logging_runs_off_the_event_loop(monkeypatch):
    """A slow log handler (rich on a slow terminal) must not stall the server: records go through a queue."""

    class Slow(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.records: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            time.sleep(0.3)
            self.records.append(record.getMessage())

    slow = Slow()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [slow])
    logging.getLogger("vlaforge.serve").setLevel(logging.INFO)
    try:
        with start() as thread:
            conn = ws(thread)
            t = time.perf_counter()
            for _ in range(4):  # four refused requests: four log lines of 0.3 s each
                conn.send(b"\xc1")
                assert isinstance(conn.recv(5), str)
            assert health(thread)["errors"] == 4
            assert time.perf_counter() - t < 1.0
            conn.close()
    finally:
        logging.getLogger("vlaforge.serve").setLevel(logging.NOTSET)
    assert sum("refused a request" in r for r in slow.records) == 4  # none lost, written on the listener thread


# ----------------------------------------------------------------------------------------------- bullet 2
def _closed_within(sock: socket.socket, seconds: float, trickle: bytes) -> bool:
    """Send ``trickle`` one byte every 0.2 s; True when the server closes the connection within ``seconds``."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    for b in trickle:
        if time.monotonic() > deadline:
            return False
        try:
            sock.send(bytes([b]))
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset
            return True
    return False


def test_http_slow_clients_are_dropped_and_not_run():
    policy = FakePolicy()
    with start(policy, read_timeout_s=1.0) as thread:
        host, port = thread.server.cfg.host, thread.server.http_port
        # slow-loris: headers one byte at a time never finish
        with socket.create_connection((host, port)) as sock:
            t = time.monotonic()
            assert _closed_within(sock, 3.0, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100)
            assert time.monotonic() - t < 2.5
        # a (valid) body trickled past read_timeout_s: 408, and the request does not run
        body = json.dumps({"images": {"scene": [[[0, 0, 0]] * 8] * 8}, "state": [0, 0],
                           "instruction": "trickle"}).encode()
        with socket.create_connection((host, port)) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            sock.settimeout(0.2)
            got, deadline = b"", time.monotonic() + 3
            for b in body:
                try:
                    sock.send(bytes([b]))
                    got += sock.recv(4096)
                except (TimeoutError, OSError):
                    pass
                if got or time.monotonic() > deadline:
                    break
            assert got.startswith(b"HTTP/1.1 408"), got[:200]
            assert b"read_timeout_s" in got
        assert "trickle" not in policy.rows
        assert health(thread)["status"] == "ok"


def test_http_connections_beyond_the_limit_are_closed():
    with start(max_connections=2) as thread:
        host, port = thread.server.cfg.host, thread.server.http_port
        socks = [socket.create_connection((host, port)) for _ in range(2)]
        time.sleep(0.2)
        with socket.create_connection((host, port)) as extra:
            extra.settimeout(2)
            assert extra.recv(10) == b""  # closed on accept
        for s in socks:
            s.close()
        time.sleep(0.2)
        assert health(thread)["status"] == "ok"  # room again


# ----------------------------------------------------------------------------------------------- bullet 3
def test_the_queue_is_bounded_by_bytes():
    def run(jobs):
        return [Outcome(actions=np.zeros((j.rows, 1, 1))) for j in jobs]

    async def scenario():
        loop = asyncio.get_running_loop()
        b = DynamicBatcher(run, max_batch=4, max_wait_s=0.01, max_queue=100, max_queue_bytes=10_000)
        big = P.Request([obs() | {"observation.images.scene": np.zeros((40, 40, 3), np.uint8)}], False)
        first = Job(big, loop.create_future())
        b.submit(first)  # 4812 bytes: image 4800, state 8, task 4
        b.submit(Job(big, loop.create_future()))
        with pytest.raises(RequestError, match=r"server busy: 9624 bytes of observations waiting, this request "
                                               r"adds 4812 \(max_queue_bytes=10000\)"):
            b.submit(Job(big, loop.create_future()))
        b.discard(first)  # its client hung up: the space is free again
        assert b.pending_bytes == 4812 and first.future.cancelled()
        b.submit(Job(big, loop.create_future()))
        b.executor.shutdown()

    asyncio.run(scenario())


def test_a_client_that_hangs_up_takes_its_queued_request_with_it():
    policy = FakePolicy(delay=0.4)
    with start(policy, max_batch=1) as thread:
        busy = ws(thread)
        busy.send(P.packb(obs("first")))  # occupies the worker for 0.4 s
        time.sleep(0.1)
        gone = ws(thread)
        gone.send(P.packb({"observations": [obs("aborted")] * 8}))
        time.sleep(0.05)
        gone.close()  # hangs up while its batch waits in the queue
        assert P.unpackb(busy.recv(5))["actions"].shape == (2, 2)
        busy.send(P.packb(obs("after")))
        assert P.unpackb(busy.recv(5))["actions"].shape == (2, 2)
        busy.close()
        assert policy.rows.count("aborted") == 0 and "after" in policy.rows
        assert thread.server.batcher.pending_bytes == 0


def test_an_http_client_that_hangs_up_is_dropped_quietly(capfd, caplog):
    policy = FakePolicy(delay=0.4)
    body = json.dumps({"images": {"scene": [[[0, 0, 0]] * 8] * 8}, "state": [0, 0], "instruction": "gone"}).encode()
    with caplog.at_level(logging.DEBUG), start(policy, max_batch=1) as thread:
        busy = ws(thread)
        busy.send(P.packb(obs("first")))  # occupies the worker for 0.4 s
        time.sleep(0.1)
        with socket.create_connection((thread.server.cfg.host, thread.server.http_port)) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.1)  # queued behind "first"; then the client hangs up
        assert P.unpackb(busy.recv(5))["actions"].shape == (2, 2)
        time.sleep(0.5)
        busy.close()
    assert "gone" not in policy.rows  # its request left the queue with it
    assert "Traceback" not in capfd.readouterr().err
    lines = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith(("aiohttp", "vlaforge"))
             and "serving" not in r.getMessage()]
    assert len(lines) <= 1, [r.getMessage() for r in lines]


def test_serve_config_validates_the_new_limits():
    for field, value in [("max_queue_bytes", 0), ("max_keys", 1), ("max_items", 2), ("read_timeout_s", 0),
                         ("max_connections", 0), ("http_backlog", 0)]:
        with pytest.raises(ValueError, match=field):
            ServeConfig(**{field: value})


def test_the_server_thread_leaves_no_logging_behind():
    before = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate)
              for n in ("vlaforge.serve", "aiohttp", "websockets")}
    with start():
        pass
    assert before == {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in before}
    assert not [t for t in threading.enumerate() if t.name.endswith("(_monitor)")]
