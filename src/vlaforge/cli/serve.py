"""vlaforge serve CHECKPOINT [--host 127.0.0.1] [--port 8000] [--max-batch 8] [--max-wait-ms 5] [--api-key KEY]

An openpi-compatible websocket policy server (+ GET /healthz) on --port, and HTTP POST /predict (JSON) on
--http-port (default port + 1; --http false turns it off). Options are the fields of
:class:`vlaforge.serve.server.ServeConfig`; dashes and underscores are interchangeable. Prefer the
``VLAFORGE_API_KEY`` environment variable to --api-key (command lines are visible to other users).
"""

from __future__ import annotations

from vlaforge.cli.common import setup_logging, to_draccus
from vlaforge.config import parse_args


def _underscores(argv: list[str]) -> list[str]:
    """``--max-batch=8`` -> ``--max_batch=8`` (option names only)."""
    out = []
    for a in argv:
        if a.startswith("--"):
            key, eq, value = a[2:].partition("=")
            a = "--" + key.replace("-", "_") + eq + value
        out.append(a)
    return out


def main(argv: list[str]) -> int:
    from vlaforge.serve.server import PolicyServer, ServeConfig, serve_forever

    setup_logging()
    cfg = parse_args(ServeConfig, to_draccus(_underscores(argv), positionals=["checkpoint"], flags=["http"]))

    def ready(server: PolicyServer) -> None:
        http = (f"; HTTP POST /predict on http://{cfg.host}:{server.http_port}" if server.http_port else "")
        auth = "API key required" if server.api_key else "no API key"
        print(f"vlaforge serve: listening on ws://{cfg.host}:{server.port} (openpi protocol, GET /healthz{http}; "
              f"{auth}; max_batch={cfg.max_batch}, max_wait_ms={cfg.max_wait_ms:g})", flush=True)

    serve_forever(cfg, ready=ready)
    return 0
