"""Access to the per-step fields of one RLDS episode record (arrays reshaped by ``features.json``)."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from vlaforge.data.rlds.schema import OBSERVATION, STEPS, Field
from vlaforge.data.tfrecord import FeatureValue
from vlaforge.utils import did_you_mean


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
    hint = did_you_mean(key, [*schema, *short], " Did you mean {}?", n=3, cutoff=0.5, alias=short)
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
