"""ACT / DexVLA HDF5 episodes: one file per episode.

Layout (as ACT's ``record_sim_episodes.py`` and DexVLA's data scripts write it)::

    /action                         (T, Da)  float
    /observations/qpos              (T, Dq)  float   -> observation.state (with qvel when state_keys says so)
    /observations/qvel              (T, Dq)  float
    /observations/images/<camera>   (T, H, W, 3) uint8, or (T, N) uint8 encoded JPEG/PNG bytes when the
                                    root attribute ``compress`` is true (ACT's compressed variant)
    /language_raw                   (1,) or () bytes   the instruction (DexVLA)
    /substep_reasonings             (T,) bytes         per-frame sub-step reasoning (DexVLA) -> ``reasoning``

Camera names, task and fps come from options, else from the first file. Every file is checked against the
first one; a corrupt or inconsistent file raises :class:`~vlaforge.data.convert.SourceError` naming it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from vlaforge.data.convert import SOURCES, Episode, SourceError
from vlaforge.types import ACTION, OBS_STATE, REASONING, FeatureSpec, image_key

IMAGES = "observations/images"


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _text(value: Any) -> str:
    v = np.asarray(value).reshape(-1)
    if v.size == 0:
        return ""
    x = v[0]
    return x.decode("utf-8") if isinstance(x, bytes | np.bytes_) else str(x)


def _decode_image(buf: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(buf.tobytes())).convert("RGB"))


@SOURCES.register("hdf5")
class HDF5Source:
    """Episodes from a directory of ``*.hdf5`` files (or one file).

    Options: ``cameras`` (HDF5 camera names, or ``{hdf5_name: our_name}``; default all), ``task`` (overrides
    ``language_raw``; required when the files have none), ``state_keys`` (datasets under ``observations``
    concatenated into the state; default ``("qpos",)``), ``reasoning`` (``"auto"`` = when the files have
    ``substep_reasonings``), ``fps`` (ACT's ALOHA records at 50).
    """

    def __init__(self, src: str | Path, *, cameras: Sequence[str] | dict[str, str] | None = None,
                 task: str | None = None, state_keys: Sequence[str] = ("qpos",), reasoning: str | bool = "auto",
                 fps: int = 50, robot_type: str | None = None, pattern: str = "*.hdf5") -> None:
        src = Path(src)
        if not src.exists():
            raise FileNotFoundError(f"hdf5 source {src} does not exist")
        self.files = [src] if src.is_file() else sorted(src.glob(pattern), key=_natural_key)
        if not self.files:
            raise FileNotFoundError(f"no {pattern} files in {src}")
        self.fps, self.robot_type, self.task = int(fps), robot_type, task
        self.state_keys = (state_keys,) if isinstance(state_keys, str) else tuple(state_keys)
        if isinstance(cameras, str):
            cameras = [cameras]
        with self._open(0) as f:
            if IMAGES not in f:
                raise SourceError(0, self.files[0], f"no '{IMAGES}' group (top-level keys: {sorted(f)})")
            available = sorted(f[IMAGES])
            if cameras is None:
                cameras = available
            self.cameras = dict(cameras) if isinstance(cameras, dict) else {c: c for c in cameras}
            unknown = sorted(set(self.cameras) - set(available))
            if unknown:
                raise SourceError(0, self.files[0], f"cameras {unknown} not found; the file has {available}")
            self.compressed = bool(f.attrs.get("compress", False))
            self.features: dict[str, FeatureSpec] = {}
            for name, ours in self.cameras.items():
                img = self._image(f, name, 0, 0)
                self.features[image_key(ours)] = FeatureSpec("video", tuple(img.shape))
            if self.state_keys:
                dims = [int(np.prod(self._dataset(f, f"observations/{k}", 0).shape[1:])) for k in self.state_keys]
                self.features[OBS_STATE] = FeatureSpec("float32", (sum(dims),))
            self.features[ACTION] = FeatureSpec("float32", tuple(self._dataset(f, ACTION, 0).shape[1:]))
            has_reasoning = "substep_reasonings" in f
            if task is None and "language_raw" not in f:
                raise SourceError(0, self.files[0], "no 'language_raw' instruction in the file; pass task=... "
                                                    "(--task on the command line)")
        self.reasoning = has_reasoning if reasoning == "auto" else bool(reasoning)
        if self.reasoning:
            self.features[REASONING] = FeatureSpec("string", (1,))

    def __len__(self) -> int:
        return len(self.files)

    def _open(self, i: int) -> h5py.File:
        try:
            return h5py.File(self.files[i], "r")
        except OSError as e:
            raise SourceError(i, self.files[i], f"cannot open as HDF5 (truncated or corrupt?): {e}") from None

    def _dataset(self, f: h5py.File, key: str, i: int) -> h5py.Dataset:
        if key not in f:
            raise SourceError(i, self.files[i], f"missing dataset '/{key}'")
        return f[key]

    def _image(self, f: h5py.File, cam: str, i: int, t: int | slice) -> np.ndarray:
        ds = self._dataset(f, f"{IMAGES}/{cam}", i)
        if not self.compressed:
            return np.asarray(ds[t], dtype=np.uint8)
        rows = ds[t] if isinstance(t, slice) else ds[t : t + 1]
        imgs = np.stack([_decode_image(r) for r in rows])
        return imgs if isinstance(t, slice) else imgs[0]

    def read(self, i: int) -> Episode:
        """Episode ``i``; every array is read in full and checked."""
        path = self.files[i]
        try:
            with self._open(i) as f:
                frames: dict[str, np.ndarray] = {}
                for name, ours in self.cameras.items():
                    frames[image_key(ours)] = self._image(f, name, i, slice(None))
                if self.state_keys:
                    parts = [np.asarray(self._dataset(f, f"observations/{k}", i)[()], dtype=np.float32)
                             for k in self.state_keys]
                    frames[OBS_STATE] = np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)
                frames[ACTION] = np.asarray(self._dataset(f, ACTION, i)[()], dtype=np.float32)
                task = self.task if self.task is not None else _text(self._dataset(f, "language_raw", i)[()])
                if self.reasoning:
                    raw = np.asarray(self._dataset(f, "substep_reasonings", i)[()]).reshape(-1)
                    frames[REASONING] = np.array([_text(r) for r in raw], dtype=object)
        except SourceError:
            raise
        except (OSError, KeyError, ValueError) as e:  # h5py reports truncated chunks as OSError on read
            raise SourceError(i, path, f"unreadable: {e}") from None
        return Episode(frames, task, str(path))

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.read(i)
