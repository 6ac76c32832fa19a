"""The RLDS episode source (``vlaforge convert rlds``): dataset discovery, shards, standardization."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.data.convert import SOURCES, Episode, SourceError
from vlaforge.data.rlds.schema import DEFAULT_TEMPLATE, INSTRUCTION_KEYS, OBSERVATION, read_step_schema
from vlaforge.data.rlds.steps import Steps, _resolve
from vlaforge.data.rlds.transforms import Standardization, Standardized, get_transform, transform_for_dataset
from vlaforge.data.tfrecord import FeatureValue, TFRecordError, count_records, read_examples
from vlaforge.types import ACTION, OBS_STATE, FeatureSpec, image_key


def _version_key(p: Path) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else -1 for x in re.split(r"[.\-]", p.name))


def find_dataset_dir(path: str | Path) -> Path:
    """The directory holding ``dataset_info.json``: ``path`` itself or its highest version subdirectory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"rlds source {path} is not a directory")
    if (path / "dataset_info.json").is_file():
        return path
    versions = sorted((d for d in path.iterdir() if (d / "dataset_info.json").is_file()), key=_version_key)
    if not versions:
        raise FileNotFoundError(f"rlds source {path}: no dataset_info.json here or in a version subdirectory "
                                f"(expected <name>/<version>/dataset_info.json as TFDS writes it)")
    return versions[-1]


def _shard_name(template: str, dataset: str, split: str, fmt: str, i: int, n: int) -> str:
    return (template.replace("{DATASET}", dataset).replace("{SPLIT}", split).replace("{FILEFORMAT}", fmt)
            .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}").replace("{SHARD_INDEX}", f"{i:05d}")
            .replace("{NUM_SHARDS}", f"{n:05d}"))


@SOURCES.register("rlds")
class RLDSSource:
    """Episodes of one split of an RLDS dataset directory (see the module docstring for the layout and options).

    Args:
        src: the version directory (holding ``dataset_info.json``) or its parent.
        split: TFDS split name.
        standardize: a :data:`TRANSFORMS` name (``"bridge"``, ``"fractal"``); sets every default below.
        cameras: RLDS observation image keys (camera named as the key), or ``{rlds key: camera name}``.
        state_keys: observation fields concatenated into ``observation.state`` (``[]``: no state).
        action_key: the action field, or several fields concatenated (``["action/world_vector", ...]``).
        instruction_key: the per-step instruction field; the episode's task is its first non-empty value.
        task: a fixed instruction for every episode (overrides ``instruction_key``).
        fps: control rate; RLDS does not record it, so it is required without ``standardize``.
        robot_type: stored in the LeRobot ``info.json``.
    """

    def __init__(self, src: str | Path, *, split: str = "train", standardize: str | None = None,
                 cameras: Sequence[str] | dict[str, str] | None = None, state_keys: Sequence[str] | None = None,
                 action_key: str | Sequence[str] | None = None, instruction_key: str | None = None,
                 task: str | None = None, fps: int | None = None, robot_type: str | None = None) -> None:
        self.root = find_dataset_dir(src)
        info_path = self.root / "dataset_info.json"
        try:
            self.info = json.loads(info_path.read_text())
        except (OSError, ValueError) as e:
            raise SourceError("-", info_path, f"cannot read dataset_info.json: {e}") from None
        self.name = str(self.info.get("name") or self.root.parent.name)
        self.split = split
        self.shards, self.shard_lengths = self._find_shards()
        self.schema = read_step_schema(self.root / "features.json")
        self.task = task

        std = get_transform(standardize) if standardize else None
        if std is not None and (state_keys is not None or action_key is not None):
            raise ValueError(f"standardize={standardize!r} defines state and action; do not pass state_keys / "
                             f"action_key with it")
        self.standardization = std
        fps = fps if fps is not None else (std.fps if std else None)
        if fps is None:
            hint = transform_for_dataset(self.name)
            hint = f" (or standardize={hint!r}, which knows it)" if hint else ""
            raise ValueError(f"fps: RLDS does not record the control rate of '{self.name}'; pass fps=...{hint}")
        if int(fps) <= 0:
            raise ValueError(f"fps: expected > 0, got {fps}")
        self.fps = int(fps)
        self.robot_type = robot_type if robot_type is not None else (std.robot_type if std else None)

        try:
            self._setup_fields(std, cameras, state_keys, action_key, instruction_key)
        except KeyError as e:
            hint = transform_for_dataset(self.name)
            extra = f" (for '{self.name}', standardize={hint!r} knows the fields)" if hint and not std else ""
            raise SourceError("-", self.root / "features.json", f"{e.args[0]}{extra}") from None

    # ------------------------------------------------------------------ setup
    def _find_shards(self) -> tuple[list[Path], list[int] | None]:
        fmt = str(self.info.get("fileFormat") or "tfrecord")
        if fmt != "tfrecord":
            raise SourceError("-", self.root / "dataset_info.json",
                              f"fileFormat '{fmt}' is not supported (only 'tfrecord')")
        splits = {s.get("name"): s for s in self.info.get("splits", [])}
        if self.split not in splits:
            raise SourceError("-", self.root / "dataset_info.json",
                              f"split '{self.split}' not found; the dataset has splits {sorted(map(str, splits))}")
        s = splits[self.split]
        lengths = [int(x) for x in s.get("shardLengths", [])] or None
        if lengths is None:  # older dataset_info.json: find the files
            shards = sorted(self.root.glob(f"{self.name}-{self.split}.{fmt}-*-of-*"))
        else:
            template = s.get("filepathTemplate") or DEFAULT_TEMPLATE
            shards = [self.root / _shard_name(template, self.name, self.split, fmt, i, len(lengths))
                      for i in range(len(lengths))]
        missing = [p.name for p in shards if not p.is_file()]
        if missing or not shards:
            raise SourceError("-", self.root, f"split '{self.split}': shard files missing: "
                                              f"{missing or f'{self.name}-{self.split}.{fmt}-*'}")
        return shards, lengths

    def _setup_fields(self, std: Standardization | None, cameras: Any, state_keys: Any, action_key: Any,
                      instruction_key: str | None) -> None:
        schema = self.schema
        if std is not None:
            for k in std.requires:
                _resolve(k, schema)
        # cameras
        if cameras is None:
            cameras = dict(std.cameras) if std else [k.split("/", 1)[1] for k, f in schema.items()
                                                     if f.kind == "image" and k.startswith(f"{OBSERVATION}/")]
            if not cameras:
                raise KeyError("no image fields under 'observation/'; pass cameras=...")
        if isinstance(cameras, str):
            cameras = [cameras]
        cams = dict(cameras) if isinstance(cameras, dict) else {c: c.rsplit("/", 1)[-1] for c in cameras}
        self.cameras: dict[str, str] = {}
        self.features: dict[str, FeatureSpec] = {}
        for key, name in cams.items():
            full = _resolve(key, schema)
            f = schema[full]
            if f.kind != "image":
                raise KeyError(f"camera '{key}': '{full}' is a {f.cls or f.kind}, not an Image")
            if len(f.shape) != 3 or None in f.shape[:2]:
                raise KeyError(f"camera '{key}': image shape {f.shape} is not a fixed (H, W, C)")
            self.cameras[full] = name
            self.features[image_key(name)] = FeatureSpec("video", (int(f.shape[0]), int(f.shape[1]), 3))  # type: ignore[arg-type]
        # instruction
        if self.task is None:
            if instruction_key is None:
                instruction_key = std.instruction_key if std else next((k for k in INSTRUCTION_KEYS if k in schema),
                                                                       None)
            if instruction_key is None:
                raise KeyError(f"no instruction field (looked for {list(INSTRUCTION_KEYS)}); pass instruction_key=... "
                               f"or task=...")
            self.instruction_key: str | None = _resolve(instruction_key, schema)
            f = schema[self.instruction_key]
            if not (f.kind == "text" or (f.kind == "tensor" and f.dtype == "string")):
                raise KeyError(f"instruction '{self.instruction_key}' is a {f.dtype} {f.cls}, not a string")
        else:
            self.instruction_key = None
        # state and action
        if std is not None:
            self._fn = std.fn
            self.features[OBS_STATE] = FeatureSpec("float32", (len(std.state_names),), list(std.state_names))
            self.features[ACTION] = FeatureSpec("float32", (len(std.action_names),), list(std.action_names))
            return
        if state_keys is None:
            if f"{OBSERVATION}/state" not in schema:
                raise KeyError("no 'observation/state' field; pass state_keys=[...] (or [] for no state)")
            state_keys = ["state"]
        if action_key is None:
            action_key = "action"
        self.state_keys = [self._numeric(k, "state_keys") for k in ([state_keys] if isinstance(state_keys, str)
                                                                     else state_keys)]
        self.action_keys = [self._numeric(k, "action_key") for k in ([action_key] if isinstance(action_key, str)
                                                                      else action_key)]
        if not self.action_keys:
            raise KeyError("action_key: expected at least one field")
        if self.state_keys:
            self.features[OBS_STATE] = FeatureSpec("float32", (sum(schema[k].size for k in self.state_keys),))
        self.features[ACTION] = FeatureSpec("float32", (sum(schema[k].size for k in self.action_keys),))
        self._fn = self._generic

    def _numeric(self, key: str, option: str) -> str:
        full = _resolve(key, self.schema)
        f = self.schema[full]
        if f.kind != "tensor" or f.dtype == "string" or None in f.shape:
            raise KeyError(f"{option}: '{full}' is a {f.dtype} {f.cls or f.kind} of shape {f.shape}, not a "
                           f"fixed-shape numeric tensor")
        return full

    def _generic(self, steps: Steps) -> Standardized:
        n = len(steps)

        def cat(keys: list[str]) -> np.ndarray:
            return np.concatenate([steps[k].reshape(n, -1).astype(np.float32) for k in keys], axis=1)

        return Standardized(cat(self.state_keys) if self.state_keys else None, cat(self.action_keys), np.arange(n))

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        """Number of episodes (records) in the split; a transform may still skip episodes it leaves empty."""
        if self.shard_lengths is not None:
            return sum(self.shard_lengths)
        return sum(count_records(p) for p in self.shards)

    def _episode(self, example: dict[str, FeatureValue], where: str) -> Episode | None:
        steps = Steps(example, self.schema, where)
        out = self._fn(steps)
        idx = np.asarray(out.steps, dtype=np.int64)
        if len(out.action) != len(idx) or (out.state is not None and len(out.state) != len(idx)):
            raise ValueError(f"transform returned {len(idx)} steps, {len(out.action)} actions and "
                             f"{None if out.state is None else len(out.state)} states")
        if not len(idx):
            return None
        frames: dict[str, np.ndarray] = {ACTION: np.ascontiguousarray(out.action, dtype=np.float32)}
        if out.state is not None:
            frames[OBS_STATE] = np.ascontiguousarray(out.state, dtype=np.float32)
        for key, cam in self.cameras.items():
            frames[image_key(cam)] = steps.images(key, idx)
        if self.task is not None:
            task = self.task
        else:
            texts = steps[self.instruction_key][idx]  # type: ignore[index]
            task = next((t for t in texts if t), "")
        return Episode(frames, task, where)

    def __iter__(self) -> Iterator[Episode]:
        index = 0
        for shard in self.shards:
            try:
                for record, example in enumerate(read_examples(shard)):
                    where = f"{shard} record {record}"
                    try:
                        ep = self._episode(example, where)
                    except (ValueError, KeyError) as e:
                        problem = e.args[0] if isinstance(e, KeyError) and e.args else e
                        raise SourceError(index, shard, f"record {record}: {problem}") from None
                    if ep is None:
                        warnings.warn(f"rlds: {where} has no frames after the "
                                      f"'{self.standardization.name if self.standardization else 'generic'}' "
                                      f"transform; skipped", stacklevel=2)
                    else:
                        yield ep
                    index += 1
            except TFRecordError as e:
                raise SourceError(index, shard, f"record {e.index}: {e.problem}") from None
