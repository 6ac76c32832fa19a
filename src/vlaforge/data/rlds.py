"""RLDS / Open X-Embodiment datasets as an episode :class:`~vlaforge.data.convert.Source` (``vlaforge convert rlds``).

On-disk layout, as TensorFlow Datasets writes it (no TensorFlow is needed to read it)::

    <name>/<version>/dataset_info.json     name, fileFormat, splits[{name, shardLengths, filepathTemplate}]
    <name>/<version>/features.json         the FeatureConnector tree (FeaturesDict / Dataset / Tensor / Image / Text)
    <name>/<version>/<name>-<split>.tfrecord-00000-of-0000N

Every record is one episode: a ``tf.train.Example`` whose keys flatten the feature tree with ``/``. The per-step
features of the ``steps`` Dataset are stored concatenated over the T steps: ``steps/observation/state`` is a
float list of T * 7 values reshaped by the shape in ``features.json``, ``steps/is_first`` an int64 list of T,
``steps/observation/image_0`` T encoded JPEG/PNG images (decoded with PIL), ``steps/language_instruction`` T
strings; ``Tensor(encoding="bytes"|"zlib")`` features hold one raw (optionally zlib-compressed) buffer per step.
Episode-level features (``episode_metadata/...``) are not used.

Point the source at the version directory (``bridge_dataset/1.0.0``) or at its parent (the highest version is
used). Two ways to say which fields become the canonical ``observation.images.<camera>``, ``observation.state``
and ``action``:

* ``standardize="<name>"``: an OXE-style per-dataset transform from :data:`TRANSFORMS` (``bridge``,
  ``bridge_oxe``, ``fractal``) that fixes cameras, state, action, instruction, fps and robot type, so that
  datasets of one mixture share cameras and dims (see :data:`MIXTURES`).
* otherwise the options: ``cameras`` (RLDS observation image key -> camera name), ``state_keys`` (concatenated),
  ``action_key`` (one key, or several concatenated), ``instruction_key`` and ``fps`` (RLDS does not record it).
  Keys may be given relative to ``observation/`` (``"state"``) or in full (``"observation/state"``).

Reference behaviour: OpenVLA's ``prismatic/vla/datasets/rlds/oxe`` (``transforms.py``, ``configs.py``,
``mixtures.py``), itself derived from Octo's OXE code.

* ``bridge`` = ``bridge_orig_dataset_transform`` for the BridgeData V2 release (``bridge_dataset``): the first
  step (all-zero action) is dropped; the gripper command ``action[:, 6]`` is binarized (> 0.95 open = 1,
  < 0.05 closed = 0, in-between values take the next decided value, scanning back from the last raw value,
  exactly as ``binarize_gripper_actions``); xyz/rpy are relabeled from the reached state,
  ``state[t+1, :6] - state[t, :6]`` (``relabel_bridge_actions``), which drops the last step. The state is
  OpenVLA's 8-d POS_EULER encoding ``[state[:6], 0 (pad), state[6]]``; camera ``image_0`` -> ``primary``;
  instruction ``language_instruction``; 5 fps; robot ``widowx``.
* ``bridge_oxe`` = ``bridge_oxe_dataset_transform`` for the Open X-Embodiment copy of Bridge (dataset name
  ``bridge``; dict action): as ``bridge`` but the gripper is the boolean ``action/open_gripper`` (not
  binarized), the camera is ``image`` and the instruction ``observation/natural_language_instruction``. As in
  OpenVLA, the relabeled action ignores ``world_vector`` / ``rotation_delta``.
* ``fractal`` = ``rt1_dataset_transform`` for ``fractal20220817_data`` (RT-1): action = ``world_vector`` (3),
  ``rotation_delta`` (3) and ``rel2abs_gripper_actions(gripper_closedness_action)``: the relative command
  (+1 close, -1 open, |x| <= 0.1 no change) becomes an absolute 1 = open / 0 = closed, the state before the
  first command being the opposite of that command (open when there is none). State = OpenVLA's
  ``state_obs_keys`` ``base_pose_tool_reached`` (xyz + quaternion) + ``gripper_closed`` (8-d POS_QUAT);
  camera ``image`` -> ``primary``; instruction ``observation/natural_language_instruction``; 3 fps; robot
  ``google_robot``.

Where this differs from OpenVLA: transforms run in NumPy on one decoded episode (not ``tf.data`` graphs);
episodes a transform leaves empty (fewer than 3 Bridge steps) are skipped with a warning rather than failing the
conversion; fps is ours (OpenVLA records none; 5 Hz Bridge and 3 Hz RT-1 as the OXE dataset list gives); only
the primary camera is kept by default (pass ``cameras=`` for ``image_1`` ...); images are kept at their stored
size (resizing belongs to the policy's image processor); no action/state normalization, chunking or
``absolute_action_mask`` happens here (the LeRobot writer computes statistics and the training reader chunks);
the relabeled rpy deltas are not wrapped to [-pi, pi), as in OpenVLA.
"""

from __future__ import annotations

import difflib
import io
import json
import re
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlaforge.data.convert import SOURCES, Episode, SourceError
from vlaforge.data.tfrecord import FeatureValue, TFRecordError, count_records, read_examples
from vlaforge.types import ACTION, OBS_STATE, FeatureSpec, image_key

STEPS = "steps"
OBSERVATION = "observation"
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
INSTRUCTION_KEYS = ("language_instruction", "observation/natural_language_instruction")


# =============================================================================================== features.json
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


# ================================================================================================ steps access
def _resolve(key: str, schema: dict[str, Field]) -> str:
    """``"state"`` -> ``"observation/state"`` when that is the step field meant; full keys are kept."""
    key = key.removeprefix(f"{STEPS}/")
    if key in schema:
        return key
    if f"{OBSERVATION}/{key}" in schema:
        return f"{OBSERVATION}/{key}"
    children = sorted(k for k in schema if k.startswith(key + "/"))
    if children:
        raise KeyError(f"'{key}' is a dict of {children}; name its fields")
    short = {k.removeprefix(f"{OBSERVATION}/"): k for k in schema}  # "image_0" -> "observation/image_0"
    close = difflib.get_close_matches(key, [*schema, *short], n=3, cutoff=0.5)
    close = list(dict.fromkeys(short.get(c, c) for c in close))
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise KeyError(f"no step field '{key}' in features.json.{hint} Step fields: {sorted(schema)}")


def _decode_text(values: list[bytes]) -> np.ndarray:
    return np.array([v.decode("utf-8", errors="replace") for v in values], dtype=object)


class Steps:
    """The steps of one episode, decoded lazily field by field (images only for the steps asked for).

    ``steps["observation/state"]`` is a (T, *shape) array of the declared dtype (floats of at most 32 bits as
    float32: tf.train.Example stores every float as float32), a (T,) object array of str for strings;
    ``steps.images(key, idx)`` is uint8 (len(idx), H, W, 3).
    """

    def __init__(self, example: dict[str, FeatureValue], schema: dict[str, Field], where: str) -> None:
        self._ex, self._schema, self.where = example, schema, where
        self._cache: dict[str, np.ndarray] = {}
        self.length = self._infer_length()

    def __len__(self) -> int:
        return self.length

    def _raw(self, key: str) -> FeatureValue:
        value = self._ex.get(f"{STEPS}/{key}")
        if value is None:
            raise ValueError(f"field '{STEPS}/{key}' is declared in features.json but missing from the record")
        return value

    def _infer_length(self) -> int:
        for key in ("is_first", *sorted(self._schema)):
            f = self._schema.get(key)
            if f is None or f.kind == "unsupported" or None in f.shape or f"{STEPS}/{key}" not in self._ex:
                continue
            n = len(self._raw(key))
            per_step = f.size if f.kind == "tensor" and f.encoding == "none" else 1
            if per_step == 0:
                continue
            if n % per_step:
                raise ValueError(f"field '{STEPS}/{key}': {n} values is not a whole number of steps of shape "
                                 f"{f.shape}")
            return n // per_step
        raise ValueError(f"cannot tell the number of steps: no fixed-shape step field in {sorted(self._ex)[:8]}")

    def field(self, key: str) -> Field:
        return self._schema[key]

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = self._decode(key)
        return self._cache[key]

    def __contains__(self, key: str) -> bool:
        return key in self._schema

    def _decode(self, key: str) -> np.ndarray:
        f = self._schema.get(key)
        if f is None:
            raise KeyError(f"no step field '{key}'")
        if f.kind == "image":
            return self.images(key, np.arange(self.length))
        raw = self._raw(key)
        n = self.length
        if f.kind == "text" or (f.kind == "tensor" and f.dtype == "string" and f.encoding == "none"):
            if f.size != 1:
                raise ValueError(f"field '{STEPS}/{key}': string tensors of shape {f.shape} are not supported")
            if len(raw) != n:
                raise ValueError(f"field '{STEPS}/{key}': expected {n} strings (one per step), got {len(raw)}")
            return _decode_text(raw)  # type: ignore[arg-type]
        if f.kind != "tensor":
            raise ValueError(f"field '{STEPS}/{key}': {f.cls or f.kind} features are not supported")
        if None in f.shape:
            raise ValueError(f"field '{STEPS}/{key}': shape {f.shape} has unknown dimensions (stored ragged or "
                             f"with its shape alongside); not supported")
        dtype = np.dtype(f.dtype)
        if f.encoding in ("bytes", "zlib"):
            if len(raw) != n:
                raise ValueError(f"field '{STEPS}/{key}': expected {n} encoded buffers (one per step), got {len(raw)}")
            try:
                bufs = [zlib.decompress(b) if f.encoding == "zlib" else b for b in raw]  # type: ignore[arg-type]
            except zlib.error as e:
                raise ValueError(f"field '{STEPS}/{key}': corrupt zlib data ({e})") from None
            want = f.size * dtype.itemsize
            bad = [i for i, b in enumerate(bufs) if len(b) != want]
            if bad:
                raise ValueError(f"field '{STEPS}/{key}': step {bad[0]} holds {len(bufs[bad[0]])} bytes, expected "
                                 f"{want} ({f.dtype} {f.shape})")
            arr = np.frombuffer(b"".join(bufs), dtype=dtype.newbyteorder("<")).astype(dtype)
        elif f.encoding == "none":
            arr = np.asarray(raw)
            if arr.size != n * f.size:
                raise ValueError(f"field '{STEPS}/{key}': expected {n} steps x {f.shape} = {n * f.size} values, "
                                 f"got {arr.size}")
            if dtype.kind == "f":
                dtype = np.dtype(np.float32) if dtype.itemsize <= 4 else dtype  # stored as float32 anyway
            arr = arr.astype(dtype)
        else:
            raise ValueError(f"field '{STEPS}/{key}': unknown tensor encoding '{f.encoding}'")
        return arr.reshape(n, *f.shape)

    def images(self, key: str, idx: np.ndarray) -> np.ndarray:
        """Decoded RGB images of the steps ``idx``, uint8 (len(idx), H, W, 3)."""
        f = self._schema[key]
        raw = self._raw(key)
        if len(raw) != self.length:
            raise ValueError(f"field '{STEPS}/{key}': expected {self.length} images (one per step), got {len(raw)}")
        out = []
        for i in idx:
            try:
                img = np.asarray(Image.open(io.BytesIO(raw[int(i)])).convert("RGB"))  # type: ignore[arg-type]
            except (OSError, ValueError) as e:
                raise ValueError(f"field '{STEPS}/{key}': step {int(i)}: cannot decode {f.encoding} image ({e})") \
                    from None
            h, w = f.shape[:2]
            if (h is not None and img.shape[0] != h) or (w is not None and img.shape[1] != w):
                raise ValueError(f"field '{STEPS}/{key}': step {int(i)}: image is {img.shape[:2]}, features.json "
                                 f"declares {f.shape[:2]}")
            out.append(img)
        if not out:
            return np.zeros((0, *(d or 0 for d in f.shape[:2]), 3), np.uint8)
        return np.stack(out)


# ============================================================================================= standardization
@dataclass
class Standardized:
    """What a transform makes of one episode: T' frames, and the RLDS steps they come from."""

    state: np.ndarray | None  # (T', Ds) float32, or None when the source has no state
    action: np.ndarray  # (T', Da) float32
    steps: np.ndarray  # (T',) int: the RLDS step of each frame (images and instruction are taken there)


@dataclass(frozen=True)
class Standardization:
    """An OXE-style per-dataset transform: which RLDS fields feed the canonical features, and how."""

    name: str
    fn: Callable[[Steps], Standardized]
    requires: tuple[str, ...]  # step fields the transform reads (checked against features.json up front)
    cameras: dict[str, str]  # RLDS observation image key -> camera name
    instruction_key: str
    fps: int
    robot_type: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    datasets: tuple[str, ...] = ()  # RLDS / OXE dataset names it applies to
    doc: str = ""


TRANSFORMS: dict[str, Standardization] = {}


def register_transform(s: Standardization) -> Standardization:
    """Add a transform to :data:`TRANSFORMS` (names must be unique)."""
    if s.name in TRANSFORMS and TRANSFORMS[s.name] is not s:
        raise ValueError(f"standardization transform {s.name!r} is already registered")
    TRANSFORMS[s.name] = s
    return s


def _did_you_mean(kind: str, name: str, known: Sequence[str]) -> KeyError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return KeyError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known))}")


def get_transform(name: str) -> Standardization:
    """The registered transform ``name``; unknown names raise with the closest known ones."""
    if name not in TRANSFORMS:
        raise _did_you_mean("standardization transform", name, list(TRANSFORMS))
    return TRANSFORMS[name]


def transform_for_dataset(dataset: str) -> str | None:
    """The transform for an RLDS / OXE dataset name (``"fractal20220817_data"`` -> ``"fractal"``; the OXE copy of
    Bridge, named ``"bridge"``, -> ``"bridge_oxe"``)."""
    for s in TRANSFORMS.values():
        if dataset in s.datasets:
            return s.name
    return dataset if dataset in TRANSFORMS else None


def binarize_gripper(actions: np.ndarray) -> np.ndarray:
    """Continuous gripper command -> 1 (open, > 0.95) / 0 (closed, < 0.05); an in-between value takes the next
    decided one, and trailing in-between values keep the last raw value (OpenVLA/Octo ``binarize_gripper_actions``)."""
    a = np.asarray(actions, dtype=np.float32).reshape(-1)
    out = np.empty_like(a)
    if not len(a):
        return out
    carry = a[-1]
    for i in range(len(a) - 1, -1, -1):
        if a[i] > 0.95:
            carry = np.float32(1.0)
        elif a[i] < 0.05:
            carry = np.float32(0.0)
        out[i] = carry
    return out


def rel2abs_gripper(actions: np.ndarray) -> np.ndarray:
    """Relative gripper command (+1 close, -1 open, |x| <= 0.1 none) -> absolute 1 = open / 0 = closed. Before the
    first command the gripper is taken to be in the opposite state; open when no command is ever given
    (OpenVLA/Octo ``rel2abs_gripper_actions``)."""
    a = np.asarray(actions, dtype=np.float32).reshape(-1)
    cmd = np.where(a < -0.1, 1, np.where(a > 0.1, -1, 0))  # +1 = open, -1 = close
    nz = np.flatnonzero(cmd)
    state = -cmd[nz[0]] if len(nz) else 1
    out = np.empty(len(a), np.float32)
    for i, c in enumerate(cmd):
        state = c if c else state
        out[i] = state / 2 + 0.5
    return out


def _bridge(steps: Steps) -> Standardized:
    if len(steps) < 3:  # drop-first + relabel (drop-last) leave nothing
        return _empty_bridge()
    state = steps["observation/state"][1:].astype(np.float32)
    action = steps["action"][1:].astype(np.float32)
    if state.shape[1] != 7 or action.shape[1] != 7:
        raise ValueError(f"bridge: expected 7-d 'observation/state' and 'action', got {state.shape[1]} and "
                         f"{action.shape[1]}")
    return _bridge_relabel(state, binarize_gripper(action[:, 6]))


def _bridge_oxe(steps: Steps) -> Standardized:
    if len(steps) < 3:
        return _empty_bridge()
    state = steps["observation/state"][1:].astype(np.float32)
    return _bridge_relabel(state, steps["action/open_gripper"][1:].reshape(-1).astype(np.float32))


def _empty_bridge() -> Standardized:
    return Standardized(np.zeros((0, 8), np.float32), np.zeros((0, 7), np.float32), np.zeros(0, np.int64))


def _bridge_relabel(state: np.ndarray, gripper: np.ndarray) -> Standardized:
    """Shared tail of both Bridge layouts (steps already without the first): action = next state - state for
    xyz/rpy plus the gripper command, state = [xyz, rpy, 0 pad, gripper]; the last step has no successor."""
    move = state[1:, :6] - state[:-1, :6]
    new_action = np.concatenate([move, gripper[:-1, None]], axis=1)
    s = state[:-1]
    new_state = np.concatenate([s[:, :6], np.zeros((len(s), 1), np.float32), s[:, 6:7]], axis=1)
    return Standardized(new_state, new_action, np.arange(1, len(state)))


def _fractal(steps: Steps) -> Standardized:
    gripper = rel2abs_gripper(steps["action/gripper_closedness_action"][:, 0])
    action = np.concatenate([steps["action/world_vector"], steps["action/rotation_delta"], gripper[:, None]], axis=1)
    state = np.concatenate([steps["observation/base_pose_tool_reached"], steps["observation/gripper_closed"]],
                           axis=1)
    return Standardized(state.astype(np.float32), action.astype(np.float32), np.arange(len(steps)))


DELTA_EEF = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")

register_transform(Standardization(
    name="bridge", fn=_bridge, requires=("observation/state", "action", "observation/image_0", "language_instruction"),
    cameras={"image_0": "primary"}, instruction_key="language_instruction", fps=5, robot_type="widowx",
    state_names=("x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper"), action_names=DELTA_EEF,
    datasets=("bridge_dataset", "bridge_orig"),
    doc="BridgeData V2 (WidowX), as OpenVLA's bridge_orig_dataset_transform"))

register_transform(Standardization(
    name="bridge_oxe", fn=_bridge_oxe,
    requires=("observation/state", "action/open_gripper", "observation/image",
              "observation/natural_language_instruction"),
    cameras={"image": "primary"}, instruction_key="observation/natural_language_instruction", fps=5,
    robot_type="widowx", state_names=("x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper"),
    action_names=DELTA_EEF, datasets=("bridge", "bridge_oxe"),
    doc="the Open X-Embodiment copy of Bridge, as OpenVLA's bridge_oxe_dataset_transform"))

register_transform(Standardization(
    name="fractal", fn=_fractal,
    requires=("action/world_vector", "action/rotation_delta", "action/gripper_closedness_action",
              "observation/base_pose_tool_reached", "observation/gripper_closed", "observation/image",
              "observation/natural_language_instruction"),
    cameras={"image": "primary"}, instruction_key="observation/natural_language_instruction", fps=3,
    robot_type="google_robot",
    state_names=("x", "y", "z", "quat_0", "quat_1", "quat_2", "quat_3", "gripper_closed"), action_names=DELTA_EEF,
    datasets=("fractal20220817_data", "rt_1", "rt1"),
    doc="RT-1 / fractal20220817_data (Google robot), as OpenVLA's rt1_dataset_transform"))


# ==================================================================================================== mixtures
# name -> [(RLDS dataset name, sampling weight)], as OpenVLA's OXE_NAMED_MIXTURES (weights are relative; the
# sampler normalizes them). Only datasets with a transform above are listed.
MIXTURES: dict[str, list[tuple[str, float]]] = {
    "bridge": [("bridge_dataset", 1.0)],
    "rt_1": [("fractal20220817_data", 1.0)],
    "bridge_fractal": [("bridge_dataset", 1.0), ("fractal20220817_data", 1.0)],  # OpenVLA's "bridge_rt_1"
    "bridge_rt_1": [("bridge_dataset", 1.0), ("fractal20220817_data", 1.0)],
    # the fractal weight OpenVLA uses in its RT-X / magic-soup mixtures, restricted to these two datasets
    "bridge_fractal_rtx": [("fractal20220817_data", 0.54087122203), ("bridge_dataset", 1.0)],
}


def mixture(name: str) -> list[tuple[str, float]]:
    """The named mixture's ``[(dataset name, weight)]``; unknown names raise with the closest known ones."""
    if name not in MIXTURES:
        raise _did_you_mean("mixture", name, list(MIXTURES))
    return list(MIXTURES[name])


# ====================================================================================================== source
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

