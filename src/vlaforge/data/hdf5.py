"""HDF5 episodes: ACT / DexVLA (one file per episode) and robomimic / LIBERO (``data/demo_i`` groups per file).

ACT layout (``layout="act"``, as ACT's ``record_sim_episodes.py`` and DexVLA's data scripts write it)::

    /action                         (T, Da)  float
    /observations/qpos              (T, Dq)  float   -> observation.state (with qvel when state_keys says so)
    /observations/qvel              (T, Dq)  float
    /observations/images/<camera>   (T, H, W, 3) uint8, or (T, N) uint8 encoded JPEG/PNG bytes when the
                                    root attribute ``compress`` is true (ACT's compressed variant)
    /language_raw                   (1,) or () bytes   the instruction (DexVLA)
    /substep_reasonings             (T,) bytes         per-frame sub-step reasoning (DexVLA) -> ``reasoning``

Robomimic layout (``layout="robomimic"``; LIBERO's ``scripts/create_dataset.py`` writes one file per task)::

    /data.attrs["problem_info"]     JSON with "language_instruction" (LIBERO) -> the task of every demo in the file
    /data/demo_<i>/actions          (T, Da)
    /data/demo_<i>/obs/<key>        (T, H, W, 3) uint8 cameras (e.g. agentview_rgb) and (T, D) state parts

The ``libero`` source is this reader with LIBERO's options (:class:`LiberoSource`). Camera names, task and fps
come from options, else from the first episode. Every episode is checked against the first one; a corrupt or
inconsistent one raises :class:`~vlaforge.data.convert.SourceError` naming it and its file.
"""

from __future__ import annotations

import io
import json
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
# layout -> (image group, state group, action dataset), relative to an episode's group
LAYOUTS = {"act": (IMAGES, "observations", ACTION), "robomimic": ("obs", "obs", "actions")}


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
    ``language_raw`` / ``problem_info``; required when the files have none), ``state_keys`` (datasets under
    ``observations`` (``obs``) concatenated into the state; default ``("qpos",)``), ``reasoning`` (``"auto"`` = when
    the files have ``substep_reasonings``), ``fps`` (ACT's ALOHA records at 50), ``layout`` (``act``: one episode
    per file; ``robomimic``: the ``data/demo_i`` groups of every file), ``rotate180`` (turn every image by 180
    degrees, e.g. robosuite's upside-down renders).
    """

    def __init__(self, src: str | Path, *, cameras: Sequence[str] | dict[str, str] | None = None,
                 task: str | None = None, state_keys: Sequence[str] = ("qpos",), reasoning: str | bool = "auto",
                 fps: int = 50, robot_type: str | None = None, pattern: str = "*.hdf5", layout: str = "act",
                 rotate180: bool = False) -> None:
        src = Path(src)
        if not src.exists():
            raise FileNotFoundError(f"hdf5 source {src} does not exist")
        if layout not in LAYOUTS:
            raise ValueError(f"hdf5 layout: expected one of {sorted(LAYOUTS)}, got {layout!r}")
        self.files = [src] if src.is_file() else sorted(src.glob(pattern), key=_natural_key)
        if not self.files:
            raise FileNotFoundError(f"no {pattern} files in {src}")
        self.layout, self.rotate180 = layout, bool(rotate180)
        self.images, self.state_group, self.action_key = LAYOUTS[layout]
        self.episodes = self._index()  # (file index, group of the episode: "" for ACT, "data/demo_i")
        self.fps, self.robot_type, self.task = int(fps), robot_type, task
        self.state_keys = (state_keys,) if isinstance(state_keys, str) else tuple(state_keys)
        if isinstance(cameras, str):
            cameras = [cameras]
        with self._open(0) as f:
            g = self._group(f, 0)
            if self.images not in g:
                raise SourceError(0, self._origin(0), f"no '{self.images}' group (keys: {sorted(g)})")
            available = sorted(k for k in g[self.images] if layout == "act" or g[self.images][k].ndim == 4)
            if cameras is None:
                cameras = available
            self.cameras = dict(cameras) if isinstance(cameras, dict) else {c: c for c in cameras}
            unknown = sorted(set(self.cameras) - set(available))
            if unknown:
                raise SourceError(0, self._origin(0), f"cameras {unknown} not found; the file has {available}")
            self.compressed = bool(f.attrs.get("compress", False))
            self.features: dict[str, FeatureSpec] = {}
            for name, ours in self.cameras.items():
                img = self._image(g, name, 0, 0)
                self.features[image_key(ours)] = FeatureSpec("video", tuple(img.shape))
            if self.state_keys:
                dims = [int(np.prod(self._dataset(g, f"{self.state_group}/{k}", 0).shape[1:]))
                        for k in self.state_keys]
                self.features[OBS_STATE] = FeatureSpec("float32", (sum(dims),))
            self.features[ACTION] = FeatureSpec("float32", tuple(self._dataset(g, self.action_key, 0).shape[1:]))
            has_reasoning = "substep_reasonings" in g
            if task is None and self._language(f, g) is None:
                where = "'language_raw'" if layout == "act" else "data.attrs['problem_info'].language_instruction"
                raise SourceError(0, self._origin(0), f"no {where} instruction in the file; pass task=... "
                                                      "(--task on the command line)")
        self.reasoning = has_reasoning if reasoning == "auto" else bool(reasoning)
        if self.reasoning:
            self.features[REASONING] = FeatureSpec("string", (1,))

    def _index(self) -> list[tuple[int, str]]:
        if self.layout == "act":
            return [(k, "") for k in range(len(self.files))]
        out = []
        for k, path in enumerate(self.files):
            try:
                with h5py.File(path, "r") as f:
                    demos = sorted(f["data"], key=lambda n: _natural_key(Path(n))) if "data" in f else []
            except OSError as e:
                raise SourceError(len(out), path, f"cannot open as HDF5 (truncated or corrupt?): {e}") from None
            if not demos:
                raise SourceError(len(out), path, "no 'data/demo_*' groups (robomimic layout)")
            out += [(k, f"data/{d}") for d in demos]
        return out

    def _origin(self, i: int) -> str:
        k, group = self.episodes[i]
        return f"{self.files[k]}:{group}" if group else str(self.files[k])

    def _group(self, f: h5py.File, i: int) -> h5py.Group:
        group = self.episodes[i][1]
        if group and group not in f:
            raise SourceError(i, self._origin(i), f"missing group '/{group}'")
        return f[group] if group else f

    def _language(self, f: h5py.File, g: h5py.Group) -> str | None:
        if self.layout == "act":
            return _text(g["language_raw"][()]) if "language_raw" in g else None
        info = f["data"].attrs.get("problem_info") if "data" in f else None
        if info is None:
            return None
        text = info.decode("utf-8") if isinstance(info, bytes) else str(info)
        return json.loads(text).get("language_instruction")

    def __len__(self) -> int:
        return len(self.episodes)

    def _open(self, i: int) -> h5py.File:
        try:
            return h5py.File(self.files[self.episodes[i][0]], "r")
        except OSError as e:
            raise SourceError(i, self._origin(i), f"cannot open as HDF5 (truncated or corrupt?): {e}") from None

    def _dataset(self, g: h5py.Group, key: str, i: int) -> h5py.Dataset:
        if key not in g:
            raise SourceError(i, self._origin(i), f"missing dataset '{g.name.rstrip('/')}/{key}'")
        return g[key]

    def _image(self, g: h5py.Group, cam: str, i: int, t: int | slice) -> np.ndarray:
        ds = self._dataset(g, f"{self.images}/{cam}", i)
        if not self.compressed:
            imgs = np.asarray(ds[t], dtype=np.uint8)
        else:
            rows = ds[t] if isinstance(t, slice) else ds[t : t + 1]
            imgs = np.stack([_decode_image(r) for r in rows])
            imgs = imgs if isinstance(t, slice) else imgs[0]
        return np.ascontiguousarray(imgs[..., ::-1, ::-1, :]) if self.rotate180 else imgs

    def read(self, i: int) -> Episode:
        """Episode ``i``; every array is read in full and checked."""
        origin = self._origin(i)
        try:
            with self._open(i) as f:
                g = self._group(f, i)
                frames: dict[str, np.ndarray] = {}
                for name, ours in self.cameras.items():
                    frames[image_key(ours)] = self._image(g, name, i, slice(None))
                if self.state_keys:
                    parts = [np.asarray(self._dataset(g, f"{self.state_group}/{k}", i)[()], dtype=np.float32)
                             for k in self.state_keys]
                    frames[OBS_STATE] = np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)
                frames[ACTION] = np.asarray(self._dataset(g, self.action_key, i)[()], dtype=np.float32)
                task = self.task if self.task is not None else self._language(f, g)
                if task is None:
                    raise SourceError(i, origin, "no instruction in the file; pass task=... (--task)")
                if self.reasoning:
                    raw = np.asarray(self._dataset(g, "substep_reasonings", i)[()]).reshape(-1)
                    frames[REASONING] = np.array([_text(r) for r in raw], dtype=object)
        except SourceError:
            raise
        except (OSError, KeyError, ValueError) as e:  # h5py reports truncated chunks as OSError on read
            raise SourceError(i, origin, f"unreadable: {e}") from None
        return Episode(frames, task, origin)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.read(i)


@SOURCES.register("libero")
class LiberoSource(HDF5Source):
    """LIBERO's demonstration files (robomimic layout, one file per task, e.g. ``libero_object/*_demo.hdf5``).

    Defaults give what vlaforge's LIBERO env adapter gives at evaluation: the agent-view and wrist cameras as
    ``image`` / ``wrist_image`` rotated by 180 degrees (the files keep robosuite's upside-down renders), the 8-d
    state ``[ee_pos (3), ee_ori (3, axis-angle as LIBERO stores it), gripper_states (2)]``, the 7-d actions as
    stored, 20 fps, and the file's ``problem_info.language_instruction`` as the task.
    """

    def __init__(self, src: str | Path, *, cameras: Sequence[str] | dict[str, str] | None = None,
                 task: str | None = None, state_keys: Sequence[str] = ("ee_pos", "ee_ori", "gripper_states"),
                 fps: int = 20, robot_type: str | None = "panda", pattern: str = "*.hdf5",
                 rotate180: bool = True) -> None:
        cameras = cameras if cameras is not None else dict(LIBERO_CAMERAS)
        super().__init__(src, cameras=cameras, task=task, state_keys=state_keys, reasoning=False, fps=fps,
                         robot_type=robot_type, pattern=pattern, layout="robomimic", rotate180=rotate180)


LIBERO_CAMERAS = {"agentview_rgb": "image", "eye_in_hand_rgb": "wrist_image"}  # LeRobot's LIBERO feature names
