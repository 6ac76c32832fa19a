"""The wire protocol of ``vlaforge serve``: openpi-compatible msgpack-numpy frames, the observation schema,
request parsing and validation. numpy + msgpack only (no torch), so robot-side clients stay light.

Encoding (the same bytes as openpi-client's ``msgpack_numpy``; the code is our own):

* an ``np.ndarray`` travels as a map ``{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str,
  b"shape": [dims]}``; a numpy scalar as ``{b"__npgeneric__": True, b"data": value, b"dtype": dtype.str}``;
* everything else is plain msgpack (maps, lists, str, bytes, numbers); never pickle, never object arrays.

Decoding untrusted frames is strict: only bool / int / uint / float dtypes, a shape that matches the byte
count, at most 8 dimensions; arrays come back writable and in native byte order. The server also bounds the work
per frame before looking at its contents (:class:`FrameLimits`): keys per map, items in the whole frame, string
length; a frame over a limit is refused as soon as msgpack meets it, with one problem naming the limit.

Frames (client -> server; the server first sends its metadata, see ``vlaforge.serve.server``):

* one observation (what openpi's ``WebsocketClientPolicy.infer`` sends): ``{"observation.images.<cam>": uint8
  (H, W, 3), "observation.state": (Ds,), "task": str}``; aliases ``prompt`` / ``instruction`` -> ``task``,
  ``state`` -> ``observation.state``, ``images: {cam: array}`` -> ``observation.images.<cam>``.
  Reply ``{"actions": (H, Da), "server_timing": {...}}``.
* a batch: ``{"observations": [obs, ...]}``; reply ``{"actions": (B, H, Da), ...}``, run as one policy call.
* either may carry ``seed`` (int) or ``rng_state`` (bytes from a previous reply): the request then runs as its
  own policy call with its own generator and the reply carries the generator's next ``rng_state``
  (reproducible sampling, see ``RemotePolicy``).

Errors come back as a text frame (openpi's client raises on ``str``) listing every problem as
``field: expected ..., got ...``.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from vlaforge.types import OBS_IMAGES, OBS_IS_PAD, OBS_STATE, TASK, RobotSpec, image_key

PROTOCOL = "vlaforge-serve"
PROTOCOL_VERSION = 1
MAX_NDIM = 8
MAX_TASK_CHARS = 4096
MAX_STR_BYTES = 4 * MAX_TASK_CHARS  # a UTF-8 instruction of MAX_TASK_CHARS characters fits
MAX_PROBLEMS = 10  # problems an error message lists (the rest are counted)
MAX_QUOTE = 300  # characters of a value or a message that an error quotes
MAX_RNG_STATE_BYTES = 1 << 16
MAX_IMAGE_SIDE = 4096  # a camera of any size (schema side 0) still has bounded sides
EXAMPLE_SIDE = 224  # the example observation's side for such a camera
SEED_KEY, RNG_STATE_KEY, BATCH_KEY = "seed", "rng_state", "observations"
ALIASES = {"prompt": TASK, "instruction": TASK, "state": OBS_STATE}
_ALLOWED_KINDS = "biuf"  # bool, int, uint, float; never object / void / complex / strings


# ----------------------------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: which field, what was expected, what came."""

    field: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{clip(self.field, 80)}: expected {clip(self.expected)}, got {clip(self.actual)}"


def clip(text: str, limit: int = MAX_QUOTE) -> str:
    """``text`` cut to ``limit`` characters (an error never quotes more of what a client sent)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def summarize_keys(keys: list[Any], shown: int = 3) -> str:
    """``"100000 unknown keys, e.g. a, b, c"``: a count and the first few, never the whole list."""
    names = ", ".join(clip(str(k), 40) for k in keys[:shown])
    return f"{len(keys)} unknown key{'s' if len(keys) != 1 else ''}, e.g. {names}"


class ProtocolError(ValueError):
    """A request the server refuses; ``problems`` lists every field at fault (the message shows the first
    :data:`MAX_PROBLEMS`, each clipped, and counts the rest)."""

    def __init__(self, problems: list[Problem], title: str = "invalid request") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems[:MAX_PROBLEMS])
        if len(problems) > MAX_PROBLEMS:
            lines += f"\n  - ... and {len(problems) - MAX_PROBLEMS} more"
        n = len(problems)
        super().__init__(f"{title} ({n} problem{'s' if n != 1 else ''}):\n{lines}")

    @classmethod
    def one(cls, field: str, expected: str, actual: str, title: str = "invalid request") -> ProtocolError:
        return cls([Problem(field, expected, actual)], title)

    def to_json(self) -> dict[str, Any]:
        return {"error": str(self), "problems": [{k: clip(v) for k, v in p.__dict__.items()}
                                                 for p in self.problems[:MAX_PROBLEMS]]}


def describe(value: Any) -> str:
    """A short description of a value for error messages (never its full contents)."""
    if isinstance(value, np.ndarray):
        return f"array of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (bytes, bytearray)):
        return f"bytes of length {len(value)}"
    if isinstance(value, str):
        return f"str {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, (list, tuple)):
        return f"list of length {len(value)}"
    if isinstance(value, dict):
        keys = [clip(str(k), 40) for k in list(value)[:8]]
        return f"map of {len(value)} keys {keys}" if len(value) > 8 else f"map with keys {keys}"
    return type(value).__name__


# ----------------------------------------------------------------------------------------------- codec
def _pack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in _ALLOWED_KINDS:
        raise TypeError(f"cannot send numpy dtype {obj.dtype} (only bool, int, uint and float arrays)")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__} over the wire")


def _get(obj: dict, key: str) -> Any:
    return obj[key.encode()] if key.encode() in obj else obj.get(key)


def _dtype(spec: Any) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("ascii")
    if not isinstance(spec, str) or len(spec) > 8:
        raise ValueError(f"dtype: expected a short numpy dtype string such as '<f4', got {describe(spec)}")
    dt = np.dtype(spec)
    if dt.kind not in _ALLOWED_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise ValueError(f"dtype: expected a bool/int/uint/float dtype, got {spec!r}")
    return dt


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        data, shape, dt = _get(obj, "data"), _get(obj, "shape"), _dtype(_get(obj, "dtype"))
        if not isinstance(data, bytes):
            raise ValueError(f"ndarray data: expected bytes, got {describe(data)}")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ValueError(f"ndarray shape: expected a list of <= {MAX_NDIM} non-negative ints, got {shape!r:.80}")
        if math.prod(shape) * dt.itemsize != len(data):
            raise ValueError(f"ndarray data: shape {tuple(shape)} of {dt} needs {math.prod(shape) * dt.itemsize} "
                             f"bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=True)
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        data, dt = _get(obj, "data"), _dtype(_get(obj, "dtype"))
        if isinstance(data, (bool, int, float)):
            return np.array(data).astype(dt.newbyteorder("="))[()]
        raise ValueError(f"numpy scalar data: expected a number, got {describe(data)}")
    return obj


def packb(obj: Any) -> bytes:
    """msgpack-numpy encode (openpi-compatible)."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


@dataclass(frozen=True)
class FrameLimits:
    """Bounds on the work one untrusted frame may cost, checked while msgpack decodes it: ``max_keys`` per map,
    ``max_items`` elements in all the frame's maps and lists together, strings of at most ``max_str`` bytes.
    Nesting is bounded by msgpack itself (a fixed stack) and by ``max_items``."""

    max_keys: int = 64
    max_items: int = 1 << 18
    max_str: int = MAX_STR_BYTES

    def describe(self) -> str:
        return (f"maps of at most {self.max_keys} keys (max_keys), at most {self.max_items} items in all "
                f"(max_items), strings of at most {self.max_str} bytes")


class _ItemBudget:
    """Counts the elements of every map and list msgpack builds; raises once over ``limit``."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.limit = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise ValueError(f"more than {self.limit} items in one frame")

    def map_hook(self, obj: dict) -> Any:
        self.take(len(obj))
        return _unpack_hook(obj)

    def list_hook(self, obj: list) -> list:
        self.take(len(obj))
        return obj


def unpackb(data: bytes, limits: FrameLimits | None = None) -> Any:
    """msgpack-numpy decode of untrusted bytes; raises :class:`ProtocolError` on anything malformed or, with
    ``limits``, on the first map / list / string over them (before the rest of the frame is decoded)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError.one("frame", "a binary msgpack frame", f"a {type(data).__name__} frame")
    kwargs: dict[str, Any] = {"object_hook": _unpack_hook}
    expected = "valid msgpack-numpy"
    if limits is not None:
        budget = _ItemBudget(limits.max_items)
        kwargs = {"object_hook": budget.map_hook, "list_hook": budget.list_hook, "max_map_len": limits.max_keys,
                  "max_array_len": limits.max_items, "max_str_len": limits.max_str, "max_ext_len": 0}
        expected += f" within the limits ({limits.describe()})"
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, **kwargs)
    except Exception as e:  # msgpack raises many types (ExtraData, FormatError, ValueError, StackError ...)
        raise ProtocolError.one("frame", expected, clip(f"{type(e).__name__}: {e}")) from None


# ----------------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class ObservationSchema:
    """What one raw observation must look like for a policy: cameras, state, instruction."""

    robot: RobotSpec
    history: int = 1

    def _lead(self) -> tuple[int, ...]:
        return () if self.history == 1 else (self.history,)

    def camera_shape(self, cam: str) -> tuple[int, ...]:
        h, w = self.robot.cameras[cam]
        return (*self._lead(), h, w, 3)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (*self._lead(), self.robot.state_dim)

    @property
    def keys(self) -> list[str]:
        return [image_key(c) for c in self.robot.cameras] + ([OBS_STATE] if self.robot.state_dim else []) + [TASK]

    def _pads(self, name: str, value: Any, problems: list[Problem]) -> np.ndarray | None:
        """A window's optional ``observation_is_pad`` (T,): which frames precede the episode (HistoryWindow)."""
        arr = np.asarray(value) if isinstance(value, list | np.ndarray) else None
        if arr is None or arr.shape != (self.history,) or arr.dtype.kind not in "bui":
            problems.append(Problem(name, f"({self.history},) booleans", describe(value)))
            return None
        return arr.astype(bool)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {image_key(c): {"shape": list(self.camera_shape(c)), "dtype": "uint8"}
                               for c in self.robot.cameras}
        if self.robot.state_dim:
            out[OBS_STATE] = {"shape": list(self.state_shape), "dtype": "float32", "finite": True}
        out[TASK] = {"shape": [], "dtype": "string", "max_chars": MAX_TASK_CHARS}
        return out

    def example(self, task: str = "pick up the object") -> dict[str, Any]:
        """An observation that passes validation (zeros), for clients to send back as is."""
        obs: dict[str, Any] = {image_key(c): np.zeros([d or EXAMPLE_SIDE for d in self.camera_shape(c)], np.uint8)
                               for c in self.robot.cameras}
        if self.robot.state_dim:
            obs[OBS_STATE] = np.zeros(self.state_shape, np.float32)
        obs[TASK] = task
        return obs

    # --------------------------------------------------------------------------- validation
    def _canonical(self, obs: dict, where: str, problems: list[Problem]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        origin: dict[str, str] = {}

        def put(key: str, value: Any, name: str) -> None:
            if key in out:
                problems.append(Problem(f"{where}{name}", f"'{key}' given once", f"both '{origin[key]}' and '{name}'"))
            out[key], origin[key] = value, name

        for k, v in obs.items():
            if not isinstance(k, str):
                problems.append(Problem(f"{where}<key>", "string keys", describe(k)))
            elif k == "images":
                if not isinstance(v, dict):
                    problems.append(Problem(f"{where}images", "a map camera -> uint8 image", describe(v)))
                    continue
                for cam, img in v.items():
                    put(image_key(str(cam)), img, f"images.{cam}")
            else:
                put(ALIASES.get(k, k), v, k)
        return out

    def _image(self, name: str, value: Any, want: tuple[int, ...], problems: list[Problem]) -> np.ndarray | None:
        if isinstance(value, list):
            try:
                arr = np.asarray(value)
            except Exception:  # ragged, too deep, mixed types
                problems.append(Problem(name, f"uint8 array of shape {want}", "a ragged list"))
                return None
            in_range = arr.dtype.kind in "iu" and (not arr.size or (arr.min() >= 0 and arr.max() <= 255))
            value = arr.astype(np.uint8) if in_range else arr
        if not isinstance(value, np.ndarray):
            problems.append(Problem(name, f"uint8 array of shape {want}", describe(value)))
            return None
        ok = True
        if value.dtype != np.uint8:
            problems.append(Problem(name, "dtype uint8", str(value.dtype)))
            ok = False
        if not shape_matches(value.shape, want):
            problems.append(Problem(name, f"shape {want}" + (" (0: any size)" if 0 in want else ""),
                                    str(tuple(value.shape))))
            ok = False
        return value if ok else None

    def _state(self, name: str, value: Any, problems: list[Problem]) -> np.ndarray | None:
        want = self.state_shape
        if isinstance(value, list):
            try:
                value = np.asarray(value, dtype=np.float32)
            except Exception:  # ragged, strings, too deep
                problems.append(Problem(name, f"{want} numbers", "a list that is not numbers of one shape"))
                return None
        if not isinstance(value, np.ndarray):
            problems.append(Problem(name, f"float array of shape {want}", describe(value)))
            return None
        if value.dtype.kind not in "iuf":
            problems.append(Problem(name, "a numeric dtype (float32)", str(value.dtype)))
        elif value.shape != want:
            problems.append(Problem(name, f"shape {want}", str(tuple(value.shape))))
        elif not np.isfinite(value).all():
            bad = np.argwhere(~np.isfinite(value))[0].tolist()
            problems.append(Problem(name, "finite values", f"{value[tuple(bad)]} at index {bad}"))
        else:
            return value
        return None

    def validate(self, obs: Any, where: str = "") -> dict[str, Any]:
        """Check one raw observation; return it with aliases resolved, or raise naming every problem."""
        problems: list[Problem] = []
        out = self.check(obs, where, problems)
        if problems:
            raise ProtocolError(problems, "observation does not match the policy")
        return out

    def check(self, obs: Any, where: str, problems: list[Problem]) -> dict[str, Any]:
        """Like :meth:`validate` but appends to ``problems``; ``where`` prefixes field names (``observations[2].``)."""
        if not isinstance(obs, dict):
            problems.append(Problem(where.rstrip(".") or "observation", "a map of observation keys", describe(obs)))
            return {}
        obs = self._canonical(obs, where, problems)
        out: dict[str, Any] = {}
        for cam in self.robot.cameras:
            key = image_key(cam)
            if key not in obs:
                problems.append(Problem(f"{where}{key}", f"uint8 image of shape {self.camera_shape(cam)}", "nothing"))
                continue
            img = self._image(f"{where}{key}", obs[key], self.camera_shape(cam), problems)
            if img is not None:
                out[key] = img
        if self.robot.state_dim:
            if OBS_STATE not in obs:
                problems.append(Problem(f"{where}{OBS_STATE}", f"{self.state_shape} finite numbers", "nothing"))
            else:
                st = self._state(f"{where}{OBS_STATE}", obs[OBS_STATE], problems)
                if st is not None:
                    out[OBS_STATE] = st
        if self.history > 1 and OBS_IS_PAD in obs:
            pads = self._pads(f"{where}{OBS_IS_PAD}", obs[OBS_IS_PAD], problems)
            if pads is not None:
                out[OBS_IS_PAD] = pads
        task = obs.get(TASK)
        if not isinstance(task, str):
            problems.append(Problem(f"{where}{TASK}", "an instruction string", describe(task) if task is not None
                                    else "nothing"))
        elif len(task) > MAX_TASK_CHARS:
            problems.append(Problem(f"{where}{TASK}", f"at most {MAX_TASK_CHARS} characters", f"{len(task)}"))
        else:
            out[TASK] = task
        known = set(self.keys) | ({OBS_IS_PAD} if self.history > 1 else set())
        unknown_keys(list(obs), known, where, f"one of {self.keys} (or seed / rng_state)", problems)
        return out


def unknown_keys(keys: list[Any], known: set[str], where: str, expected: str, problems: list[Problem]) -> None:
    """One problem per unknown key, or one for them all when there are more than three."""
    unknown = [k for k in keys if k not in known]
    if len(unknown) <= 3:
        problems.extend(Problem(f"{where}{clip(str(k), 80)}", expected, "unknown key") for k in unknown)
    else:
        problems.append(Problem(f"{where}<keys>", expected, summarize_keys(unknown)))


# ----------------------------------------------------------------------------------------------- requests
@dataclass
class Request:
    """A parsed, validated request: observations plus optional reproducible-sampling controls."""

    observations: list[dict[str, Any]]
    batched: bool
    seed: int | None = None
    rng_state: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seeded(self) -> bool:
        return self.seed is not None or self.rng_state is not None


def _controls(msg: dict, where: str, problems: list[Problem]) -> tuple[int | None, bytes | None]:
    seed, state = msg.pop(SEED_KEY, None), msg.pop(RNG_STATE_KEY, None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= int(seed) < 2**63):
        problems.append(Problem(f"{where}{SEED_KEY}", "an int in [0, 2**63)", describe(seed)
                                if not isinstance(seed, int) else str(seed)))
        seed = None
    if state is not None and (not isinstance(state, bytes) or not 0 < len(state) <= MAX_RNG_STATE_BYTES):
        problems.append(Problem(f"{where}{RNG_STATE_KEY}", "the bytes of a previous reply's rng_state",
                                describe(state)))
        state = None
    if seed is not None and state is not None:
        problems.append(Problem(f"{where}{SEED_KEY}", "seed or rng_state, not both", "both"))
    return (None if seed is None else int(seed)), state


def parse_request(msg: Any, schema: ObservationSchema, max_rows: int = 256, max_keys: int = 64) -> Request:
    """A decoded frame (or JSON body) -> :class:`Request`; raises :class:`ProtocolError` naming every problem
    (a map of more than ``max_keys`` keys is refused before its keys are looked at one by one)."""
    problems: list[Problem] = []
    if not isinstance(msg, dict):
        raise ProtocolError.one("frame", "a map (one observation, or {'observations': [...]})", describe(msg))
    if len(msg) > max_keys:
        raise ProtocolError.one("frame", f"a map of at most {max_keys} keys (max_keys)",
                                summarize_keys(list(msg)).replace("unknown ", ""))
    msg = dict(msg)
    seed, state = _controls(msg, "", problems)
    if BATCH_KEY in msg:
        rows = msg.pop(BATCH_KEY)
        unknown_keys(list(msg), set(), "", f"only '{BATCH_KEY}', '{SEED_KEY}', '{RNG_STATE_KEY}' in a batch",
                     problems)
        if not isinstance(rows, list) or not 1 <= len(rows) <= max_rows:
            problems.append(Problem(BATCH_KEY, f"a list of 1..{max_rows} observations", describe(rows)))
            rows = []
        obs = [schema.check(o, f"{BATCH_KEY}[{i}].", problems) for i, o in enumerate(rows)]
        batched = True
    else:
        obs, batched = [schema.check(msg, "", problems)], False
    if problems:
        raise ProtocolError(problems)
    return Request(obs, batched, seed, state)


def reply(actions: np.ndarray, batched: bool, timing: dict[str, float], rng_state: bytes | None) -> dict[str, Any]:
    """The reply map for ``actions`` (B, H, Da) of one request."""
    out: dict[str, Any] = {"actions": actions if batched else actions[0], "server_timing": timing}
    if rng_state is not None:
        out[RNG_STATE_KEY] = rng_state
    return out


# ----------------------------------------------------------------------------------------------- JSON (HTTP)
def shape_matches(shape: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """``shape == want``, where a 0 in ``want`` (a camera of any size: imported checkpoints) takes any side in
    ``[1, MAX_IMAGE_SIDE]``."""
    return len(shape) == len(want) and all(
        s == w if w else 1 <= s <= MAX_IMAGE_SIDE for s, w in zip(shape, want, strict=True))


def _json_image(value: Any, name: str, want: tuple[int, ...]) -> Any:
    """Base64 PNG/JPEG (optionally a data URL) -> uint8 array; lists pass through to validation."""
    if not isinstance(value, str):
        return value
    from PIL import Image

    try:
        raw = base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value, validate=True)
        with Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"]) as im:  # no EPS/TIFF/... on untrusted input
            if not shape_matches((im.height, im.width), tuple(want[-3:-1])):  # checked before decoding the pixels
                size = f"{want[-2]}x{want[-3]} (WxH)" if want[-2] else f"any size, sides 1..{MAX_IMAGE_SIDE}"
                raise ProtocolError.one(name, f"an image of {size}", f"{im.width}x{im.height}")
            return np.array(im.convert("RGB"))
    except ProtocolError:
        raise
    except Exception as e:
        raise ProtocolError.one(name, "a base64-encoded PNG/JPEG or a nested list of uint8",
                                f"{type(e).__name__}: {e}"[:200]) from None


def request_from_json(body: Any, schema: ObservationSchema, max_rows: int = 256, max_keys: int = 64) -> Request:
    """HTTP ``POST /predict`` body -> :class:`Request` (LLaVA-VLA style ``{"images": {cam: base64}, "instruction",
    "state"}``; also the canonical keys, and ``{"observations": [...]}`` batches)."""
    if not isinstance(body, dict):
        raise ProtocolError.one("body", "a JSON object", type(body).__name__)
    if len(body) > max_keys:  # before decoding any image
        return parse_request(body, schema, max_rows, max_keys)

    def decode(obs: Any, where: str) -> Any:
        if not isinstance(obs, dict):
            return obs
        obs = dict(obs)
        images = obs.get("images")
        if isinstance(images, dict):
            obs["images"] = {c: _json_image(v, f"{where}images.{c}", schema.camera_shape(c))
                             if c in schema.robot.cameras else v for c, v in images.items()}
        for cam in schema.robot.cameras:
            if image_key(cam) in obs:
                obs[image_key(cam)] = _json_image(obs[image_key(cam)], f"{where}{image_key(cam)}",
                                                  schema.camera_shape(cam))
        if isinstance(obs.get(RNG_STATE_KEY), str):
            try:
                obs[RNG_STATE_KEY] = base64.b64decode(obs[RNG_STATE_KEY], validate=True)
            except ValueError:
                raise ProtocolError.one(f"{where}{RNG_STATE_KEY}", "base64 bytes", "invalid base64") from None
        return obs

    body = decode(body, "")
    if isinstance(body.get(BATCH_KEY), list):
        body[BATCH_KEY] = [decode(o, f"{BATCH_KEY}[{i}].") for i, o in enumerate(body[BATCH_KEY])]
    return parse_request(body, schema, max_rows, max_keys)


def reply_to_json(out: dict[str, Any]) -> dict[str, Any]:
    acts = np.asarray(out["actions"])
    res = {"actions": acts.tolist(), "shape": list(acts.shape), "server_timing": out["server_timing"]}
    if RNG_STATE_KEY in out:
        res[RNG_STATE_KEY] = base64.b64encode(out[RNG_STATE_KEY]).decode()
    return res


__all__ = ["ALIASES", "OBS_IMAGES", "PROTOCOL", "PROTOCOL_VERSION", "FrameLimits", "ObservationSchema", "Problem",
           "ProtocolError", "Request", "clip", "describe", "packb", "parse_request", "reply", "reply_to_json",
           "request_from_json", "summarize_keys", "unknown_keys", "unpackb"]


# --------------------------------------------------------------------------------------- LLaVA-VLA's HTTP API
LLAVA_VLA_FILES = ("img_static", "img_gripper")  # the policy's first and second camera, in that order


def _form_parts(body: bytes, content_type: str) -> dict[str, bytes]:
    """A ``multipart/form-data`` body -> {field name: bytes} (the email package's MIME parser, no decoding)."""
    from email import policy
    from email.parser import BytesParser

    if not content_type.lower().startswith("multipart/form-data"):
        raise ProtocolError.one("Content-Type", "multipart/form-data (LLaVA-VLA's client posts files)",
                                clip(content_type or "none", 80))
    msg = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1", "replace")
                                                     + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise ProtocolError.one("body", "a multipart/form-data body", "no parts")
    parts = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            parts[name] = part.get_payload(decode=True) or b""
    return parts


def request_from_llava_vla(body: bytes, content_type: str, schema: ObservationSchema, max_keys: int = 64) -> Request:
    """LLaVA-VLA's own client (``calvin_test/evaluate_policy_multiserver.py`` -> ``flask_server.py``): a
    multipart form with raw uint8 RGB bytes in the files ``img_static`` / ``img_gripper`` (the policy's first and
    second camera; the shape is the camera's, or square when the checkpoint takes any size: 200 x 200 and 84 x 84
    on CALVIN) and ``json`` = ``{"instruction": str, "robot_obs": [floats]}``."""
    parts = _form_parts(body, content_type)
    cams = list(schema.robot.cameras)
    names = LLAVA_VLA_FILES[: len(cams)]
    missing = [n for n in (*names, "json") if n not in parts]
    if missing or len(cams) > len(LLAVA_VLA_FILES):
        raise ProtocolError.one("form", f"files {[*names, 'json']} (LLaVA-VLA's client)",
                                f"{sorted(parts)} for cameras {cams}")
    try:
        payload = json.loads(parts["json"])
    except ValueError as e:
        raise ProtocolError.one("json", "a JSON object", clip(f"{type(e).__name__}: {e}")) from None
    if not isinstance(payload, dict) or not {"instruction", "robot_obs"} <= set(payload):
        raise ProtocolError.one("json", "{'instruction': str, 'robot_obs': [floats]}", describe(payload))
    obs: dict[str, Any] = {TASK: payload["instruction"]}
    if schema.robot.state_dim:
        obs[OBS_STATE] = payload["robot_obs"]
    for name, cam in zip(names, cams, strict=True):
        raw, (h, w) = parts[name], schema.robot.cameras[cam]
        if (h, w) == (0, 0):  # any size: LLaVA-VLA's cameras are square
            h = w = math.isqrt(len(raw) // 3)
        if h * w * 3 != len(raw) or not h:
            raise ProtocolError.one(name, f"the raw bytes of a {h} x {w} x 3 uint8 image" if h else
                                    "the raw bytes of a square RGB uint8 image", f"{len(raw)} bytes")
        obs[image_key(cam)] = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
    return parse_request(obs, schema, 1, max_keys)
