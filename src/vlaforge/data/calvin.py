"""CALVIN: one ``episode_XXXXXXX.npz`` per frame, language segments in ``lang_annotations/auto_lang_ann.npy``.

Layout of a split directory (``training/`` or ``validation/``), as CALVIN's recorder writes it::

    episode_0000000.npz ...     rgb_static (200, 200, 3), rgb_gripper (84, 84, 3) uint8, robot_obs (15,),
                                rel_actions (7,), actions (7,), scene_obs, depth_*, ...
    lang_annotations/auto_lang_ann.npy
                                a numpy-saved dict: {"language": {"ann": [str], "task": [str], ...},
                                                     "info": {"indx": [(start, end), ...], ...}}

Each annotated segment ``(start, end)`` (inclusive frame ids) becomes one episode whose instruction is its
``ann`` string, as LLaVA-VLA and RoboVLMs train on CALVIN's language-conditioned segments.

``auto_lang_ann.npy`` is a pickled object array; vlaforge never unpickles arbitrary data, so it is read with
an unpickler that only rebuilds numpy arrays and plain containers and refuses everything else.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlaforge.data.convert import SOURCES, Episode, SourceError
from vlaforge.types import ACTION, OBS_STATE, FeatureSpec, image_key

ANNOTATIONS = "lang_annotations/auto_lang_ann.npy"
DEFAULT_CAMERAS = {"rgb_static": "static", "rgb_gripper": "gripper"}

# What a numpy object array of dicts/lists/strings/arrays needs to be rebuilt, and nothing else.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "slice"),
}


_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


_MAX_ELEMENTS = 10**8  # no annotation array is anywhere near this; a crafted shape cannot force a huge allocation


class _ArraysOnly(pickle._Unpickler):  # the pure-Python unpickler, so BUILD can be inspected
    """Rebuilds numpy arrays (of plain numeric, string or object dtypes) and containers; refuses the rest.

    ``find_class`` admits only numpy's array/dtype/scalar reconstructors, and every BUILD of a dtype must carry
    exactly the canonical state of that dtype (numpy trusts a dtype's pickled itemsize/offsets/flags, so a
    tampered state could corrupt memory); array shapes are capped.
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and plain containers "
                                     f"are accepted in {ANNOTATIONS}")

    def _checked_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            if inst.kind not in "biufOUS" or state != inst.__reduce__()[2]:
                raise pickle.UnpicklingError(f"refusing a dtype {inst!r} with a non-canonical pickled state")
        elif isinstance(inst, np.ndarray):
            shape = state[1] if isinstance(state, tuple) and len(state) > 1 else None
            if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape) or \
                    int(np.prod(shape, dtype=np.float64)) > _MAX_ELEMENTS:
                raise pickle.UnpicklingError(f"refusing an array of shape {shape!r}")
        else:
            raise pickle.UnpicklingError(f"refusing to set the state of a {type(inst).__name__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _checked_build


def load_object_npy(path: Path) -> Any:
    """Read an ``.npy`` holding a pickled object (array) with the restricted unpickler."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in _HEADERS:
            raise ValueError(f"{path}: unsupported .npy format version {version}")
        shape, _, dtype = _HEADERS[version](f)
        if dtype.hasobject:
            obj = _ArraysOnly(f).load()
        else:
            obj = np.fromfile(f, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        return obj.item()
    return obj


@SOURCES.register("calvin")
class CalvinSource:
    """Language-annotated segments of a CALVIN split as episodes.

    Options: ``cameras`` (npz key -> camera name; default static + gripper), ``state_key`` (``robot_obs``),
    ``action_key`` (``rel_actions``, CALVIN's relative actions; ``actions`` for absolute), ``fps`` (30).
    """

    def __init__(self, src: str | Path, *, cameras: dict[str, str] | Sequence[str] | None = None,
                 state_key: str = "robot_obs", action_key: str = "rel_actions", fps: int = 30,
                 robot_type: str | None = "franka") -> None:
        self.root = Path(src)
        ann_path = self.root / ANNOTATIONS
        if not ann_path.exists():
            raise FileNotFoundError(f"calvin: {ann_path} not found (point SRC at a split directory such as "
                                    f"task_D_D/training)")
        try:
            ann = load_object_npy(ann_path)
            self.instructions: list[str] = [str(a) for a in ann["language"]["ann"]]
            self.segments = [(int(s), int(e)) for s, e in ann["info"]["indx"]]
        except (KeyError, TypeError, ValueError, pickle.UnpicklingError, EOFError) as e:
            raise SourceError("-", ann_path, f"not a CALVIN language annotation file: {e}") from None
        if len(self.instructions) != len(self.segments):
            raise SourceError("-", ann_path, f"{len(self.instructions)} instructions for {len(self.segments)} "
                                             f"segments")
        if cameras is None:
            cameras = DEFAULT_CAMERAS
        if isinstance(cameras, str):
            cameras = [cameras]
        self.cameras = dict(cameras) if isinstance(cameras, dict) else {c: c for c in cameras}
        self.state_key, self.action_key = state_key, action_key
        self.fps, self.robot_type = int(fps), robot_type
        first = self._frame(0, self.segments[0][0]) if self.segments else None
        if first is None:
            raise SourceError("-", ann_path, "no annotated segments")
        self.features: dict[str, FeatureSpec] = {
            image_key(ours): FeatureSpec("video", tuple(first[k].shape)) for k, ours in self.cameras.items()}
        self.features[OBS_STATE] = FeatureSpec("float32", (int(first[state_key].size),))
        self.features[ACTION] = FeatureSpec("float32", (int(first[action_key].size),))

    def __len__(self) -> int:
        return len(self.segments)

    def frame_path(self, frame: int) -> Path:
        return self.root / f"episode_{frame:07d}.npz"

    def _frame(self, episode: int, frame: int) -> dict[str, np.ndarray]:
        path = self.frame_path(frame)
        keys = [*self.cameras, self.state_key, self.action_key]
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in keys if k not in z.files]
                if missing:
                    raise SourceError(episode, path, f"missing arrays {missing} (has {sorted(z.files)})")
                return {k: z[k] for k in keys}
        except FileNotFoundError:
            raise SourceError(episode, path, "frame file is missing") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise SourceError(episode, path, f"unreadable npz (truncated or corrupt?): {e}") from None

    def read(self, i: int) -> Episode:
        start, end = self.segments[i]
        if end < start:
            raise SourceError(i, self.root / ANNOTATIONS, f"segment ({start}, {end}) ends before it starts")
        rows = [self._frame(i, t) for t in range(start, end + 1)]
        frames = {image_key(ours): np.stack([r[k] for r in rows]).astype(np.uint8)
                  for k, ours in self.cameras.items()}
        frames[OBS_STATE] = np.stack([r[self.state_key].reshape(-1) for r in rows]).astype(np.float32)
        frames[ACTION] = np.stack([r[self.action_key].reshape(-1) for r in rows]).astype(np.float32)
        return Episode(frames, self.instructions[i], f"{self.frame_path(start)}..{self.frame_path(end).name}")

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.read(i)
