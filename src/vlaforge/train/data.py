"""A resumable, deterministic training data stream.

Sample ``n`` of the stream (``n = step * batch_size + i``) is frame ``perm_e[n % N]`` of epoch ``e = n // N``,
where ``perm_e`` is a permutation drawn from ``(seed, e)``; its augmentation seed is ``(seed, n)``. Resuming at
step ``s`` therefore reproduces exactly the batches an uninterrupted run would have seen, whatever the number of
loader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vlaforge.data.base import EpisodeReader
from vlaforge.processors.base import AUG_SEED, Pipeline, Step, collate
from vlaforge.processors.image import ColorJitter, RandomResizedCrop, RandomRotation, RandomShift


def augmentation(cfg: Any, cameras: list[str]) -> list[Step]:
    """Train-time image augmentation steps from a :class:`~vlaforge.train.config.DataConfig`."""
    steps: list[Step] = []
    if cfg.crop_scale < 1:
        steps.append(RandomResizedCrop(cameras=cameras, scale=(cfg.crop_scale, 1.0)))
    if cfg.rotate_deg > 0:
        steps.append(RandomRotation(cameras=cameras, degrees=cfg.rotate_deg))
    if cfg.shift_pad > 0:
        steps.append(RandomShift(cameras=cameras, pad=cfg.shift_pad))
    if cfg.color_jitter > 0:
        x = cfg.color_jitter
        steps.append(ColorJitter(cameras=cameras, brightness=x, contrast=x, saturation=x, hue=x / 4))
    return steps


class _Processed(Dataset):
    def __init__(self, reader: EpisodeReader, pipeline: Pipeline, seed: int) -> None:
        self.reader, self.pipeline, self.seed = reader, pipeline, seed

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, position = key
        item = dict(self.reader[index])
        item[AUG_SEED] = np.random.SeedSequence([self.seed, position]).generate_state(1)[0]
        return self.pipeline(item)


class _StreamSampler(Sampler):
    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, steps: int,
                 draw: Callable[[int, int], int] | None = None, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.draw = n, batch_size, seed, draw
        self.rank, self.world = rank, world
        self.start_step, self.steps = start_step, steps
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.steps):
            batch = []
            for i in range(self.batch_size):
                pos = (step * self.world + self.rank) * self.batch_size + i
                index = self.draw(self.seed, pos) if self.draw else int(self._perm(pos // self.n)[pos % self.n])
                batch.append((index, pos))
            yield batch


def make_loader(reader: EpisodeReader, pipeline: Pipeline, *, batch_size: int, seed: int, start_step: int,
                steps: int, num_workers: int = 0, rank: int = 0, world: int = 1) -> DataLoader:
    """Micro-batches ``start_step .. steps-1`` of process ``rank`` of ``world`` (see the module docstring).

    Process ``r`` takes positions ``[(s·world + r)·B, (s·world + r + 1)·B)`` of micro-step ``s``, so the union of
    all processes' micro-batches is exactly the global batch a single process with batch ``world·B`` would see.
    """
    if len(reader) == 0:
        raise ValueError("training data has no frames")
    # a mixture draws a weighted dataset per position; a single dataset walks seeded permutations
    sampler = _StreamSampler(len(reader), batch_size, seed, start_step, steps, getattr(reader, "draw", None),
                             rank, world)
    return DataLoader(_Processed(reader, pipeline, seed), batch_sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=False,
                      generator=torch.Generator().manual_seed(seed))
