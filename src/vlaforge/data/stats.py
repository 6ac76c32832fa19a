"""Per-dimension feature statistics in LeRobot's ``meta/stats.json`` layout.

Numeric features get ``min, max, mean, std, count`` and the quantiles ``q01 q10 q50 q90 q99`` per dimension.
Visual features get per-channel statistics of pixels scaled to [0, 1] with shape (3, 1, 1), computed on a
sample of frames. Dataset statistics are exact over all frames (quantiles included); per-episode statistics
are also written to the episodes table, as LeRobot does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES = ("min", "max", "mean", "std", "count", *QUANTILES)

Stats = dict[str, dict[str, np.ndarray]]


class StatsError(ValueError):
    """Statistics are missing, non-finite or malformed."""


def numeric_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over axis 0 of an (N, D) or (N,) array; scalars become shape (1,)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    x = x.reshape(len(x), -1)
    if len(x) == 0:
        raise StatsError("cannot compute statistics of an empty feature")
    out = {
        "min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
        "count": np.array([len(x)], dtype=np.int64),
    }
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)
    out.update({k: qs[i] for i, k in enumerate(QUANTILES)})
    return out


def image_stats(frames: np.ndarray, max_frames: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-channel stats of uint8 (N, H, W, 3) frames scaled to [0, 1], shaped (3, 1, 1) like LeRobot's."""
    n = len(frames)
    if n == 0:
        raise StatsError("cannot compute image statistics of zero frames")
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max_frames), replace=False))
    px = frames[idx].reshape(-1, frames.shape[-1]).astype(np.float32) / 255.0
    s = numeric_stats(px[:: max(1, len(px) // 200_000)])  # subsample pixels for the quantiles
    s = {k: (v.reshape(-1, 1, 1) if k != "count" else np.array([len(idx)], dtype=np.int64)) for k, v in s.items()}
    return s


def aggregate(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Count-weighted aggregate of per-episode stats (LeRobot's rule; quantiles are weighted means)."""
    counts = np.array([float(s["count"][0]) for s in per_episode])
    w = counts / counts.sum()
    mean = sum(wi * s["mean"] for wi, s in zip(w, per_episode, strict=True))
    var = sum(wi * (s["std"] ** 2 + (s["mean"] - mean) ** 2) for wi, s in zip(w, per_episode, strict=True))
    out = {
        "min": np.min([s["min"] for s in per_episode], axis=0),
        "max": np.max([s["max"] for s in per_episode], axis=0),
        "mean": mean, "std": np.sqrt(var), "count": np.array([int(counts.sum())], dtype=np.int64),
    }
    for q in QUANTILES:
        out[q] = sum(wi * s[q] for wi, s in zip(w, per_episode, strict=True))
    return out


def check_finite(stats: Mapping[str, Mapping[str, np.ndarray]], where: str = "stats") -> None:
    """NaN or inf anywhere in the statistics is an error naming the feature, stat and dims."""
    for feat, s in stats.items():
        for name, v in s.items():
            arr = np.asarray(v, dtype=np.float64)
            bad = ~np.isfinite(arr)
            if bad.any():
                dims = np.flatnonzero(bad.reshape(-1)).tolist()[:8]
                raise StatsError(f"{where}: '{feat}/{name}' is not finite at dims {dims}")


def stats_to_json(stats: Stats) -> dict:
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


def stats_from_json(d: dict) -> Stats:
    out: Stats = {}
    for f, s in d.items():
        out[f] = {k: np.asarray(v, dtype=np.int64 if k == "count" else np.float64) for k, v in s.items()}
    return out


def write_stats(path: Path, stats: Stats) -> None:
    check_finite(stats, str(path))
    path.write_text(json.dumps(stats_to_json(stats), indent=2))


def read_stats(path: Path) -> Stats:
    """Statistics from ``path``; missing, malformed or non-finite ones are a StatsError saying how to recompute."""
    fix = f"(run `vlaforge stats {path.parent.parent}` to recompute it from the data)"
    if not path.is_file():
        raise StatsError(f"statistics file not found: {path} {fix}")
    try:
        stats = stats_from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError) as e:
        raise StatsError(f"{path}: malformed ({e}); expected {{feature: {{stat: list}}}} {fix}") from e
    try:
        check_finite(stats, str(path))
    except StatsError as e:
        raise StatsError(f"{e} {fix}") from e
    return stats


def flatten_episode_stats(stats: Stats) -> dict[str, list]:
    """``{"stats/<feature>/<stat>": value}`` columns for the episodes table."""
    return {f"stats/{f}/{k}": np.asarray(v).tolist() for f, s in stats.items() for k, v in s.items()}


def is_close(a: Stats, b: Stats, rtol: float = 1e-6) -> bool:
    if set(a) != set(b):
        return False
    return all(np.allclose(a[f][k], b[f][k], rtol=rtol, atol=0) for f in a for k in a[f] if k in b[f])


