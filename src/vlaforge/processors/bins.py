"""Bin grids of discrete action (and proprio) tokens, OpenVLA's convention: ``n`` *edges*, value ``x`` -> bin
``k = digitize(clip(x), edges) - 1`` in ``[0, n)`` (``k = n - 1`` only at the top edge), decoded to the ``n - 1``
centres between edges.

Grids: ``uniform_edges`` — ``linspace(low, high, n)`` (OpenVLA, HybridVLA, LLaVA-VLA's default); ``norm_bins`` —
LLaVA-VLA's fixed hand-made grid (``use_norm_bins``): 256 edges over [-1, 1], denser near 0 (15 / 40 / 42 / 62 /
42 / 40 / 15 edges on [-1, -.5, -.25, -.1, .1, .25, .5, 1], the last segment closed). Here so that the prompt
step (state written as tokens) and the tokens head read the same grid.
"""

from __future__ import annotations

import numpy as np

GRIDS = ("uniform_edges", "norm_bins")
# LLaVA-VLA's use_norm_bins segments: (start, stop, edges); every segment but the last excludes its stop
_NORM_SEGMENTS = ((-1.0, -0.5, 15), (-0.5, -0.25, 40), (-0.25, -0.1, 42), (-0.1, 0.1, 62), (0.1, 0.25, 42),
                  (0.25, 0.5, 40), (0.5, 1.0, 15))


def bin_edges(grid: str, n_bins: int = 256, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """The float64 edges of ``grid``; ``norm_bins`` is fixed (256 edges over [-1, 1])."""
    if grid == "uniform_edges":
        return np.linspace(low, high, n_bins)
    if grid == "norm_bins":
        n = sum(s[2] for s in _NORM_SEGMENTS)
        if n_bins != n or (low, high) != (-1.0, 1.0):
            raise ValueError(f"norm_bins: LLaVA-VLA's grid has {n} edges over [-1, 1], got n_bins={n_bins} over "
                             f"[{low}, {high}]")
        last = len(_NORM_SEGMENTS) - 1
        return np.concatenate([np.linspace(a, b, k, endpoint=i == last) for i, (a, b, k) in enumerate(_NORM_SEGMENTS)])
    raise ValueError(f"bin grid: expected one of {GRIDS}, got {grid!r}")


def digitize(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin indices ``digitize(clip(x, edges[0], edges[-1]), edges) - 1`` (numpy, float64 as the originals)."""
    x = np.clip(np.asarray(x, dtype=np.float64), edges[0], edges[-1])
    return np.digitize(x, edges) - 1
