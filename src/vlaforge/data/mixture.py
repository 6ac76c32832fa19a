"""Weighted mixtures of datasets, each keeping its own statistics (OXE-style training, HybridVLA's unnorm_key).

A :class:`MixtureDataset` concatenates readers that share one robot spec (cameras, state and action dims;
checked, every difference listed). Training draws sample ``n`` from dataset ``d`` with probability
``weights[d]`` (times the dataset's frame count when ``balance``, as OpenVLA's ``balance_weights``), then a
uniform frame of ``d``; both draws are a pure function of ``(seed, n)``, so resuming reproduces the stream.
Every item carries its dataset's name under :data:`~vlaforge.types.DATASET`, which per-dataset normalization
reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vlaforge.data.stats import Stats, StatsError
from vlaforge.types import DATASET, FeatureMismatchError, RobotSpec


class MixtureDataset:
    def __init__(self, readers: Mapping[str, Any], weights: Mapping[str, float] | None = None, *,
                 balance: bool = False) -> None:
        if not readers:
            raise ValueError("mixture: no datasets")
        weights = dict(weights) if weights is not None else dict.fromkeys(readers, 1.0)
        if set(weights) != set(readers):
            raise ValueError(f"mixture weights: expected one per dataset {sorted(readers)}, got {sorted(weights)}")
        for name, w in weights.items():
            if not np.isfinite(w) or w < 0:
                raise ValueError(f"mixture weight of '{name}': expected a finite value >= 0, got {w}")
        self.names = list(readers)
        self.readers = [readers[n] for n in self.names]
        self.meta = self.readers[0].meta  # shared features (checked below); per-dataset stats in ``stats``
        self.robot = self._common_robot()
        sizes = np.array([len(r) for r in self.readers], dtype=np.float64)
        if (sizes == 0).any():
            raise ValueError(f"mixture: datasets {[n for n, s in zip(self.names, sizes, strict=True) if not s]} "
                             f"have no frames")
        raw = np.array([weights[n] for n in self.names], dtype=np.float64) * (sizes if balance else 1.0)
        if raw.sum() <= 0:
            raise ValueError("mixture weights: at least one must be > 0")
        self.probabilities = raw / raw.sum()
        self._cum = np.cumsum(self.probabilities)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def _common_robot(self) -> RobotSpec:
        first = self.readers[0].meta.robot_spec()
        problems = []
        for name, r in zip(self.names[1:], self.readers[1:], strict=True):
            problems += [f"{name}: {d}" for d in first.differences(r.meta.robot_spec(), this=self.names[0],
                                                                   that=name)]
        if problems:
            raise FeatureMismatchError(problems, "mixture datasets do not share cameras/dims")
        return first

    @property
    def robots(self) -> dict[str, RobotSpec]:
        """Each dataset's robot spec (same cameras and dims; image sizes may differ)."""
        return {name: r.meta.robot_spec() for name, r in zip(self.names, self.readers, strict=True)}

    @property
    def stats(self) -> dict[str, Stats]:
        """Each dataset's own statistics."""
        out = {}
        for name, r in zip(self.names, self.readers, strict=True):
            if r.meta.stats is None:
                raise StatsError(f"mixture dataset '{name}' ({r.meta.root}) has no meta/stats.json; run "
                                 f"`vlaforge stats {r.meta.root}`")
            out[name] = r.meta.stats
        return out

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        d = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return d, i - int(self._offsets[d])

    def __getitem__(self, i: int) -> dict[str, Any]:
        d, j = self.locate(int(i) % len(self))
        item = dict(self.readers[d][j])
        item[DATASET] = self.names[d]
        return item

    def draw(self, seed: int, position: int) -> int:
        """The global frame index of stream position ``position`` (weighted dataset, then a uniform frame)."""
        rng = np.random.default_rng([seed, position, 7])
        u, v = rng.random(2)
        d = min(int(np.searchsorted(self._cum, u, side="right")), len(self.readers) - 1)
        size = int(self._offsets[d + 1] - self._offsets[d])
        return int(self._offsets[d]) + min(int(v * size), size - 1)
