"""RLDS ``features.json``: the per-step feature tree of a TFDS dataset, flattened to ``/``-joined keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.data.convert import SourceError

STEPS = "steps"
OBSERVATION = "observation"
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
INSTRUCTION_KEYS = ("language_instruction", "observation/natural_language_instruction")



@dataclass(frozen=True)
class Field:
    """One per-step leaf of ``features.json``; ``shape`` is per step, ``None`` for an unknown dimension."""

    key: str  # relative to "steps/", e.g. "observation/state"
    kind: str  # "tensor" | "image" | "text" | "unsupported"
    dtype: str = "float32"  # numpy dtype name, or "string"
    shape: tuple[int | None, ...] = ()
    encoding: str = "none"  # tensors: none | bytes | zlib; images: jpeg | png
    cls: str = ""  # TFDS class name, for messages

    @property
    def size(self) -> int:
        return int(np.prod([d or 0 for d in self.shape]))


def _dims(shape: dict[str, Any] | None) -> tuple[int | None, ...]:
    dims = (shape or {}).get("dimensions", [])
    return tuple(None if int(d) < 0 else int(d) for d in dims)


def _leaf(key: str, node: dict[str, Any]) -> Field:
    cls = str(node.get("pythonClassName", "")).rsplit(".", 1)[-1]
    if "tensor" in node:
        t = node["tensor"]
        return Field(key, "tensor", t.get("dtype", "float32"), _dims(t.get("shape")), t.get("encoding", "none"), cls)
    if "image" in node:
        t = node["image"]
        return Field(key, "image", t.get("dtype", "uint8"), _dims(t.get("shape")),
                     str(t.get("encodingFormat") or "png"), cls)
    if "text" in node:
        return Field(key, "text", "string", (), "none", cls)
    if "classLabel" in node:
        return Field(key, "tensor", "int64", (), "none", cls)
    return Field(key, "unsupported", cls=cls or "unknown")


def _walk(node: dict[str, Any], prefix: str, out: dict[str, Field]) -> None:
    if "featuresDict" in node:
        for name, child in node["featuresDict"].get("features", {}).items():
            _walk(child, f"{prefix}{name}/", out)
    elif "sequence" in node:  # a sequence inside a step: ragged on disk, not read here
        key = prefix.rstrip("/")
        out[key] = Field(key, "unsupported", cls="Sequence")
    else:
        key = prefix.rstrip("/")
        out[key] = _leaf(key, node)


def read_step_schema(path: str | Path) -> dict[str, Field]:
    """The per-step fields of an RLDS ``features.json``: ``{"observation/state": Field, ...}``."""
    path = Path(path)
    try:
        tree = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SourceError("-", path, f"cannot read features.json: {e}") from None
    top = tree.get("featuresDict", {}).get("features") if isinstance(tree, dict) else None
    if top is None:
        raise SourceError("-", path, "expected a TFDS FeaturesDict ('featuresDict' at the top level); this looks "
                                     "like an older TFDS features.json layout, which is not supported")
    steps = top.get(STEPS)
    if steps is None or "sequence" not in steps:
        raise SourceError("-", path, f"not an RLDS dataset: expected a '{STEPS}' Dataset feature, "
                                     f"found top-level features {sorted(top)}")
    out: dict[str, Field] = {}
    _walk(steps["sequence"]["feature"], "", out)
    return out
