"""LeRobot v3.0 datasets: a writer and a reader for the on-disk layout (``shared/reference/lerobot_v3_layout.md``).

```
meta/info.json          schema, fps, path templates, counts
meta/stats.json         per-feature statistics
meta/tasks.parquet      task strings (pandas index "task") -> task_index
meta/episodes/chunk-000/file-000.parquet   one row per episode: lengths, file locations, per-episode stats
data/chunk-000/file-000.parquet            one row per frame, one column per non-video feature
videos/<camera key>/chunk-000/file-000.mp4 many episodes back to back per camera
```

The reader returns one frame with its history window (``history`` frames ending at it) and its action chunk
(``chunk`` actions starting at it); indices past an episode's ends are clamped to the episode and flagged in
``action_is_pad`` / ``observation_is_pad``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from vlaforge.data.base import DatasetMeta, window_indices
from vlaforge.data.stats import (
    Stats,
    aggregate,
    flatten_episode_stats,
    image_stats,
    numeric_stats,
    read_stats,
    write_stats,
)
from vlaforge.data.video import (
    DEFAULT_CODEC,
    ByteLRU,
    DiskGOPCache,
    SeekReader,
    VideoEncoder,
    VideoError,
    decode_all,
    decode_range,
    keyframe_index,
    stream_info,
    video_info,
)
from vlaforge.types import (
    ACTION,
    ACTION_IS_PAD,
    INDEX_KEYS,
    OBS_IS_PAD,
    OBS_PREFIX,
    TASK,
    FeatureSpec,
)

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
WRITER_KEY = "vlaforge_version"  # info.json key marking a dataset vlaforge wrote (LeRobot ignores unknown keys)
FRAME_CACHE_DIR = ".frame_cache"  # video_cache=disk: default cache directory, inside the dataset
# what a LeRobot v3 writer puts in its directory, and the frame cache a reader adds (overwriting a dataset drops it)
OWN_ENTRIES = ("meta", "data", "videos", "images", FRAME_CACHE_DIR)
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
VIDEO_INDEX_PATH = "meta/video_index.json"  # vlaforge's keyframe index of every mp4 (LeRobot ignores it)
VIDEO_CACHES = ("auto", "preload", "episode", "seek", "disk")
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_FEATURES = {
    "timestamp": FeatureSpec("float32", (1,)),
    "frame_index": FeatureSpec("int64", (1,)),
    "episode_index": FeatureSpec("int64", (1,)),
    "index": FeatureSpec("int64", (1,)),
    "task_index": FeatureSpec("int64", (1,)),
}


class DatasetError(RuntimeError):
    """A dataset on disk is incomplete or corrupt; the message names the episode and file."""


def is_own_dataset(root: Path) -> bool:
    """True for a directory holding a dataset vlaforge wrote (its info.json carries the writer key)."""
    try:
        return WRITER_KEY in json.loads((root / "meta" / "info.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_output_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output directory that cannot take a new dataset; returns it as a Path.

    An existing non-empty directory needs ``overwrite``, and even then only a dataset vlaforge wrote is replaced
    (:class:`LeRobotWriter` removes its ``meta/ data/ videos/ images/`` only, never other files there).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: is a file, expected a dataset directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out}: directory exists and is not empty (pass --overwrite to replace a "
                                  f"dataset vlaforge wrote there)")
        if not is_own_dataset(out):
            raise FileExistsError(f"--out {out}: not empty and not a dataset vlaforge wrote (no meta/info.json with "
                                  f"'{WRITER_KEY}'); refusing to overwrite it")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DatasetError(f"--out {out}: directory {parent} is not writable")
    return out


def _advance(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 >= chunks_size else (chunk, file + 1)


def _arrow_type(spec: FeatureSpec) -> pa.DataType:
    if spec.dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if spec.dtype == "string":
        return pa.string()
    base = pa.from_numpy_dtype(np.dtype(spec.dtype))
    if spec.shape == (1,):
        return base
    if len(spec.shape) == 1:  # HF datasets (hence LeRobot) name the child field "item"
        return pa.list_(pa.field("item", base), spec.shape[0])
    raise ValueError(f"feature with shape {spec.shape}: only scalars and vectors are stored in parquet here")


@dataclass
class _Cursor:
    chunk: int = 0
    file: int = 0


class LeRobotWriter:
    """Write episodes into a new LeRobot v3.0 dataset directory.

    ``features`` describes the user features (cameras as ``dtype="video"`` with shape (H, W, 3), state, action);
    the five bookkeeping columns are added. Use as a context manager, or call :meth:`finalize`.
    """

    def __init__(self, root: str | Path, fps: int, features: dict[str, FeatureSpec], *, robot_type: str | None = None,
                 codec: str = DEFAULT_CODEC, chunks_size: int = 1000, data_files_size_in_mb: int = 100,
                 video_files_size_in_mb: int = 200, overwrite: bool = False, gop: int | None = None) -> None:
        if fps <= 0:
            raise ValueError(f"fps: expected > 0, got {fps}")
        for k in features:
            if k in DEFAULT_FEATURES or "/" in k:
                raise ValueError(f"feature name {k!r}: reserved or contains '/'")
        self.out, self.overwrite = check_output_dir(root, overwrite), overwrite
        # everything goes to OUT.partial first and is moved into place by finalize(): no half-written dataset
        # ever replaces a good one, and a failed run leaves the previous dataset as it was
        base = self.out if self.out.name else self.out.resolve()  # "--out ." has no name to extend
        self.root = base.with_name(base.name + ".partial")
        if self.root.exists():
            if not self.root.is_dir() or any(p.name not in OWN_ENTRIES for p in self.root.iterdir()):
                raise FileExistsError(f"{self.root}: exists and is not an unfinished dataset vlaforge wrote; "
                                      f"move it away")
            if (self.root / "meta" / "info.json").exists():
                raise FileExistsError(f"{self.root}: holds the episodes of an interrupted run; move or delete it")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.fps, self.robot_type, self.codec, self.gop = fps, robot_type, codec, gop
        self.features = {**features, **DEFAULT_FEATURES}
        self.video_keys = [k for k, f in features.items() if f.dtype == "video"]
        self.column_keys = [k for k, f in self.features.items() if f.dtype != "video"]
        self.chunks_size = chunks_size
        self.data_mb, self.video_mb = data_files_size_in_mb, video_files_size_in_mb
        self.schema = pa.schema([(k, _arrow_type(self.features[k])) for k in self.column_keys])
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.episode_stats: list[Stats] = []
        self.total_frames = 0
        self._data_cursor = _Cursor()
        self._data_writer: pq.ParquetWriter | None = None
        self._data_bytes = 0
        self._video_cursor = {k: _Cursor() for k in self.video_keys}
        self._encoders: dict[str, VideoEncoder] = {}
        self._numeric: dict[str, list[np.ndarray]] = {
            k: [] for k in self.column_keys if self.features[k].dtype not in ("image", "string")}
        self._finalized = False

    # ---------------------------------------------------------------- episodes
    def add_episode(self, frames: dict[str, np.ndarray], task: str) -> int:
        """Append one episode. ``frames[key]`` has a leading time axis of the same length for every feature."""
        if self._finalized:
            raise RuntimeError("add_episode after finalize()")
        missing = [k for k in self.features if k not in DEFAULT_FEATURES and k not in frames]
        extra = [k for k in frames if k not in self.features]
        if missing or extra:
            raise ValueError(f"episode features: missing {missing}, unexpected {extra}")
        lengths = {k: len(v) for k, v in frames.items()}
        n = next(iter(lengths.values()))
        if n == 0 or any(v != n for v in lengths.values()):
            raise ValueError(f"episode features must share a non-zero length, got {lengths}")
        for k, v in frames.items():
            spec = self.features[k]
            if spec.dtype in ("video", "image"):
                if v.dtype != np.uint8 or v.shape[1:] != tuple(spec.shape):
                    raise ValueError(f"feature '{k}': expected uint8 (T, {', '.join(map(str, spec.shape))}), got "
                                     f"{v.dtype} {v.shape}")
            elif spec.dtype != "string" and np.asarray(v).reshape(n, -1).shape[1] != int(np.prod(spec.shape)):
                raise ValueError(f"feature '{k}': expected (T, {spec.shape}), got {np.asarray(v).shape}")
        ep = len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        columns = {
            "timestamp": (np.arange(n) / self.fps).astype(np.float32),
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, ep, dtype=np.int64),
            "index": np.arange(self.total_frames, self.total_frames + n, dtype=np.int64),
            "task_index": np.full(n, task_index, dtype=np.int64),
        }
        for k in self.column_keys:
            if k in columns:
                continue
            spec = self.features[k]
            if spec.dtype == "image":
                columns[k] = [{"bytes": _png(img), "path": None} for img in frames[k]]
            elif spec.dtype == "string":
                columns[k] = list(frames[k])
            else:
                columns[k] = np.asarray(frames[k]).reshape(n, -1).astype(spec.dtype)
        row = {"episode_index": ep, "tasks": [task], "length": n, "dataset_from_index": self.total_frames,
               "dataset_to_index": self.total_frames + n}
        row.update(self._write_data(columns, n))
        for k in self.video_keys:
            row.update(self._write_video(k, frames[k]))
        stats = {k: numeric_stats(columns[k]) for k in self.column_keys if self.features[k].dtype not in
                 ("image", "string")}
        for k in self.video_keys + [k for k in self.column_keys if self.features[k].dtype == "image"]:
            stats[k] = image_stats(np.asarray(frames[k]), max_frames=64, seed=ep)
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        self.episodes.append(row)
        self.episode_stats.append(stats)
        for k in stats:
            if k in self._numeric:
                self._numeric[k].append(columns[k])
        self.total_frames += n
        return ep

    def _write_data(self, columns: dict[str, Any], n: int) -> dict[str, int]:
        arrays = []
        for k in self.column_keys:
            v = columns[k]
            t = self.schema.field(k).type
            if pa.types.is_fixed_size_list(t):
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), t.value_type), type=t))
            elif isinstance(v, np.ndarray):
                arrays.append(pa.array(v.reshape(n), t))
            else:
                arrays.append(pa.array(v, t))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if self._data_writer is not None and self._data_bytes + table.nbytes >= self.data_mb * 1024 * 1024:
            self._data_writer.close()
            self._data_writer = None
            c = self._data_cursor
            self._data_cursor = _Cursor(*_advance(c.chunk, c.file, self.chunks_size))
        if self._data_writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self._data_cursor.chunk, file_index=self._data_cursor.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self.schema, compression="snappy")
            self._data_bytes = 0
        self._data_writer.write_table(table, row_group_size=n)
        self._data_bytes += table.nbytes
        return {"data/chunk_index": self._data_cursor.chunk, "data/file_index": self._data_cursor.file}

    def _write_video(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        enc = self._encoders.get(key)
        if enc is not None and enc.size_bytes() >= self.video_mb * 1024 * 1024:
            enc.close()
            del self._encoders[key]
            c = self._video_cursor[key]
            self._video_cursor[key] = _Cursor(*_advance(c.chunk, c.file, self.chunks_size))
            enc = None
        c = self._video_cursor[key]
        if enc is None:
            h, w = self.features[key].shape[:2]
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=c.chunk, file_index=c.file)
            enc = self._encoders[key] = VideoEncoder(path, self.fps, h, w, self.codec, gop=self.gop)
        start = enc.seconds
        for f in frames:
            enc.add(f)
        return {f"videos/{key}/chunk_index": c.chunk, f"videos/{key}/file_index": c.file,
                f"videos/{key}/from_timestamp": float(start), f"videos/{key}/to_timestamp": float(enc.seconds)}

    # ---------------------------------------------------------------- metadata
    def finalize(self, publish: bool = True) -> Path:
        """Close files, write ``meta/`` and (``publish``) move the dataset from ``OUT.partial`` to ``OUT``.

        Safe to call twice. Unpublished, the finished dataset stays readable at ``OUT.partial``.
        """
        if self._finalized:
            return self.root
        self._finalized = True
        self._close_files()
        if not self.episodes:
            shutil.rmtree(self.root, ignore_errors=True)
            raise DatasetError(f"{self.out}: no episodes were written")
        self._write_meta()
        if publish:
            self._publish()
        return self.root

    def _close_files(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
        for enc in self._encoders.values():
            enc.close()

    def _publish(self) -> None:
        """Replace ``OUT``'s own entries (a dataset vlaforge wrote) by the new ones; other files stay."""
        check_output_dir(self.out, self.overwrite)
        if self.out.is_dir():
            for name in OWN_ENTRIES:
                old = self.out / name
                if old.is_dir():
                    shutil.rmtree(old)
                elif old.exists():
                    old.unlink()
            for entry in self.root.iterdir():
                entry.rename(self.out / entry.name)
            self.root.rmdir()
        else:
            self.root.rename(self.out)
        self.root = self.out

    def _write_meta(self) -> None:
        meta = self.root / "meta"
        meta.mkdir(exist_ok=True)
        tasks = pd.DataFrame({"task_index": np.arange(len(self.tasks), dtype=np.int64)},
                             index=pd.Index(list(self.tasks), name="task"))
        tasks.to_parquet(meta / "tasks.parquet")
        rows = [{**row, **flatten_episode_stats(st)} for row, st in zip(self.episodes, self.episode_stats, strict=True)]
        ep_path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), ep_path)
        write_stats(meta / "stats.json", self._dataset_stats())
        features = {k: f.to_json() for k, f in self.features.items()}
        for k in self.video_keys:
            features[k]["names"] = ["height", "width", "channels"]
            features[k]["info"] = video_info(self.root / VIDEO_PATH.format(video_key=k, chunk_index=0, file_index=0))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_mb,
            "video_files_size_in_mb": self.video_mb,
            "fps": self.fps,
            WRITER_KEY: _version(),
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": features,
        }
        (meta / "info.json").write_text(json.dumps(info, indent=4))

    def _dataset_stats(self) -> Stats:
        """Exact statistics for numeric features; count-weighted episode aggregates for images."""
        return {k: numeric_stats(np.concatenate(self._numeric[k])) if k in self._numeric
                else aggregate([s[k] for s in self.episode_stats]) for k in self.episode_stats[0]}

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.finalize()
        elif not self.episodes and not self._finalized:  # nothing worth keeping: leave no OUT.partial behind
            self._finalized = True
            self._close_files()
            shutil.rmtree(self.root, ignore_errors=True)
        elif not self._finalized:
            # keep every episode written so far, without replacing a previous dataset by an unfinished one
            keep_aside = self.out.is_dir() and any(self.out.iterdir())
            self.finalize(publish=not keep_aside)
            if keep_aside:
                log.warning("interrupted: the %d episodes written so far are in %s; %s is unchanged",
                            len(self.episodes), self.root, self.out)


def _version() -> str:
    from vlaforge import __version__

    return __version__


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# ==================================================================== reader
def load_meta(root: str | Path, *, load_stats: bool = True) -> tuple[DatasetMeta, pd.DataFrame]:
    """Read ``meta/`` and check the version, fps and feature declarations; returns the metadata and the
    episodes table. ``load_stats=False`` skips ``meta/stats.json`` (to recompute it)."""
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DatasetError(f"not a LeRobot dataset: {info_path} not found")
    try:
        info = json.loads(info_path.read_text())
    except ValueError as e:
        raise DatasetError(f"{info_path}: not valid JSON ({e})") from e
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3."):
        raise DatasetError(f"{root}: codebase_version {version!r} is not supported (expected v3.x; convert v2.1 "
                           f"datasets with LeRobot's convert_dataset_v21_to_v30)")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0 or fps != int(fps):
        raise DatasetError(f"{info_path}: 'fps' must be a positive integer, got {fps!r}")
    features = _features(info, info_path)
    tasks_path = root / "meta" / "tasks.parquet"
    if not tasks_path.is_file():
        raise DatasetError(f"{root}: {tasks_path.relative_to(root)} not found")
    tdf = pd.read_parquet(tasks_path).sort_values("task_index")
    tasks = [str(t) for t in tdf.index]
    ep_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not ep_files:
        raise DatasetError(f"{root}: no episode tables under meta/episodes/")
    episodes = pd.concat([pq.read_table(f).to_pandas() for f in ep_files], ignore_index=True)
    episodes = episodes.sort_values("episode_index").reset_index(drop=True)
    stats = None
    if load_stats and (root / "meta" / "stats.json").exists():
        stats = read_stats(root / "meta" / "stats.json")
    meta = DatasetMeta(
        root=root, fps=int(fps), features=features,
        tasks=tasks, stats=stats,
        episode_lengths=episodes["length"].to_numpy(np.int64),
        episode_starts=episodes["dataset_from_index"].to_numpy(np.int64),
        robot_type=info.get("robot_type"), info=info,
    )
    return meta, episodes


def _features(info: dict[str, Any], info_path: Path) -> dict[str, FeatureSpec]:
    """``info["features"]`` as FeatureSpecs; a malformed entry or an unknown dtype names the feature."""
    if not isinstance(info.get("features"), dict):
        raise DatasetError(f"{info_path}: 'features' must be an object, got {type(info.get('features')).__name__}")
    out = {}
    for k, v in info["features"].items():
        try:
            spec = FeatureSpec.from_json(v)
            if spec.dtype not in ("video", "image", "string") and np.dtype(spec.dtype).kind not in "biuf":
                raise TypeError(f"dtype {spec.dtype!r} is not numeric")
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{info_path}: features.{k}: malformed ({e}); expected dtype (a numpy dtype, "
                               f"image, video or string) and shape (a list of ints)") from e
        out[k] = spec
    return out


def _arrow_leaf(col: pa.ChunkedArray) -> tuple[pa.DataType, int | None, pa.ChunkedArray | pa.Array]:
    """Leaf value type, fixed values per row (None for variable-length lists) and the flattened values."""
    t, width, flat = col.type, 1, col
    while pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        if pa.types.is_fixed_size_list(t) and width is not None:
            width *= t.list_size
        else:
            width = None
        flat = pc.list_flatten(flat)
        t = t.value_type
    return t, width, flat


def _index_digest(entry: dict[str, Any]) -> str:
    body = {k: entry[k] for k in ("size", "mtime_ns", "frames", "keyframes")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _index_entry_ok(entry: Any, path: Path) -> bool:
    """An index entry is trusted only when it is well formed, its digest matches and it describes the file as it
    is now (size and modification time)."""
    try:
        st = path.stat()
        keys = entry["keyframes"]
        return (entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns and entry["digest"] ==
                _index_digest(entry) and isinstance(keys, list) and keys and keys[0] == 0
                and all(isinstance(k, int) for k in keys) and all(np.diff(keys) > 0)
                and isinstance(entry["frames"], int) and keys[-1] < entry["frames"])
    except (KeyError, TypeError, OSError):
        return False


def video_keyframe_index(root: Path, paths: list[Path]) -> tuple[dict[Path, dict[str, Any]], list[Path]]:
    """The keyframe index of each video (``{"frames", "keyframes"}``), read from ``meta/video_index.json`` where
    its entry is valid for the file as it is now, rebuilt (by demuxing, no decoding) where it is missing, stale
    or corrupt; the file is rewritten atomically when anything was rebuilt (skipped with a warning when ``meta/``
    is read-only). Returns the index and the paths that were (re)built."""
    index_path = root / VIDEO_INDEX_PATH
    try:
        stored = json.loads(index_path.read_text()).get("videos", {}) if index_path.is_file() else {}
        if not isinstance(stored, dict):
            stored = {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
        log.warning("%s: unreadable, rebuilding it", index_path)
        stored = {}
    out, rebuilt = {}, []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        entry = stored.get(rel)
        if not _index_entry_ok(entry, path):
            st = path.stat()
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **keyframe_index(path)}
            entry["digest"] = _index_digest(entry)
            stored[rel] = entry
            rebuilt.append(path)
        out[path] = {"frames": entry["frames"], "keyframes": entry["keyframes"]}
    if rebuilt:
        tmp = index_path.with_name(f"{index_path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"version": 1, "videos": stored}) + "\n")
            os.replace(tmp, index_path)
        except OSError as e:
            log.warning("%s: cannot write the keyframe index (%s); keeping it in memory", index_path, e)
    return out, rebuilt


class LeRobotDataset:
    """Random access reader (an :class:`~vlaforge.data.base.EpisodeReader`) for a LeRobot v3.0 directory.

    Args:
        root: dataset directory.
        history: number of observation frames returned (ending at the requested frame).
        chunk: number of actions returned (starting at the requested frame).
        video_cache: ``"preload"`` decodes every video once into memory (fast random access; the right choice
            for datasets that fit in RAM), ``"episode"`` decodes one whole episode at a time into an LRU cache,
            ``"seek"`` decodes only the group of pictures holding a frame (found through the keyframe index
            cached in ``meta/video_index.json``) into an LRU cache of decoded groups, ``"auto"`` preloads under
            ``preload_limit_gb`` and seeks above it. ``"disk"`` is ``"seek"`` with a second level on disk: each
            decoded group is written once as an uncompressed array under ``cache_dir`` (capped at
            ``disk_cache_mb``, least recently used out first) and read from there instead of decoded again.
        max_cache_mb: byte budget of the episode / seek / disk caches in RAM, PER PROCESS (each DataLoader worker
            holds its own cache; the trainer divides ``--data.max_cache_mb`` by the number of workers).
        cache_dir: ``video_cache="disk"``: the directory of decoded groups (default ``<root>/.frame_cache``),
            shared by every process that reads the dataset; the cap covers the whole directory.
        disk_cache_mb: ``video_cache="disk"``: byte cap of ``cache_dir``.
        episodes: optional subset of episode indices to expose.
        load_stats: read ``meta/stats.json`` (False to recompute it).
    """

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` looks like a LeRobot dataset (for :func:`vlaforge.data.open_reader`)."""
        return (Path(root) / "meta" / "info.json").is_file()

    def __init__(self, root: str | Path, *, history: int = 1, chunk: int = 1, video_cache: str = "auto",
                 preload_limit_gb: float = 4.0, episodes: list[int] | None = None, load_stats: bool = True,
                 max_cache_mb: float = 512.0, cache_dir: str | Path | None = None,
                 disk_cache_mb: float = 10240.0) -> None:
        if history < 1 or chunk < 1:
            raise ValueError(f"history and chunk must be >= 1, got history={history}, chunk={chunk}")
        self.meta, self._episodes = load_meta(root, load_stats=load_stats)
        self.root = self.meta.root
        self.history, self.chunk = history, chunk
        self._obs_deltas = np.arange(-(history - 1), 1)
        self._act_deltas = np.arange(chunk)
        self._load_columns()
        self.video_keys = [k for k, f in self.meta.features.items() if f.dtype == "video"]
        self._video_files = self._check_videos()
        all_eps = np.arange(self.meta.num_episodes)
        self.episode_ids = np.asarray(episodes if episodes is not None else all_eps, dtype=np.int64)
        self._frame_table = np.concatenate(
            [np.arange(self.meta.episode_starts[e], self.meta.episode_starts[e] + self.meta.episode_lengths[e])
             for e in self.episode_ids]) if len(self.episode_ids) else np.zeros(0, np.int64)
        if video_cache not in VIDEO_CACHES:
            raise ValueError(f"video_cache: expected one of {' | '.join(VIDEO_CACHES)}, got {video_cache!r}")
        if max_cache_mb <= 0:
            raise ValueError(f"max_cache_mb: expected > 0, got {max_cache_mb}")
        if disk_cache_mb <= 0:
            raise ValueError(f"disk_cache_mb: expected > 0, got {disk_cache_mb}")
        if video_cache == "auto":
            video_cache = "preload" if self._video_bytes() < preload_limit_gb * 1e9 else "seek"
        self.video_cache = video_cache
        self.max_cache_bytes = int(max_cache_mb * 2**20)
        self._file_frames: dict[Path, np.ndarray] = {}
        self._episode_frames = ByteLRU(self.max_cache_bytes)
        self._seek: SeekReader | None = None
        self.index_rebuilt: list[Path] = []
        if video_cache == "preload":
            for path in sorted(set(self._video_files.values())):
                self._file_frames[path] = self._decode_file(path)
        elif video_cache in ("seek", "disk") and self._video_files:
            try:
                index, self.index_rebuilt = video_keyframe_index(self.root, sorted(set(self._video_files.values())))
            except VideoError as e:
                raise DatasetError(f"{self.root}: {e}") from e
            disk = None
            if video_cache == "disk":
                disk = DiskGOPCache(Path(cache_dir) if cache_dir else self.root / FRAME_CACHE_DIR,
                                    int(disk_cache_mb * 2**20))
            self._seek = SeekReader({p: v["keyframes"] for p, v in index.items()},
                                    {p: v["frames"] for p, v in index.items()}, self.max_cache_bytes, disk)

    # ------------------------------------------------------------- loading
    def _load_columns(self) -> None:
        files = sorted((self.root / "data").glob("*/*.parquet"))
        if not files:
            raise DatasetError(f"{self.root}: no data files under data/")
        tables = []
        for f in files:
            try:
                tables.append(pq.read_table(f))
            except (pa.ArrowInvalid, OSError) as e:
                raise DatasetError(f"{self.root}: cannot read {f.relative_to(self.root)}: {e}") from e
            self._check_schema(tables[-1], f.relative_to(self.root))
        table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
        n = table.num_rows
        if n != self.meta.num_frames:
            raise DatasetError(f"{self.root}: data files hold {n} frames, episodes table says {self.meta.num_frames}")
        self._columns: dict[str, Any] = {}
        for name in table.column_names:
            spec = self.meta.features.get(name)
            col = table.column(name)
            if spec is None:
                continue
            if spec.dtype == "image" or spec.dtype == "string":
                self._columns[name] = col.to_pylist()
            elif spec.shape != (1,) or pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
                flat = _arrow_leaf(col)[2].to_numpy(zero_copy_only=False)
                self._columns[name] = np.asarray(flat, spec.dtype).reshape(n, *spec.shape)
            else:
                self._columns[name] = col.to_numpy().astype(spec.dtype)
        order = self._columns["index"]
        if not np.array_equal(order, np.arange(n)):
            raise DatasetError(f"{self.root}: the 'index' column is not 0..{n - 1} in file order")
        ep_col = self._columns["episode_index"]
        for e, (s, length) in enumerate(zip(self.meta.episode_starts, self.meta.episode_lengths, strict=True)):
            if not (ep_col[s : s + length] == e).all():
                raise DatasetError(f"{self.root}: episode {e} rows are missing or out of place in {self._data_file(e)}")
        self._check_timestamps()

    def _data_file(self, ep: int) -> str:
        row = self._episodes.iloc[ep]
        return (self.meta.info.get("data_path") or DATA_PATH).format(chunk_index=int(row["data/chunk_index"]),
                                                                      file_index=int(row["data/file_index"]))

    def _check_schema(self, table: pa.Table, rel: Path) -> None:
        """Declared dtype and shape of every stored feature (meta/info.json) against the parquet schema."""
        for k, spec in self.meta.features.items():
            if spec.dtype == "video":
                continue
            if k not in table.column_names:
                raise DatasetError(f"{self.root}: {rel} has no column '{k}' (declared in meta/info.json features)")
            col = table.column(k)
            said = f"{self.root}: feature '{k}': meta/info.json declares"
            if spec.dtype in ("image", "string"):
                ok = (pa.types.is_struct(col.type) and col.type.get_field_index("bytes") >= 0 if spec.dtype == "image"
                      else pa.types.is_string(col.type) or pa.types.is_large_string(col.type))
                if not ok:
                    raise DatasetError(f"{said} dtype {spec.dtype}, {rel} stores {col.type}")
                continue
            leaf, width, flat = _arrow_leaf(col)
            try:
                actual = np.dtype(leaf.to_pandas_dtype())
            except (NotImplementedError, TypeError):
                actual = np.dtype(object)
            declared = np.dtype(spec.dtype)
            if actual.kind not in "biuf":
                raise DatasetError(f"{said} dtype {declared}, {rel} stores {col.type}")
            per_frame = int(np.prod(spec.shape))
            if (width if width is not None else len(flat) / max(1, table.num_rows)) != per_frame:
                got = (f"{width} values per frame" if width is not None
                       else f"{len(flat)} values in {table.num_rows} frames")
                raise DatasetError(f"{said} shape {list(spec.shape)} ({per_frame} values per frame), {rel} holds {got}")
            if not (actual == declared or np.can_cast(actual, declared, "safe") or actual.kind == declared.kind == "f"):
                raise DatasetError(f"{said} dtype {declared}, {rel} stores {actual} (reading it as {declared} would "
                                   f"change the values)")

    def _check_timestamps(self) -> None:
        """``timestamp`` must be ``frame_index / fps`` within half a frame (the fps in meta/info.json is used to
        find video frames, so a wrong fps would silently return other frames)."""
        if "timestamp" not in self._columns or "frame_index" not in self._columns:
            return
        fps = self.meta.fps
        ts = np.asarray(self._columns["timestamp"], np.float64).reshape(-1)
        expected = np.asarray(self._columns["frame_index"], np.float64).reshape(-1) / fps
        bad = np.flatnonzero(np.abs(ts - expected) > 0.5 / fps + 1e-4)
        if bad.size:
            g = int(bad[0])
            ep, f = int(self._columns["episode_index"][g]), int(self._columns["frame_index"][g])
            raise DatasetError(f"{self.root}: episode {ep}, frame {f} in {self._data_file(ep)}: timestamp "
                               f"{ts[g]:.4f} s, expected frame_index/fps = {expected[g]:.4f} s with meta/info.json fps "
                               f"{fps} ({bad.size} frames differ); is the fps in meta/info.json right?")

    def _check_videos(self) -> dict[tuple[str, int], Path]:
        """Every episode's mp4 exists, runs at the dataset fps and holds the episode's frames (from the container
        metadata: nothing is decoded; a file that cannot be opened is left to the decoder to report)."""
        files = {}
        template = self.meta.info.get("video_path") or VIDEO_PATH
        fps = self.meta.fps
        for k in [k for k, f in self.meta.features.items() if f.dtype == "video"]:
            streams: dict[Path, tuple[float, int] | None] = {}
            chunks, file_ids = (self._episodes[f"videos/{k}/{c}_index"].to_numpy(np.int64) for c in ("chunk", "file"))
            starts, stops = (np.round(self._episodes[f"videos/{k}/{t}_timestamp"].to_numpy(np.float64) * fps)
                             .astype(np.int64) for t in ("from", "to"))
            for e in range(self.meta.num_episodes):
                path = self.root / template.format(video_key=k, chunk_index=int(chunks[e]), file_index=int(file_ids[e]))
                rel, where = path.relative_to(self.root), f"{self.root}: episode {e}, camera '{k}'"
                if path not in streams:
                    if not path.is_file():
                        raise DatasetError(f"{where}: video file {rel} not found")
                    try:
                        streams[path] = stream_info(path)
                    except VideoError:
                        streams[path] = None  # unreadable: decoding reports it, naming the episodes
                files[(k, e)] = path
                if streams[path] is None:
                    continue
                rate, frames = streams[path]
                if rate and abs(rate - fps) > 0.01 * fps:
                    raise DatasetError(f"{where}: {rel} runs at {rate:g} fps, meta/info.json says fps {fps}")
                start, length = int(starts[e]), int(self.meta.episode_lengths[e])
                if stops[e] - start != length:
                    raise DatasetError(f"{where}: the episodes table spans {stops[e] - start} frames of {rel} at {fps} "
                                       f"fps (from/to_timestamp), the episode has {length}")
                if frames and start + length > frames:
                    raise DatasetError(f"{where}: {rel} has {frames} frames, the episode needs frames "
                                       f"[{start}, {start + length})")
        return files

    def _video_bytes(self) -> float:
        total = 0
        for k in self.video_keys:
            h, w, c = self.meta.features[k].shape
            total += self.meta.num_frames * h * w * c
        return total

    def _decode_file(self, path: Path) -> np.ndarray:
        try:
            return decode_all(path)
        except VideoError as e:
            eps = sorted({e_ for (k, e_), p in self._video_files.items() if p == path})
            raise DatasetError(f"{self.root}: episodes {eps[:5]}{'...' if len(eps) > 5 else ''}: {e}") from e

    def _episode_video(self, key: str, ep: int) -> np.ndarray:
        row = self._episodes.iloc[ep]
        fps = self.meta.fps
        start = round(float(row[f"videos/{key}/from_timestamp"]) * fps)
        length = int(self.meta.episode_lengths[ep])
        path = self._video_files[(key, ep)]
        if self.video_cache == "preload":
            frames = self._file_frames[path]
            if start + length > len(frames):
                raise DatasetError(f"{self.root}: episode {ep}, camera '{key}': {path.relative_to(self.root)} has "
                                   f"{len(frames)} frames, episode needs [{start}, {start + length})")
            return frames[start : start + length]
        cached = self._episode_frames.get((key, ep))
        if cached is None:
            try:
                cached = decode_range(path, start, start + length)
            except VideoError as e:
                raise DatasetError(f"{self.root}: episode {ep}, camera '{key}': {e}") from e
            self._episode_frames.put((key, ep), cached)
        return cached

    def _video_frames(self, key: str, ep: int, idx: np.ndarray) -> np.ndarray:
        """Frames ``idx`` (episode-level) of camera ``key`` in episode ``ep``."""
        if self._seek is None:
            return self._episode_video(key, ep)[idx]
        start = round(float(self._episodes.iloc[ep][f"videos/{key}/from_timestamp"]) * self.meta.fps)
        path = self._video_files[(key, ep)]
        try:
            return self._seek.get(path, start + np.asarray(idx))
        except VideoError as e:
            raise DatasetError(f"{self.root}: episode {ep}, camera '{key}': {e}") from e

    def cache_stats(self) -> dict[str, int]:
        """Bytes held, peak bytes and budget of this process's decoded-frame cache."""
        c = self._seek.cache if self._seek is not None else self._episode_frames
        out = {"bytes": c.bytes, "peak": c.peak, "max_bytes": c.max_bytes, "hits": c.hits, "misses": c.misses}
        if self._seek is not None and self._seek.disk is not None:
            d = self._seek.disk
            out |= {"disk_hits": d.hits, "disk_misses": d.misses, "disk_max_bytes": d.max_bytes}
        return out

    def episode_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """(first reader position, length) of each exposed episode, in reader order."""
        lengths = np.asarray(self.meta.episode_lengths, np.int64)[self.episode_ids]
        return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64), lengths

    # ------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self._frame_table)

    def locate(self, i: int) -> tuple[int, int]:
        """Reader position -> (episode_index, frame_index)."""
        g = int(self._frame_table[i])
        ep = int(self._columns["episode_index"][g])
        return ep, g - int(self.meta.episode_starts[ep])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for a reader of {len(self)} frames")
        ep, f = self.locate(i % len(self))
        start, length = int(self.meta.episode_starts[ep]), int(self.meta.episode_lengths[ep])
        obs_idx, obs_pad = window_indices(f, length, self._obs_deltas)
        act_idx, act_pad = window_indices(f, length, self._act_deltas)
        g = start + f
        item: dict[str, Any] = {k: self._columns[k][g] for k in INDEX_KEYS if k in self._columns}
        item[TASK] = self.meta.tasks[int(self._columns["task_index"][g])]
        for k, spec in self.meta.features.items():
            if k in INDEX_KEYS or k == ACTION:
                continue
            if spec.dtype == "video":
                v = self._video_frames(k, ep, obs_idx)
            elif k in self._columns and k.startswith(OBS_PREFIX):
                col = self._columns[k]
                if spec.dtype == "image":
                    v = np.stack([np.asarray(Image.open(io.BytesIO(col[start + j]["bytes"])).convert("RGB"))
                                  for j in obs_idx])
                else:
                    v = col[start + obs_idx]
            elif k in self._columns:
                item[k] = self._columns[k][g]
                continue
            else:
                continue
            item[k] = v[0] if self.history == 1 else v
        item[ACTION] = self._columns[ACTION][start + act_idx].reshape(self.chunk, -1)
        item[ACTION_IS_PAD] = act_pad
        if self.history > 1:
            item[OBS_IS_PAD] = obs_pad
        return item

    def episode(self, ep: int) -> dict[str, np.ndarray]:
        """Every frame of one episode, feature by feature (used by tests and conversion checks)."""
        start, length = int(self.meta.episode_starts[ep]), int(self.meta.episode_lengths[ep])
        out: dict[str, Any] = {}
        for k, spec in self.meta.features.items():
            if spec.dtype == "video":
                out[k] = self._video_frames(k, ep, np.arange(length))
            elif spec.dtype == "image":
                out[k] = np.stack([np.asarray(Image.open(io.BytesIO(b["bytes"])).convert("RGB"))
                                   for b in self._columns[k][start : start + length]])
            else:
                out[k] = self._columns[k][start : start + length]
        out[TASK] = self.meta.tasks[int(self._columns["task_index"][start])]
        return out

    def check_finite(self, why: str = "") -> None:
        """Refuse NaN or inf in any numeric column of the exposed episodes, naming the column, the first episode
        and frame holding one, and how many there are (one vectorised pass; milliseconds per million values)."""
        for k, col in self._columns.items():
            if not isinstance(col, np.ndarray) or col.dtype.kind != "f":
                continue
            bad = ~np.isfinite(col[self._frame_table].reshape(len(self._frame_table), -1))  # exposed episodes
            rows = np.flatnonzero(bad.any(1))
            if rows.size:
                g = int(self._frame_table[rows[0]])
                ep = int(self._columns["episode_index"][g])
                frame, dims = g - int(self.meta.episode_starts[ep]), np.flatnonzero(bad[rows[0]]).tolist()[:8]
                raise DatasetError(f"{self.root}: '{k}' is not finite at episode {ep}, frame {frame} (dims {dims}, in "
                                   f"{self._data_file(ep)}); {int(bad.sum())} non-finite values in {rows.size} "
                                   f"frames{why}")

    def column(self, key: str) -> np.ndarray:
        """A whole numeric column over the exposed episodes (for statistics)."""
        return self._columns[key][self._frame_table]


def compute_dataset_stats(root: str | Path, write: bool = True) -> Stats:
    """Recompute ``meta/stats.json`` from the data (exact numeric quantiles; sampled video frames).

    The current ``meta/stats.json`` is not read (it may be the broken thing being replaced); non-finite data is
    refused, naming where it is, and nothing is written then.
    """
    ds = LeRobotDataset(root, video_cache="episode", load_stats=False)
    ds.check_finite("; refusing to compute meta/stats.json from them (fix or drop those episodes)")
    stats: Stats = {}
    for k, spec in ds.meta.features.items():
        if spec.dtype in ("video", "image"):
            per_ep = [image_stats(ds.episode(e)[k], max_frames=64, seed=e) for e in range(ds.meta.num_episodes)]
            stats[k] = aggregate(per_ep)
        elif spec.dtype != "string":
            stats[k] = numeric_stats(ds.column(k))
    if write:
        write_stats(ds.root / "meta" / "stats.json", stats)
    return stats


def _register() -> None:
    from vlaforge.data import FORMATS

    FORMATS.register("lerobot")(LeRobotDataset)


_register()
