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

import io
import json
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vlaforge.data.base import DatasetMeta, window_indices
from vlaforge.data.stats import (
    Stats,
    StatsError,
    aggregate,
    flatten_episode_stats,
    image_stats,
    numeric_stats,
    read_stats,
    write_stats,
)
from vlaforge.data.video import DEFAULT_CODEC, VideoEncoder, VideoError, decode_all, decode_range, video_info
from vlaforge.types import (
    ACTION,
    ACTION_IS_PAD,
    INDEX_KEYS,
    OBS_IS_PAD,
    OBS_PREFIX,
    TASK,
    FeatureSpec,
)

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
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
                 video_files_size_in_mb: int = 200, overwrite: bool = False) -> None:
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise FileExistsError(f"dataset directory {self.root} is not empty (pass overwrite=True / --overwrite)")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if fps <= 0:
            raise ValueError(f"fps: expected > 0, got {fps}")
        for k in features:
            if k in DEFAULT_FEATURES or "/" in k:
                raise ValueError(f"feature name {k!r}: reserved or contains '/'")
        self.fps, self.robot_type, self.codec = fps, robot_type, codec
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
            enc = self._encoders[key] = VideoEncoder(path, self.fps, h, w, self.codec)
        start = enc.seconds
        for f in frames:
            enc.add(f)
        return {f"videos/{key}/chunk_index": c.chunk, f"videos/{key}/file_index": c.file,
                f"videos/{key}/from_timestamp": float(start), f"videos/{key}/to_timestamp": float(enc.seconds)}

    # ---------------------------------------------------------------- metadata
    def finalize(self) -> Path:
        """Close files and write ``meta/``. Safe to call twice."""
        if self._finalized:
            return self.root
        self._finalized = True
        if self._data_writer is not None:
            self._data_writer.close()
        for enc in self._encoders.values():
            enc.close()
        if not self.episodes:
            raise DatasetError(f"{self.root}: no episodes were written")
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
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": features,
        }
        (meta / "info.json").write_text(json.dumps(info, indent=4))
        return self.root

    def _dataset_stats(self) -> Stats:
        """Exact statistics for numeric features; count-weighted episode aggregates for images."""
        return {k: numeric_stats(np.concatenate(self._numeric[k])) if k in self._numeric
                else aggregate([s[k] for s in self.episode_stats]) for k in self.episode_stats[0]}

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None or self.episodes:
            self.finalize()  # keep every episode written so far, even when collection was interrupted


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# ==================================================================== reader
def load_meta(root: str | Path) -> tuple[DatasetMeta, pd.DataFrame]:
    """Read ``meta/`` and check the version; returns the metadata and the episodes table."""
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DatasetError(f"not a LeRobot dataset: {info_path} not found")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3."):
        raise DatasetError(f"{root}: codebase_version {version!r} is not supported (expected v3.x; convert v2.1 "
                           f"datasets with LeRobot's convert_dataset_v21_to_v30)")
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
    try:
        stats = read_stats(root / "meta" / "stats.json")
    except StatsError:
        if (root / "meta" / "stats.json").exists():
            raise
        stats = None
    meta = DatasetMeta(
        root=root, fps=int(info["fps"]),
        features={k: FeatureSpec.from_json(v) for k, v in info["features"].items()},
        tasks=tasks, stats=stats,
        episode_lengths=episodes["length"].to_numpy(np.int64),
        episode_starts=episodes["dataset_from_index"].to_numpy(np.int64),
        robot_type=info.get("robot_type"), info=info,
    )
    return meta, episodes


class LeRobotDataset:
    """Random access reader (an :class:`~vlaforge.data.base.EpisodeReader`) for a LeRobot v3.0 directory.

    Args:
        root: dataset directory.
        history: number of observation frames returned (ending at the requested frame).
        chunk: number of actions returned (starting at the requested frame).
        video_cache: ``"preload"`` decodes every video once into memory (fast random access; the right choice
            for datasets that fit in RAM), ``"episode"`` decodes one episode at a time with a small LRU cache,
            ``"auto"`` preloads under ``preload_limit_gb``.
        episodes: optional subset of episode indices to expose.
    """

    def __init__(self, root: str | Path, *, history: int = 1, chunk: int = 1, video_cache: str = "auto",
                 preload_limit_gb: float = 4.0, episodes: list[int] | None = None) -> None:
        if history < 1 or chunk < 1:
            raise ValueError(f"history and chunk must be >= 1, got history={history}, chunk={chunk}")
        self.meta, self._episodes = load_meta(root)
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
        if video_cache == "auto":
            video_cache = "preload" if self._video_bytes() < preload_limit_gb * 1e9 else "episode"
        if video_cache not in ("preload", "episode"):
            raise ValueError(f"video_cache: expected 'auto', 'preload' or 'episode', got {video_cache!r}")
        self.video_cache = video_cache
        self._file_frames: dict[Path, np.ndarray] = {}
        self._episode_frames: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        if video_cache == "preload":
            for path in sorted(set(self._video_files.values())):
                self._file_frames[path] = self._decode_file(path)

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
        table = pa.concat_tables(tables).combine_chunks()
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
            elif pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
                self._columns[name] = np.asarray(col.to_pylist(), dtype=spec.dtype).reshape(n, *spec.shape)
            else:
                self._columns[name] = col.to_numpy().astype(spec.dtype)
        order = self._columns["index"]
        if not np.array_equal(order, np.arange(n)):
            raise DatasetError(f"{self.root}: the 'index' column is not 0..{n - 1} in file order")
        ep_col = self._columns["episode_index"]
        for e, (s, length) in enumerate(zip(self.meta.episode_starts, self.meta.episode_lengths, strict=True)):
            if not (ep_col[s : s + length] == e).all():
                files_for = self._episodes.loc[e, ["data/chunk_index", "data/file_index"]].tolist()
                path = DATA_PATH.format(chunk_index=int(files_for[0]), file_index=int(files_for[1]))
                raise DatasetError(f"{self.root}: episode {e} rows are missing or out of place in {path}")

    def _check_videos(self) -> dict[tuple[str, int], Path]:
        files = {}
        template = self.meta.info.get("video_path") or VIDEO_PATH
        for k in [k for k, f in self.meta.features.items() if f.dtype == "video"]:
            for e in range(self.meta.num_episodes):
                row = self._episodes.iloc[e]
                path = self.root / template.format(video_key=k, chunk_index=int(row[f"videos/{k}/chunk_index"]),
                                                   file_index=int(row[f"videos/{k}/file_index"]))
                if not path.is_file():
                    raise DatasetError(f"{self.root}: episode {e}, camera '{k}': video file "
                                       f"{path.relative_to(self.root)} not found")
                files[(k, e)] = path
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
            self._episode_frames[(key, ep)] = cached
            if len(self._episode_frames) > 8 * max(1, len(self.video_keys)):
                self._episode_frames.popitem(last=False)
        else:
            self._episode_frames.move_to_end((key, ep))
        return cached

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
                v = self._episode_video(k, ep)[obs_idx]
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
                out[k] = self._episode_video(k, ep)
            elif spec.dtype == "image":
                out[k] = np.stack([np.asarray(Image.open(io.BytesIO(b["bytes"])).convert("RGB"))
                                   for b in self._columns[k][start : start + length]])
            else:
                out[k] = self._columns[k][start : start + length]
        out[TASK] = self.meta.tasks[int(self._columns["task_index"][start])]
        return out

    def column(self, key: str) -> np.ndarray:
        """A whole numeric column over the exposed episodes (for statistics)."""
        return self._columns[key][self._frame_table]


def compute_dataset_stats(root: str | Path, write: bool = True) -> Stats:
    """Recompute ``meta/stats.json`` from the data (exact numeric quantiles; sampled video frames)."""
    ds = LeRobotDataset(root, video_cache="episode")
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
