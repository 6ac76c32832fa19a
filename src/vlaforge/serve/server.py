"""``vlaforge serve``: one checkpoint behind an openpi-compatible websocket, with dynamic batching.

One port speaks websocket (openpi's protocol, see :mod:`vlaforge.serve.protocol`) and answers ``GET /healthz``
during the handshake (websockets' ``process_request`` hook). websockets parses GET requests only, so simple HTTP
clients get a second port (``http_port``, default ``port + 1``): ``POST /predict`` (JSON in, JSON out, LLaVA-VLA
style; with ``http_api="llava_vla"`` LLaVA-VLA's own contract: its client's multipart form in, a flat JSON list of
chunk x action_dim floats out), ``GET /metadata``, ``GET /healthz``, served by aiohttp on the same event loop:
a client must send its headers within ``read_timeout_s`` of connecting (or of its previous reply: the keep-alive
timeout) and its body within ``read_timeout_s`` after them (else 408, and the request is not run); at most
``max_connections`` connections at once (more are closed on accept); bodies of at most ``max_bytes``; no
compressed bodies.

On connect the server sends its metadata (msgpack): ``protocol``/``protocol_version``, ``robot``, ``chunk``,
``exec_steps``, ``history``, ``observation_schema`` (key -> shape, dtype), ``action_schema``,
``example_observation`` (valid as is), ``limits`` and the HTTP port. Then each binary frame is one request and
gets one binary reply ``{"actions", "server_timing"[, "rng_state"]}``, or one text frame describing what was
wrong; the connection stays open after an error. A frame over ``max_bytes`` makes websockets close that
connection with code 1009 and a reason giving the size and the limit; other connections are unaffected.

Nothing slow runs on the event loop: frames are decoded and validated on a small thread pool, after msgpack has
bounded their work (``max_keys`` per map, ``max_items`` in the frame, see :class:`~vlaforge.serve.protocol.
FrameLimits`); error messages quote a few hundred characters at most; log records go through a queue to a
listener thread (the console handler formats them there).

Dynamic batching: requests are validated one by one (a bad one never joins a batch), then queued (at most
``max_queue`` requests and ``max_queue_bytes`` of observations; a client that hangs up takes its queued request
with it); a batcher task takes the oldest request and, for up to ``max_wait_ms`` after it arrived, adds others
until ``max_batch`` observations; the batch runs on one worker thread (the event loop never blocks). If a merged
batch raises, its requests are retried one by one so that only the culprit fails. Requests carrying ``seed`` /
``rng_state`` run alone, with their own generator (reproducible: see :class:`vlaforge.serve.client.RemotePolicy`);
the others share the policy's generator (seeded with ``seed`` at start).

Safe by default: binds 127.0.0.1, optional API key (``x-api-key: KEY``, ``Authorization: Bearer KEY`` or openpi's
``Authorization: Api-Key KEY``; ``/healthz`` stays open), a payload limit, a per-request timeout, a bounded queue,
HTTP read timeouts and a connection limit, msgpack/JSON only (no pickle), strict decoding of arrays.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import json
import logging
import logging.handlers
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np
import torch
from aiohttp import web
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from vlaforge.config import ConfigBase
from vlaforge.inference import LocalPolicy
from vlaforge.serve import protocol as P

log = logging.getLogger(__name__)
API_KEY_ENV = "VLAFORGE_API_KEY"
HTTP_APIS = ("vlaforge", "llava_vla")


@dataclass(frozen=True)
class ServeConfig(ConfigBase):
    checkpoint: str = ""
    unnorm_key: str = ""  # mixture checkpoints: which training dataset's statistics / image sizes (default: saved)
    sampling: str = ""  # the head's sampling fields, space-separated KEY=VALUE (as `vlaforge eval --sampling`)
    host: str = "127.0.0.1"  # only this machine; --host 0.0.0.0 to accept other machines
    port: int = 8000  # websocket + GET /healthz; 0 picks a free port
    http: bool = True  # also serve POST /predict (JSON) on http_port
    http_port: int = -1  # -1: port + 1 (a free port when port is 0)
    # POST /predict: "vlaforge" (JSON) | "llava_vla" (LLaVA-VLA's client: multipart img_static / img_gripper / json
    # in, a flat JSON list of floats out, as its flask_server.py)
    http_api: str = "vlaforge"
    max_batch: int = 8  # observations per policy call; 1 turns batching off
    max_wait_ms: float = 5.0  # how long the oldest request waits for others to join its batch
    max_bytes: int = 16 * 2**20  # largest request accepted
    timeout_s: float = 30.0  # per request, queueing included
    max_queue: int = 256  # requests waiting; more are refused ("server busy")
    max_rows: int = 64  # observations in one {"observations": [...]} request
    max_queue_bytes: int = 256 * 2**20  # bytes of observations waiting; more are refused ("server busy")
    max_keys: int = 64  # keys in one map of a request (msgpack or JSON); more are refused before validation
    max_items: int = 1 << 18  # elements of all maps and lists of one msgpack frame together (work per frame)
    read_timeout_s: float = 30.0  # HTTP: headers within this of connecting (keep-alive: of the last reply), body after
    max_connections: int = 64  # HTTP connections at once; more are closed on accept
    http_backlog: int = 128  # HTTP listen backlog
    api_key: str = ""  # required from clients when set (also read from $VLAFORGE_API_KEY)
    seed: int = 0  # the shared generator of unseeded requests
    device: str = "cpu"

    def validate(self) -> None:
        self.check(0 <= self.port < 65536, "port", "in [0, 65535]")
        self.check(self.http_port == -1 or 0 <= self.http_port < 65536, "http_port", "-1 or in [0, 65535]")
        self.check(self.http_api in HTTP_APIS, "http_api", f"one of {HTTP_APIS}")
        self.check(self.max_batch >= 1, "max_batch", ">= 1")
        self.check(self.max_wait_ms >= 0, "max_wait_ms", ">= 0")
        self.check(self.max_bytes >= 1024, "max_bytes", ">= 1024")
        self.check(self.timeout_s > 0, "timeout_s", "> 0")
        self.check(self.max_queue >= 1, "max_queue", ">= 1")
        self.check(self.max_rows >= 1, "max_rows", ">= 1")
        self.check(self.max_queue_bytes >= 1024, "max_queue_bytes", ">= 1024")
        self.check(self.max_keys >= 8, "max_keys", ">= 8")
        self.check(self.max_items >= max(self.max_rows, self.max_keys), "max_items", ">= max_rows and >= max_keys")
        self.check(self.read_timeout_s > 0, "read_timeout_s", "> 0")
        self.check(self.max_connections >= 1, "max_connections", ">= 1")
        self.check(self.http_backlog >= 1, "http_backlog", ">= 1")

    @property
    def frame_limits(self) -> P.FrameLimits:
        return P.FrameLimits(max_keys=self.max_keys, max_items=self.max_items)


class RequestError(Exception):
    """A request that was valid but could not be answered (timeout, busy, policy error)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------------------- batching
@dataclass(eq=False)  # compared by identity (queue removal), never by the arrays it holds
class Job:
    """One queued request; ``rows`` observations; ``exclusive`` jobs run alone; ``nbytes`` of observations."""

    request: P.Request
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = sum(v.nbytes if isinstance(v, np.ndarray) else len(v) if isinstance(v, str) else 8
                          for o in self.request.observations for v in o.values())

    @property
    def rows(self) -> int:
        return len(self.request.observations)

    @property
    def exclusive(self) -> bool:
        return self.request.seeded


@dataclass
class Outcome:
    actions: np.ndarray | None = None
    rng_state: bytes | None = None
    error: BaseException | None = None
    infer_ms: float = 0.0
    batch_rows: int = 0


class DynamicBatcher:
    """Groups queued jobs up to ``max_batch`` rows within ``max_wait_s`` and runs ``run(jobs)`` on one thread.
    The queue holds at most ``max_queue`` jobs and ``max_queue_bytes`` of observations (a single job of any size
    is taken when the queue is empty)."""

    def __init__(self, run: Callable[[list[Job]], list[Outcome]], max_batch: int, max_wait_s: float,
                 max_queue: int, max_queue_bytes: int = 256 * 2**20) -> None:
        self.run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self.max_queue_bytes = max_queue_bytes
        self.pending: deque[Job] = deque()
        self.pending_bytes = 0
        self._wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlaforge-infer")
        self.batches = 0

    def submit(self, job: Job) -> None:
        if len(self.pending) >= self.max_queue:
            raise RequestError(f"server busy: {len(self.pending)} requests waiting (max_queue={self.max_queue}); "
                                "retry later", HTTPStatus.SERVICE_UNAVAILABLE)
        if self.pending and self.pending_bytes + job.nbytes > self.max_queue_bytes:
            raise RequestError(f"server busy: {self.pending_bytes} bytes of observations waiting, this request "
                                f"adds {job.nbytes} (max_queue_bytes={self.max_queue_bytes}); retry later",
                                HTTPStatus.SERVICE_UNAVAILABLE)
        self.pending.append(job)
        self.pending_bytes += job.nbytes
        self._wake.set()

    def _remove(self, job: Job) -> None:
        self.pending.remove(job)
        self.pending_bytes -= job.nbytes

    def discard(self, job: Job) -> None:
        """Forget a job whose client stopped waiting (timed out, hung up): it frees its queue space now."""
        job.future.cancel()
        if job in self.pending:
            self._remove(job)

    def _take_shared(self, room: int) -> Job | bool:
        """Remove and return the oldest live non-exclusive job if it fits in ``room`` rows; else whether one
        is waiting that does not fit (the batch is then full)."""
        for job in list(self.pending):
            if job.future.done():
                self._remove(job)
            elif not job.exclusive:
                if job.rows > room:
                    return True
                self._remove(job)
                return job
        return False

    async def _wait(self, timeout: float | None) -> bool:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _gather(self) -> list[Job]:
        while True:
            while not self.pending:
                await self._wait(None)
            first = self.pending[0]
            self._remove(first)
            if not first.future.done():
                break
        jobs, rows = [first], first.rows
        if first.exclusive:
            return jobs
        deadline = first.enqueued + self.max_wait_s
        while rows < self.max_batch:
            job = self._take_shared(self.max_batch - rows)
            if job is True:
                break
            if isinstance(job, Job):
                jobs.append(job)
                rows += job.rows
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not await self._wait(left):
                break
        return jobs

    async def loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            jobs = [j for j in jobs if not j.future.done()]  # timed out while waiting for a batch
            if not jobs:
                continue
            self.batches += 1
            try:
                outcomes = await loop.run_in_executor(self.executor, self.run, jobs)
            except Exception as e:  # run() isolates failures itself; this keeps the loop alive regardless
                log.exception("batch runner failed")
                outcomes = [Outcome(error=RequestError(f"internal error: {type(e).__name__}"))] * len(jobs)
            for job, out in zip(jobs, outcomes, strict=True):
                if not job.future.done():
                    job.future.set_result(out)


# ----------------------------------------------------------------------------------------------- server
class PolicyServer:
    """Serve a :class:`LocalPolicy` (the checkpoint's own pipelines) over websocket and HTTP."""

    def __init__(self, policy: LocalPolicy, cfg: ServeConfig) -> None:
        self.policy, self.cfg = policy, cfg
        self.schema = P.ObservationSchema(policy.robot, policy.policy.cfg.history)
        self.api_key = cfg.api_key or os.environ.get(API_KEY_ENV, "")
        self.counts = {"requests": 0, "errors": 0, "rows": 0}
        self.started = time.time()
        self.port = self.http_port = 0
        self.metadata: dict[str, Any] = {}
        self._metadata_frame = b""
        self.batcher: DynamicBatcher | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._http: web.ServerRunner | None = None
        self._decoder: ThreadPoolExecutor | None = None  # decodes and validates requests off the event loop
        warm = self._run_one(P.Request([self.schema.example()], False, seed=0))
        if warm.error is not None:
            raise RuntimeError(f"the policy fails on the schema's example observation: {warm.error}")
        self.action_dtype = str(warm.actions.dtype)

    @classmethod
    def load(cls, cfg: ServeConfig) -> PolicyServer:
        if not cfg.checkpoint:
            raise ValueError("serve: pass a checkpoint directory")
        return cls(LocalPolicy.load(cfg.checkpoint, device=cfg.device, unnorm_key=cfg.unnorm_key, seed=cfg.seed,
                                    sampling=cfg.sampling.split()), cfg)

    # --------------------------------------------------------------------------- inference (worker thread)
    def _infer(self, rows: list[dict[str, Any]], request: P.Request | None) -> tuple[np.ndarray, bytes | None]:
        """(B, H, Da) robot-unit actions; a seeded request gets its own generator and returns its next state."""
        if request is None or not request.seeded:
            return self.policy.infer_batch(rows), None
        vla = self.policy.policy
        gen = torch.Generator(device=vla.device)
        if request.seed is not None:
            gen.manual_seed(request.seed)
        else:
            try:
                gen.set_state(torch.frombuffer(bytearray(request.rng_state), dtype=torch.uint8))
            except (RuntimeError, ValueError) as e:
                raise P.ProtocolError.one(P.RNG_STATE_KEY, "the rng_state of a previous reply from this server",
                                          f"{len(request.rng_state)} bytes it cannot use ({e})"[:200]) from None
        with torch.no_grad():
            acts = vla.postprocess(vla.sample(vla.prepare(rows), generator=gen, **self.policy.options))
        return acts, gen.get_state().numpy().tobytes()

    @staticmethod
    def _finite(actions: np.ndarray) -> BaseException | None:
        if np.isfinite(actions).all():
            return None
        return RequestError("the policy produced non-finite actions for this observation")

    def _run_one(self, request: P.Request) -> Outcome:
        t, rows = time.perf_counter(), len(request.observations)
        try:
            acts, state = self._infer(request.observations, request)
            return Outcome(acts, state, self._finite(acts), (time.perf_counter() - t) * 1000, rows)
        except Exception as e:  # isolate: one request's failure is its own
            log.warning("request failed in the policy: %s: %s", type(e).__name__, e)
            err = e if isinstance(e, P.ProtocolError) else RequestError(f"policy error: {type(e).__name__}: {e}")
            return Outcome(error=err, infer_ms=(time.perf_counter() - t) * 1000, batch_rows=rows)

    def run_jobs(self, jobs: list[Job]) -> list[Outcome]:
        if len(jobs) == 1:
            return [self._run_one(jobs[0].request)]
        t = time.perf_counter()
        try:
            acts, _ = self._infer([o for j in jobs for o in j.request.observations], None)
        except Exception as e:
            log.warning("batch of %d requests failed (%s: %s); retrying them one by one", len(jobs),
                        type(e).__name__, e)
            return [self._run_one(j.request) for j in jobs]
        ms, rows, out, i = (time.perf_counter() - t) * 1000, sum(j.rows for j in jobs), [], 0
        for j in jobs:
            a = acts[i:i + j.rows]
            out.append(Outcome(a, None, self._finite(a), ms, rows))
            i += j.rows
        return out

    # --------------------------------------------------------------------------- requests (event loop)
    async def submit(self, request: P.Request) -> dict[str, Any]:
        """Queue a validated request; the reply map, or :class:`RequestError` / :class:`ProtocolError`."""
        assert self.batcher is not None and self.loop is not None
        job = Job(request, self.loop.create_future())
        self.batcher.submit(job)
        self.counts["requests"] += 1
        self.counts["rows"] += job.rows
        try:
            out: Outcome = await asyncio.wait_for(asyncio.shield(job.future), self.cfg.timeout_s)
        except TimeoutError:
            self.batcher.discard(job)
            raise RequestError(f"request timed out after {self.cfg.timeout_s:g} s (timeout_s); the server is "
                                "overloaded or the policy is too slow", HTTPStatus.GATEWAY_TIMEOUT) from None
        except asyncio.CancelledError:  # the client hung up: its request leaves the queue
            self.batcher.discard(job)
            raise
        if out.error is not None:
            raise out.error
        queue_ms = (time.monotonic() - job.enqueued) * 1000 - out.infer_ms
        timing = {"queue_ms": round(max(queue_ms, 0.0), 3), "infer_ms": round(out.infer_ms, 3),
                  "batch_rows": out.batch_rows}
        return P.reply(out.actions, request.batched, timing, out.rng_state)

    def _parse_frame(self, message: bytes) -> P.Request:
        """Decode and validate one websocket frame (on the decoder pool: never on the event loop)."""
        return P.parse_request(P.unpackb(message, self.cfg.frame_limits), self.schema, self.cfg.max_rows,
                               self.cfg.max_keys)

    def _parse_json(self, body: bytes, content_type: str = "") -> P.Request:
        """Decode and validate one ``POST /predict`` body (on the decoder pool)."""
        if self.cfg.http_api == "llava_vla":
            return P.request_from_llava_vla(body, content_type, self.schema, self.cfg.max_keys)
        try:
            data = json.loads(body)
        except Exception as e:
            raise P.ProtocolError.one("body", "JSON", P.clip(f"{type(e).__name__}: {e}")) from None
        return P.request_from_json(data, self.schema, self.cfg.max_rows, self.cfg.max_keys)

    def _refused(self, err: Exception) -> None:
        self.counts["errors"] += 1
        log.info("refused a request: %s", P.clip(str(err).replace("\n", " ")))

    async def _answer(self, message: bytes | str) -> bytes | str:
        assert self.loop is not None
        try:
            if isinstance(message, str):
                raise P.ProtocolError.one("frame", "a binary msgpack frame", "a text frame")
            request = await self.loop.run_in_executor(self._decoder, self._parse_frame, message)
            return P.packb(await self.submit(request))
        except (P.ProtocolError, RequestError) as e:
            self._refused(e)
            return str(e)

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            await ws.send(self._metadata_frame)
            async for message in ws:
                answer = asyncio.ensure_future(self._answer(message))
                closed = asyncio.ensure_future(ws.wait_closed())
                try:
                    await asyncio.wait((answer, closed), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
                    hung_up = not answer.done()  # or the server stops
                    if hung_up:
                        answer.cancel()
                if hung_up:
                    log.debug("connection %s closed mid-request; its request was dropped", ws.remote_address)
                    return
                await ws.send(answer.result())
        except ConnectionClosed as e:  # client went away (maybe mid-request); nothing to answer
            log.debug("connection %s closed: %s", ws.remote_address, e)

    # --------------------------------------------------------------------------- HTTP bits
    def authorized(self, headers: Any) -> bool:
        if not self.api_key:
            return True
        given = headers.get("x-api-key") or ""
        auth = headers.get("Authorization") or ""
        for prefix in ("Bearer ", "Api-Key "):
            if auth.startswith(prefix):
                given = given or auth[len(prefix):]
        return hmac.compare_digest(given.strip().encode(), self.api_key.encode())

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "protocol": P.PROTOCOL, "protocol_version": P.PROTOCOL_VERSION,
                "uptime_s": round(time.time() - self.started, 1), **self.counts,
                "batches": self.batcher.batches if self.batcher else 0,
                "queue": len(self.batcher.pending) if self.batcher else 0}

    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        if request.path.split("?")[0] in ("/healthz", "/health"):
            response = connection.respond(HTTPStatus.OK, json.dumps(self.health()) + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        if not self.authorized(request.headers):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong API key: send the header "
                                      "'x-api-key: KEY' or 'Authorization: Bearer KEY'\n")
        return None

    def _build_metadata(self) -> None:
        pm = self.policy.metadata()
        chunk, da = self.policy.chunk, self.policy.robot.action_dim
        self.metadata = {
            "protocol": P.PROTOCOL, "protocol_version": P.PROTOCOL_VERSION, **pm,
            "history": self.schema.history,
            "observation_schema": self.schema.to_json(),
            "action_schema": {"actions": {"shape": [chunk, da], "dtype": self.action_dtype, "units": "robot"}},
            "example_observation": self.schema.example(),
            "aliases": {**P.ALIASES, "images": "{camera: image} -> observation.images.<camera>"},
            "batch_request": f"{{'{P.BATCH_KEY}': [obs, ...]}} -> actions (B, H, Da), one policy call",
            "reproducible": f"send '{P.SEED_KEY}' (int) once, then the reply's '{P.RNG_STATE_KEY}' with each "
                            "request: such requests run alone with their own generator",
            "limits": {"max_bytes": self.cfg.max_bytes, "max_batch": self.cfg.max_batch,
                       "max_wait_ms": self.cfg.max_wait_ms, "max_rows": self.cfg.max_rows,
                       "timeout_s": self.cfg.timeout_s, "max_queue": self.cfg.max_queue,
                       "max_queue_bytes": self.cfg.max_queue_bytes, "max_keys": self.cfg.max_keys,
                       "max_items": self.cfg.max_items, "read_timeout_s": self.cfg.read_timeout_s},
            "http": {"port": self.http_port, "predict": "POST /predict", "metadata": "GET /metadata",
                     "healthz": "GET /healthz", "api": self.cfg.http_api} if self._http else None,
            "auth": "api key (x-api-key or Authorization: Bearer)" if self.api_key else None,
        }
        self._metadata_frame = P.packb(self.metadata)

    def http_metadata(self) -> dict[str, Any]:
        """The metadata as JSON; the example observation in /predict's form (base64 PNG images)."""
        from PIL import Image

        def png(img: np.ndarray) -> str:
            buf = io.BytesIO()
            Image.fromarray(img if img.ndim == 3 else img[-1]).save(buf, format="PNG")
            return base64.b64encode(buf.getvalue()).decode()

        ex = self.schema.example()
        example = {"images": {c: png(ex[f"{P.OBS_IMAGES}.{c}"]) for c in self.policy.robot.cameras},
                   "instruction": ex[P.TASK]}
        if P.OBS_STATE in ex:
            example["state"] = ex[P.OBS_STATE].tolist()
        meta = {k: v for k, v in self.metadata.items() if k != "example_observation"}
        return {**meta, "example_request": example}

    # --------------------------------------------------------------------------- lifecycle
    async def serve(self, ready: Callable[[PolicyServer], None] | None = None,
                    stop: asyncio.Future | None = None) -> None:
        """Run until ``stop`` resolves (forever when None)."""
        self.loop = asyncio.get_running_loop()
        self.batcher = DynamicBatcher(self.run_jobs, self.cfg.max_batch, self.cfg.max_wait_ms / 1000,
                                      self.cfg.max_queue, self.cfg.max_queue_bytes)
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vlaforge-decode")
        batch_task = asyncio.create_task(self.batcher.loop())
        with logging_off_the_loop():
            try:
                async with ws_serve(self._handle, self.cfg.host, self.cfg.port, max_size=self.cfg.max_bytes,
                                    compression=None, process_request=self._process_request,
                                    server_header="vlaforge-serve") as ws_server:
                    self.port = next(iter(ws_server.sockets)).getsockname()[1]
                    if self.cfg.http:
                        await self._start_http()
                    self._build_metadata()
                    log.info("serving %s on ws://%s:%d", self.cfg.checkpoint or "a policy", self.cfg.host,
                             self.port)
                    if ready is not None:
                        ready(self)
                    await (stop if stop is not None else self.loop.create_future())
            finally:
                batch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await batch_task
                if self._http is not None:
                    await self._http.cleanup()
                self.batcher.executor.shutdown(wait=False, cancel_futures=True)
                self._decoder.shutdown(wait=False, cancel_futures=True)

    async def _start_http(self) -> None:
        port = self.cfg.http_port
        if port == -1:
            port = self.port + 1 if self.cfg.port else 0
        server = _LimitedServer(self._http_request, self.cfg.max_connections,
                                keepalive_timeout=self.cfg.read_timeout_s,  # also bounds the wait for headers
                                handler_cancellation=True,  # a client that hangs up takes its request with it
                                auto_decompress=False,  # no compressed bodies (a small one can inflate to GBs)
                                lingering_time=min(self.cfg.read_timeout_s, 2.0), access_log=None)
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._http = runner
        await web.TCPSite(runner, self.cfg.host, port, backlog=self.cfg.http_backlog).start()
        self.http_port = runner.addresses[0][1]

    # --------------------------------------------------------------------------- HTTP (event loop)
    def _http_reply(self, status: int, body: dict[str, Any] | list, close: bool = False) -> web.Response:
        response = web.json_response(body, status=status, dumps=lambda o: json.dumps(o) + "\n")
        if close:
            response.force_close()
        return response

    def _http_error(self, status: int, err: Exception, close: bool = False) -> web.Response:
        self._refused(err)
        body = err.to_json() if isinstance(err, P.ProtocolError) else {"error": str(err)}
        return self._http_reply(status, body, close)

    async def _http_request(self, request: web.BaseRequest) -> web.StreamResponse:
        """``POST /predict``, ``GET /metadata``, ``GET /healthz``."""
        path = request.path
        if request.method == "GET":
            if path in ("/healthz", "/health"):
                return self._http_reply(HTTPStatus.OK, self.health())
            if not self.authorized(request.headers):
                return self._http_error(HTTPStatus.UNAUTHORIZED, RequestError("missing or wrong API key"))
            if path == "/metadata":
                return self._http_reply(HTTPStatus.OK, self.http_metadata())
            return self._http_error(HTTPStatus.NOT_FOUND, RequestError(
                f"no such endpoint {P.clip(path, 80)!r}; try POST /predict, GET /metadata, GET /healthz"))
        if request.method != "POST" or path != "/predict":
            return self._http_error(HTTPStatus.NOT_FOUND, RequestError(
                f"no such endpoint {request.method} {P.clip(path, 80)!r}; try POST /predict"), close=True)
        if not self.authorized(request.headers):
            return self._http_error(HTTPStatus.UNAUTHORIZED, RequestError("missing or wrong API key"), close=True)
        size = request.content_length
        if size is None:
            return self._http_error(HTTPStatus.LENGTH_REQUIRED,
                                    P.ProtocolError.one("Content-Length", "a byte count", "nothing"), close=True)
        if size > self.cfg.max_bytes:
            return self._http_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, P.ProtocolError.one(
                "body", f"at most {self.cfg.max_bytes} bytes (max_bytes)", f"{size} bytes"), close=True)
        try:
            async with asyncio.timeout(self.cfg.read_timeout_s):
                body = await request.content.readexactly(size)
        except TimeoutError:
            return self._http_error(HTTPStatus.REQUEST_TIMEOUT, RequestError(
                f"the body did not arrive within {self.cfg.read_timeout_s:g} s (read_timeout_s)"), close=True)
        except asyncio.IncompleteReadError as e:
            return self._http_error(HTTPStatus.BAD_REQUEST, P.ProtocolError.one(
                "body", f"{size} bytes (Content-Length)", f"{len(e.partial)} bytes"), close=True)
        assert self.loop is not None
        try:
            parsed = await self.loop.run_in_executor(self._decoder, self._parse_json, body,
                                                     request.headers.get("Content-Type", ""))
            del body
            out = await self.submit(parsed)
            if self.cfg.http_api == "llava_vla":  # flask_server.py: jsonify(actions.tolist()), one flat list
                return self._http_reply(HTTPStatus.OK, np.asarray(out["actions"]).reshape(-1).tolist())
            return self._http_reply(HTTPStatus.OK, P.reply_to_json(out))
        except P.ProtocolError as e:
            return self._http_error(HTTPStatus.BAD_REQUEST, e)
        except RequestError as e:
            return self._http_error(e.status, e)


class _LimitedServer(web.Server):
    """aiohttp's low-level server that closes connections beyond ``max_connections`` as they are accepted."""

    def __init__(self, handler: Callable, max_connections: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self.connections) > self.max_connections:
            log.debug("HTTP connection refused: %d open (max_connections=%d)", len(self.connections) - 1,
                      self.max_connections)
            transport.close()


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Puts records on a bounded queue; drops them (never blocks, never prints) when it is full."""

    def enqueue(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(record)


@contextlib.contextmanager
def logging_off_the_loop(names: tuple[str, ...] = ("vlaforge.serve", "aiohttp", "websockets"),
                         capacity: int = 10_000) -> Iterator[None]:
    """While serving, the records of ``names`` go through a queue to the root logger's handlers on a listener
    thread: formatting and writing them (rich's console handler is slow) never stalls the event loop."""
    handler = _DroppingQueueHandler(queue.Queue(capacity))
    targets = logging.getLogger().handlers or [logging.lastResort]  # what those records reached before
    listener = logging.handlers.QueueListener(handler.queue, *[h for h in targets if h is not None],
                                              respect_handler_level=True)
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
    listener.start()
    try:
        yield
    finally:
        for lg, propagate in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.propagate = propagate
        listener.stop()


# ----------------------------------------------------------------------------------------------- runners
class ServerThread:
    """Run a :class:`PolicyServer` on a background event loop (tests, benchmarks, notebooks)."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="vlaforge-serve", daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = self._loop.create_future()
            await self.server.serve(ready=lambda _: self._ready.set(), stop=self._stop)

        try:
            asyncio.run(run())
        except BaseException as e:
            self._error = e
            self._ready.set()

    def start(self, timeout: float = 60) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"server did not start: {self._error}")
        return self

    @property
    def url(self) -> str:
        return f"ws://{self.server.cfg.host}:{self.server.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.server.cfg.host}:{self.server.http_port}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._stop.done():
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def serve_forever(cfg: ServeConfig, ready: Callable[[PolicyServer], None] | None = None) -> None:
    """Load ``cfg.checkpoint`` and serve until SIGINT / SIGTERM."""
    import signal

    server = PolicyServer.load(cfg)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        await server.serve(ready=ready, stop=stop)

    asyncio.run(main())
