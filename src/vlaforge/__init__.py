"""vlaforge: turn vision-language models into vision-language-action robot policies.

Importing the package is cheap; ``VLAPolicy`` and friends load torch / transformers on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from vlaforge.inference import LocalPolicy
    from vlaforge.policy import PolicyConfig, VLAPolicy

_LAZY = {"VLAPolicy": "vlaforge.policy", "PolicyConfig": "vlaforge.policy", "LocalPolicy": "vlaforge.inference"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlaforge' has no attribute {name!r}")


__all__ = ["LocalPolicy", "PolicyConfig", "VLAPolicy", "__version__"]
