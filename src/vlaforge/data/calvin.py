"""CALVIN: one ``episode_XXXXXXX.npz`` per frame, language segments in ``lang_annotations/auto_lang_ann.npy``.

Layout of a split directory (``training/`` or ``validation/``), as CALVIN's recorder writes it::

    episode_0000000.npz ...     rgb_static (200, 200, 3), rgb_gripper (84, 84, 3) uint8, robot_obs (15,),
                                rel_actions (7,), actions (7,), scene_obs, depth_*, ...
    lang_annotations/auto_lang_ann.npy
                                a numpy-saved dict: {"language": {"ann": [str], "task": [str], ...},
                                                     "info": {"indx": [(start, end), ...], ...}}
    lang_annotations/auto_lang_ann.json
                                the same annotations as JSON, written once by
                                ``vlaforge convert calvin-annotations DIR`` (:func:`convert_annotations`):
                                {"format": "vlaforge.calvin_annotations", "version": 1,
                                 "language": {"ann": [str, ...], "task": [str, ...]},
                                 "info": {"indx": [[start, end], ...]}}
                                (the .npy's keys, without the sentence embeddings ``language.emb``)

Each annotated segment ``(start, end)`` (inclusive frame ids) becomes one episode whose instruction is its
``ann`` string, as LLaVA-VLA and RoboVLMs train on CALVIN's language-conditioned segments.

The JSON is read when it is there. Otherwise ``auto_lang_ann.npy``, a pickled object array, is read with an
unpickler that only rebuilds numpy arrays and plain containers, refuses everything else and bounds the work a
file can cause (:class:`AnnotationLimits`): vlaforge never unpickles arbitrary data.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy._core.multiarray import _reconstruct, scalar

from vlaforge.data.convert import SOURCES, Episode, SourceError
from vlaforge.types import ACTION, OBS_STATE, FeatureSpec, image_key

log = logging.getLogger(__name__)

ANNOTATIONS = "lang_annotations/auto_lang_ann.npy"
ANNOTATIONS_JSON = "lang_annotations/auto_lang_ann.json"
JSON_FORMAT, JSON_VERSION = "vlaforge.calvin_annotations", 1
DEFAULT_CAMERAS = {"rgb_static": "static", "rgb_gripper": "gripper"}


@dataclass(frozen=True)
class AnnotationLimits:
    """What one annotation file may make vlaforge do (CALVIN's own files use a small fraction of each).

    ``max_file_bytes`` bounds the file read; ``max_bytes`` the bytes materialised over the whole load (the
    file, array buffers, the instruction strings handed out — a string referenced N times counts N times);
    ``max_items`` the Python objects handed out (object-array slots, instructions, segments);
    ``max_array_elements`` one array's elements (also for zero-byte dtypes).
    """

    max_file_bytes: int = 1 << 30
    max_bytes: int = 1 << 30
    max_items: int = 10**7
    max_array_elements: int = 10**8


LIMITS = AnnotationLimits()


class _Budget:
    """Work done so far in one load; raises once a limit of :class:`AnnotationLimits` is passed."""

    def __init__(self, limits: AnnotationLimits) -> None:
        self.limits, self.bytes, self.items = limits, 0, 0

    def charge(self, nbytes: int = 0, items: int = 0, *, what: str) -> None:
        self.bytes += nbytes
        self.items += items
        if self.bytes > self.limits.max_bytes:
            raise ValueError(f"{what} takes the data past the budget of {self.limits.max_bytes} bytes for one "
                             f"annotation file")
        if self.items > self.limits.max_items:
            raise ValueError(f"{what} takes the data past the budget of {self.limits.max_items} values for one "
                             f"annotation file")


# numpy's array / dtype / scalar reconstructors, and nothing else, may be named by the pickle (numpy < 2 wrote
# numpy.core.multiarray, numpy 2 writes numpy._core.multiarray).
_ALLOWED = {(m, name): obj for m in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name, obj in (("_reconstruct", _reconstruct), ("scalar", scalar))}
_ALLOWED |= {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
_KINDS = "biufOUS"  # bool, ints, floats, objects, strings; no structured/void dtypes
_DTYPE_CODE = re.compile(r"[<>|=]?[biufOUS]\d{0,9}")
_MAX_NDIM = 32  # numpy's own limit is 64
_ATOMS = (str, bytes, int, float, bool, type(None))  # what a dict key or set item may be (cheap, flat hashes)


def _kind(obj: Any) -> str:
    """A type name for messages: never the value's repr (an untrusted value may be a huge nested structure)."""
    return type(obj).__name__


class _ArraysOnly(pickle._Unpickler):  # the pure-Python unpickler, so every opcode can be checked
    """Rebuilds numpy arrays (of plain numeric, string or object dtypes) and containers; refuses the rest.

    * ``find_class`` admits only numpy's array/dtype/scalar reconstructors, and REDUCE may call only
      ``_reconstruct``, ``dtype`` and ``scalar``, with checked arguments; the opcodes that call a class
      (INST, OBJ, NEWOBJ, NEWOBJ_EX) are refused — numpy's pickles never use them.
    * Every array allocation (``_reconstruct``, BUILD = ``ndarray.__setstate__``) has a checked shape, is
      charged to the :class:`_Budget` before it happens, and an object array's state must hold exactly one
      value per element (numpy trusts the count: a short list leaves dangling pointers).
    * Every BUILD of a dtype must carry exactly the canonical state of that dtype (numpy trusts a dtype's
      pickled itemsize/offsets/flags, so a tampered state could corrupt memory).
    * APPEND(S) only extends lists, SETITEM(S)/ADDITEMS only fill dicts/sets, and dict keys / set items are
      flat values (a key made of shared nested tuples would take exponential time to hash).
    Containers cannot outgrow the file: each entry costs at least one opcode byte.
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BytesIO, budget: _Budget) -> None:
        super().__init__(file)
        self.budget = budget

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and plain containers "
                                     f"are accepted")

    def _checked_shape(self, shape: Any, dtype: np.dtype, what: str) -> int:
        """Element count of an array about to be allocated; charges its bytes (and object slots)."""
        if type(shape) is not tuple or len(shape) > _MAX_NDIM or \
                not all(type(d) is int and 0 <= d < 1 << 63 for d in shape):
            raise pickle.UnpicklingError(f"{what}: refusing an array shape that is not a tuple of at most "
                                         f"{_MAX_NDIM} non-negative ints")
        n = math.prod(shape)
        if n > self.budget.limits.max_array_elements:
            raise pickle.UnpicklingError(f"{what}: refusing an array of {n} elements (at most "
                                         f"{self.budget.limits.max_array_elements})")
        self.budget.charge(n * dtype.itemsize, n if dtype.hasobject else 0, what=f"{what} ({n} elements)")
        return n

    def _checked_dtype(self, obj: Any, what: str) -> np.dtype:
        if not isinstance(obj, np.dtype) or obj.kind not in _KINDS or obj.fields is not None:
            got = f"of kind {obj.kind!r}" if isinstance(obj, np.dtype) else f"given as a {_kind(obj)}"
            raise pickle.UnpicklingError(f"{what}: refusing a dtype {got} (only kinds {_KINDS!r})")
        if obj.itemsize == 0:  # 'S0' / 'U0': any number of elements in no bytes
            raise pickle.UnpicklingError(f"{what}: refusing a dtype of zero-size elements")
        return obj

    def _reduce(self) -> None:
        args, func = self.stack.pop(), self.stack[-1]
        if type(args) is not tuple:
            raise pickle.UnpicklingError(f"REDUCE: arguments of type {_kind(args)}, expected a tuple")
        if func is _reconstruct:
            if len(args) != 3 or args[0] is not np.ndarray or not isinstance(args[2], bytes | str) or \
                    not _DTYPE_CODE.fullmatch(args[2] if isinstance(args[2], str) else args[2].decode("latin-1")):
                raise pickle.UnpicklingError("_reconstruct: expected (numpy.ndarray, shape, type code)")
            self._checked_shape(args[1], np.dtype(args[2]), "_reconstruct")
        elif func is np.dtype:
            if not 1 <= len(args) <= 3 or type(args[0]) is not str or not _DTYPE_CODE.fullmatch(args[0]) or \
                    not all(type(a) is bool for a in args[1:]):
                raise pickle.UnpicklingError("dtype: expected (type code, align, copy), e.g. ('f4', False, True)")
        elif func is scalar:
            if len(args) != 2 or not isinstance(args[1], bytes):
                raise pickle.UnpicklingError("scalar: expected (dtype, bytes)")
            dtype = self._checked_dtype(args[0], "scalar")
            if dtype.hasobject or len(args[1]) != dtype.itemsize:
                raise pickle.UnpicklingError(f"scalar: expected {dtype.itemsize} bytes of a non-object dtype")
            self.budget.charge(dtype.itemsize, 1, what="a numpy scalar")
        else:
            called = f"numpy.{func.__name__}" if func is np.ndarray else f"a {_kind(func)}"
            raise pickle.UnpicklingError(f"refusing to call {called} (only numpy's _reconstruct, dtype and scalar)")
        self.stack[-1] = func(*args)
        if func is np.dtype:
            self._checked_dtype(self.stack[-1], "dtype")

    def _build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            if inst.kind not in _KINDS or type(state) is not tuple or state != inst.__reduce__()[2]:
                raise pickle.UnpicklingError(f"refusing a dtype {inst!r} with a non-canonical pickled state")
        elif type(inst) is np.ndarray:
            if type(state) is not tuple or len(state) not in (4, 5):
                raise pickle.UnpicklingError(f"array state: a {_kind(state)}, expected numpy's 4- or 5-tuple")
            shape, dtype, data = state[-4], state[-3], state[-1]
            dtype = self._checked_dtype(dtype, "array state")
            n = self._checked_shape(shape, dtype, "array state")
            if dtype.hasobject and (type(data) is not list or len(data) != n):
                raise pickle.UnpicklingError(f"array state: an object array of {n} elements needs a list of {n} "
                                             f"values, got a {_kind(data)}"
                                             + (f" of {len(data)}" if type(data) is list else ""))
            if not dtype.hasobject and (not isinstance(data, bytes | bytearray) or len(data) != n * dtype.itemsize):
                raise pickle.UnpicklingError(f"array state: {n} elements of {dtype} need {n * dtype.itemsize} "
                                             f"bytes, got a {_kind(data)}")
        else:
            raise pickle.UnpicklingError(f"refusing to set the state of a {_kind(inst)}")
        pickle._Unpickler.load_build(self)

    def _refuse_call(self) -> None:
        raise pickle.UnpicklingError("refusing an opcode that instantiates a class (numpy's pickles never use it)")

    def _target(self, expected: type, what: str) -> Any:
        target = self.stack[-1]
        if type(target) is not expected:
            raise pickle.UnpicklingError(f"{what} into a {_kind(target)}, expected a {expected.__name__}")
        return target

    @staticmethod
    def _pairs(items: list[Any]) -> dict[Any, Any]:
        if len(items) % 2:
            raise pickle.UnpicklingError(f"{len(items)} values for a dict's keys and values")
        _ArraysOnly._atoms(items[::2], "dict key")
        return dict(zip(items[::2], items[1::2], strict=True))

    @staticmethod
    def _atoms(keys: Sequence[Any], what: str) -> None:
        bad = next((k for k in keys if not isinstance(k, _ATOMS)), None)
        if bad is not None:
            raise pickle.UnpicklingError(f"{what}: refusing a {_kind(bad)} (only str/bytes/numbers/None)")

    def _append(self) -> None:
        value = self.stack.pop()
        self._target(list, "APPEND").append(value)

    def _appends(self) -> None:
        items = self.pop_mark()
        self._target(list, "APPENDS").extend(items)

    def _setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._atoms([key], "dict key")
        self._target(dict, "SETITEM")[key] = value

    def _setitems(self) -> None:
        items = self._pairs(self.pop_mark())
        self._target(dict, "SETITEMS").update(items)

    def _dict(self) -> None:
        self.append(self._pairs(self.pop_mark()))

    def _additems(self) -> None:
        items = self.pop_mark()
        self._atoms(items, "set item")
        self._target(set, "ADDITEMS").update(items)

    def _frozenset(self) -> None:
        items = self.pop_mark()
        self._atoms(items, "set item")
        self.append(frozenset(items))

    dispatch[pickle.REDUCE[0]] = _reduce
    dispatch[pickle.BUILD[0]] = _build
    for _op in (pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.NEWOBJ_EX):
        dispatch[_op[0]] = _refuse_call
    dispatch[pickle.APPEND[0]] = _append
    dispatch[pickle.APPENDS[0]] = _appends
    dispatch[pickle.SETITEM[0]] = _setitem
    dispatch[pickle.SETITEMS[0]] = _setitems
    dispatch[pickle.DICT[0]] = _dict
    dispatch[pickle.ADDITEMS[0]] = _additems
    dispatch[pickle.FROZENSET[0]] = _frozenset
    del _op


_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_bounded(path: Path, limits: AnnotationLimits) -> bytes:
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise ValueError(f"{size} bytes, more than the {limits.max_file_bytes} an annotation file may have")
    return path.read_bytes()


def load_object_npy(path: Path, limits: AnnotationLimits = LIMITS, budget: _Budget | None = None) -> Any:
    """Read an ``.npy`` holding a pickled object (array) with the restricted, budgeted unpickler.

    Raises ``pickle.UnpicklingError`` / ``ValueError`` (and whatever a malformed stream raises: ``EOFError``,
    ``struct.error`` ...); :func:`read_annotations` turns all of them into one line naming the file.
    """
    budget = budget or _Budget(limits)
    data = _read_bounded(path, limits)
    budget.charge(len(data), what="the file")
    f = io.BytesIO(data)  # reads past the end come back short instead of allocating a declared length
    version = np.lib.format.read_magic(f)
    if version not in _HEADERS:
        raise ValueError(f"unsupported .npy format version {version}")
    _, _, dtype = _HEADERS[version](f)
    if not dtype.hasobject:
        raise ValueError(f"expected a pickled object (dtype object), got a {dtype} array")
    obj = _ArraysOnly(f, budget).load()
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        return obj.item()
    return obj


@dataclass(frozen=True)
class Annotations:
    """The parts of CALVIN's language annotations vlaforge uses: one instruction per segment."""

    instructions: list[str]  # language.ann
    segments: list[tuple[int, int]]  # info.indx: inclusive (start, end) frame ids
    tasks: list[str] | None = None  # language.task (CALVIN's task name per segment), when the file has it
    path: Path | None = None  # the file they were read from

    def to_json(self) -> dict[str, Any]:
        language: dict[str, Any] = {"ann": self.instructions}
        if self.tasks is not None:
            language["task"] = self.tasks
        return {"format": JSON_FORMAT, "version": JSON_VERSION, "language": language,
                "info": {"indx": [list(s) for s in self.segments]}}


def _field(obj: Any, *keys: str) -> Any:
    for i, key in enumerate(keys):
        if type(obj) is not dict:
            where = ".".join(keys[:i]) or "the top level"
            raise ValueError(f"{where} is a {_kind(obj)}, expected a dict with {key!r}")
        if key not in obj:
            raise ValueError(f"no {'.'.join(keys[: i + 1])!r} (has {len(obj)} keys)")
        obj = obj[key]
    return obj


def _values(obj: Any, name: str, budget: _Budget) -> list[Any]:
    """A list, tuple or array as a list, charged one item per value (shared references count each time)."""
    if type(obj) not in (list, tuple) and not (isinstance(obj, np.ndarray) and obj.ndim >= 1):
        raise ValueError(f"{name} is a {_kind(obj)}, expected a list")
    budget.charge(items=len(obj), what=name)  # before the values are materialised
    return list(obj)  # rows of a 2-D array are arrays; object slots are the objects themselves


def _strings(obj: Any, name: str, budget: _Budget) -> list[str]:
    out = _values(obj, name, budget)
    for i, s in enumerate(out):
        if not isinstance(s, str):  # never str() of anything else: it may be a huge nested structure
            raise ValueError(f"{name}[{i}] is a {_kind(s)}, expected a string")
        budget.charge(len(s), what=name)
    return [str(s) for s in out]  # np.str_ -> str


def _segments(obj: Any, name: str, budget: _Budget) -> list[tuple[int, int]]:
    out = []
    for i, pair in enumerate(_values(obj, name, budget)):
        pair = _values(pair, f"{name}[{i}]", budget)
        if len(pair) != 2 or not all(isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)
                                     and 0 <= v < 1 << 63 for v in pair):
            raise ValueError(f"{name}[{i}] must be a (start, end) pair of non-negative frame ids")
        out.append((int(pair[0]), int(pair[1])))
    return out


def _annotations(obj: Any, budget: _Budget, path: Path) -> Annotations:
    instructions = _strings(_field(obj, "language", "ann"), "language.ann", budget)
    segments = _segments(_field(obj, "info", "indx"), "info.indx", budget)
    language = _field(obj, "language")
    tasks = _strings(language["task"], "language.task", budget) if "task" in language else None
    for name, values in (("language.ann", instructions), ("language.task", tasks)):
        if values is not None and len(values) != len(segments):
            raise ValueError(f"{len(values)} {name} entries for {len(segments)} segments (info.indx)")
    return Annotations(instructions, segments, tasks, path)


def _from_json(path: Path, limits: AnnotationLimits) -> Annotations:
    budget = _Budget(limits)
    data = _read_bounded(path, limits)
    budget.charge(len(data), what="the file")
    obj = json.loads(data)
    if type(obj) is not dict or obj.get("format") != JSON_FORMAT or obj.get("version") != JSON_VERSION:
        raise ValueError(f"expected a JSON object with \"format\": \"{JSON_FORMAT}\", \"version\": {JSON_VERSION} "
                         f"(written by vlaforge convert calvin-annotations)")
    return _annotations(obj, budget, path)


_MALFORMED = (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError,
              OverflowError, struct.error, MemoryError, RecursionError)


def read_annotations(root: str | Path, limits: AnnotationLimits = LIMITS, *, prefer_json: bool = True) -> Annotations:
    """A CALVIN split's language annotations: ``auto_lang_ann.json`` when present, else the ``.npy``.

    Any problem — a refused or malformed pickle, a limit passed, running out of memory — raises one
    :class:`~vlaforge.data.convert.SourceError` line naming the file.
    """
    root = Path(root)
    path, npy = root / ANNOTATIONS_JSON, root / ANNOTATIONS
    if not (prefer_json and path.exists()):
        path = npy
        if not path.exists():
            raise FileNotFoundError(f"calvin: {npy} not found (point SRC at a split directory such as "
                                    f"task_D_D/training)")
    try:
        if path.suffix == ".json":
            return _from_json(path, limits)
        budget = _Budget(limits)
        ann = _annotations(load_object_npy(path, limits, budget), budget, path)
    except _MALFORMED as e:
        problem = {MemoryError: "ran out of memory", RecursionError: "nested too deeply"}.get(type(e)) or \
            (str(e).strip().splitlines() or [""])[0][:300]
        raise SourceError("-", path, f"not a CALVIN language annotation file: {type(e).__name__}: {problem}"
                          ) from None
    if prefer_json:
        log.warning("calvin: read %s with vlaforge's restricted unpickler; run `vlaforge convert "
                    "calvin-annotations %s` once to read JSON instead", path, root)
    return ann


def convert_annotations(src: str | Path, *, overwrite: bool = False,
                        limits: AnnotationLimits = LIMITS) -> list[tuple[Path, Annotations]]:
    """Write ``auto_lang_ann.json`` next to each ``auto_lang_ann.npy`` of ``src`` (a split directory, or a
    dataset directory holding splits such as ``training/`` and ``validation/``); returns what was written.

    The JSON holds exactly what :class:`CalvinSource` reads (instructions, tasks, segments); the ``.npy`` is
    left in place. Each file is written to ``NAME.partial`` and renamed, so a failure leaves no half file.
    """
    src = Path(src)
    if src.name == Path(ANNOTATIONS).name and src.is_file():  # the .npy itself
        src = src.parent.parent
    roots = [src] if (src / ANNOTATIONS).exists() else sorted(p.parent.parent for p in src.glob(f"*/{ANNOTATIONS}"))
    if not roots:
        raise FileNotFoundError(f"calvin-annotations: no {ANNOTATIONS} in {src} or its subdirectories "
                                f"(point it at a CALVIN dataset such as task_D_D, or one of its splits)")
    for root in roots:  # refuse before writing anything
        if (root / ANNOTATIONS_JSON).exists() and not overwrite:
            raise FileExistsError(f"calvin-annotations: {root / ANNOTATIONS_JSON} exists (--overwrite to replace)")
    written = []
    for root in roots:
        ann = read_annotations(root, limits, prefer_json=False)
        out = root / ANNOTATIONS_JSON
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(json.dumps(ann.to_json(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, out)
        written.append((out, ann))
    return written


@SOURCES.register("calvin")
class CalvinSource:
    """Language-annotated segments of a CALVIN split as episodes.

    Annotations come from ``auto_lang_ann.json`` when present (``vlaforge convert calvin-annotations``),
    else from ``auto_lang_ann.npy`` (see :func:`read_annotations`).

    Options: ``cameras`` (npz key -> camera name; default static + gripper), ``state_key`` (``robot_obs``),
    ``action_key`` (``rel_actions``, CALVIN's relative actions; ``actions`` for absolute), ``fps`` (30).
    """

    def __init__(self, src: str | Path, *, cameras: dict[str, str] | Sequence[str] | None = None,
                 state_key: str = "robot_obs", action_key: str = "rel_actions", fps: int = 30,
                 robot_type: str | None = "franka") -> None:
        self.root = Path(src)
        ann = read_annotations(self.root)
        self.instructions, self.segments, self.annotations_path = ann.instructions, ann.segments, ann.path
        if cameras is None:
            cameras = DEFAULT_CAMERAS
        if isinstance(cameras, str):
            cameras = [cameras]
        self.cameras = dict(cameras) if isinstance(cameras, dict) else {c: c for c in cameras}
        self.state_key, self.action_key = state_key, action_key
        self.fps, self.robot_type = int(fps), robot_type
        first = self._frame(0, self.segments[0][0]) if self.segments else None
        if first is None:
            raise SourceError("-", self.annotations_path, "no annotated segments")
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
            raise SourceError(i, self.annotations_path, f"segment ({start}, {end}) ends before it starts")
        rows = [self._frame(i, t) for t in range(start, end + 1)]
        frames = {image_key(ours): np.stack([r[k] for r in rows]).astype(np.uint8)
                  for k, ours in self.cameras.items()}
        frames[OBS_STATE] = np.stack([r[self.state_key].reshape(-1) for r in rows]).astype(np.float32)
        frames[ACTION] = np.stack([r[self.action_key].reshape(-1) for r in rows]).astype(np.float32)
        return Episode(frames, self.instructions[i], f"{self.frame_path(start)}..{self.frame_path(end).name}")

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.read(i)
