"""Processor steps and pipelines, saved inside every checkpoint (DESIGN §1, §4).

A step is a dataclass (its JSON config) with ``__call__(item) -> item`` on one un-batched sample and, when it
holds arrays (normalization statistics), ``state_dict()`` / ``load_state_dict()``. A :class:`Pipeline` saves
as ``<name>.json`` (the steps' configs with ``type`` tags) plus one safetensors file per stateful step, so
training, ``eval`` and ``serve`` rebuild exactly the same transforms from a checkpoint directory alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from vlaforge.config import read_json
from vlaforge.registry import Registry

STEPS: Registry[type[Step]] = Registry("steps", lazy={
    "check_features": "vlaforge.processors.features",
    "normalize": "vlaforge.processors.normalize",
    "unnormalize": "vlaforge.processors.normalize",
    "images": "vlaforge.processors.image",
    "random_shift": "vlaforge.processors.image",
    "tokenize": "vlaforge.processors.text",
})

AUG_SEED = "_aug_seed"  # per-item seed for random train-time steps, set by the training data loader
PADDED = ("input_ids", "attention_mask", "reasoning_ids", "reasoning_mask")  # 1-D, right-padded by collate


class Step:
    """Base class of processor steps. Subclasses are ``@dataclass``es registered in :data:`STEPS`."""

    resources: ClassVar[tuple[str, ...]] = ()  # names of objects the step needs at load time (e.g. "tokenizer")
    uses_stats: ClassVar[bool] = False  # holds one dataset's statistics (normalization)
    uses_robot: ClassVar[bool] = False  # checks one robot's features

    def rebind(self, stats: Any = None, robot: Any = None) -> Step:
        """This step for another dataset's statistics / robot spec (itself when it uses neither)."""
        return self

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"step {type(self).__name__} holds no state, got keys {sorted(state)}")

    def config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def bind(self, **resources: Any) -> None:
        """Attach non-serializable resources (the tokenizer) after loading."""


class Pipeline:
    """An ordered list of steps; ``pipeline(item)`` applies them in turn."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = list(steps)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        for step in self.steps:
            item = step(item)
        return item

    def __repr__(self) -> str:
        return f"Pipeline({[STEPS.name_of(type(s)) for s in self.steps]})"

    def save(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        spec = []
        for i, step in enumerate(self.steps):
            kind = STEPS.name_of(type(step))
            entry: dict[str, Any] = {"type": kind, "config": _jsonable(step.config())}
            state = step.state_dict()
            if state:
                fname = f"{name}_{i:02d}_{kind}.safetensors"
                save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(directory / fname))
                entry["state"] = fname
            spec.append(entry)
        (directory / f"{name}.json").write_text(json.dumps({"steps": spec}, indent=2))

    @classmethod
    def load(cls, directory: Path, name: str, **resources: Any) -> Pipeline:
        path = directory / f"{name}.json"
        spec = read_json(path, "processor pipeline")
        if not isinstance(spec, dict) or not isinstance(spec.get("steps"), list):
            raise ValueError(f"{path}: expected {{'steps': [...]}}, got {str(spec)[:80]}")
        steps = []
        for entry in spec["steps"]:
            step_cls = STEPS.get(entry["type"])
            step = step_cls(**entry["config"])
            if "state" in entry:
                state_path = directory / entry["state"]
                if not state_path.resolve().is_relative_to(directory.resolve()):
                    raise ValueError(f"{path}: step '{entry['type']}' names state file {entry['state']!r} outside "
                                     f"{directory} (a checkpoint's files must lie inside it)")
                if not state_path.is_file():
                    raise FileNotFoundError(f"processor state {state_path} (for step '{entry['type']}') not found")
                try:
                    state = load_file(str(state_path))
                except (SafetensorError, OSError) as e:
                    raise ValueError(f"{state_path}: not a readable safetensors file ({e})") from None
                step.load_state_dict(state)
            missing = [r for r in step_cls.resources if r not in resources]
            if missing:
                raise ValueError(f"step '{entry['type']}' needs resources {missing}")
            step.bind(**{r: resources[r] for r in step_cls.resources})
            steps.append(step)
        return cls(steps)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A collated batch's tensors on ``device`` (other values as they are). The copies do not block: from pinned
    batches (the training loader's on CUDA) they overlap the host's work. On the CPU the batch is returned as is."""
    device = torch.device(device)
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def collate(items: list[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    """Stack processed items into a batch: arrays -> tensors, 1-D token ids right-padded, strings -> lists."""
    out: dict[str, Any] = {}
    keys = set(items[0])
    for i, it in enumerate(items[1:], 1):
        if set(it) != keys:
            raise KeyError(f"collate: item {i} has keys differing from item 0: missing "
                           f"{sorted(keys - set(it))}, extra {sorted(set(it) - keys)}")
    for key in items[0]:
        if key.startswith("_"):
            continue
        vals = [it[key] for it in items]
        first = vals[0]
        if isinstance(first, str) or first is None:
            out[key] = vals
        elif key in PADDED:
            width = max(len(v) for v in vals)
            fill = pad_id if key in ("input_ids", "reasoning_ids") else 0
            arr = np.full((len(vals), width), fill, dtype=np.int64)
            for i, v in enumerate(vals):
                arr[i, : len(v)] = v
            out[key] = torch.from_numpy(arr)
        else:
            out[key] = torch.from_numpy(np.stack([np.asarray(v) for v in vals]))
    return out
