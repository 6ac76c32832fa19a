"""Serving: an openpi-compatible policy server and its client (DESIGN §2: protocol, server, client).

``vlaforge.serve.protocol`` and ``vlaforge.serve.client`` need only numpy, msgpack and websockets; the server
(``vlaforge.serve.server``) loads the checkpoint through :class:`vlaforge.inference.LocalPolicy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlaforge.serve.client import ActionChunkBroker, AsyncActionBroker, RemotePolicy, ServerError
    from vlaforge.serve.server import PolicyServer, ServeConfig, ServerThread

_LAZY = {"RemotePolicy": "client", "ActionChunkBroker": "client", "AsyncActionBroker": "client",
         "ServerError": "client", "PolicyServer": "server", "ServeConfig": "server", "ServerThread": "server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"vlaforge.serve.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vlaforge.serve' has no attribute {name!r}")


__all__ = ["ActionChunkBroker", "AsyncActionBroker", "PolicyServer", "RemotePolicy", "ServeConfig", "ServerError",
           "ServerThread"]
