"""A resumable, deterministic training data stream.

Sample ``n`` of the stream (``n = step * batch_size + i``) is frame ``perm_e[n % N]`` of epoch ``e = n // N``,
where ``perm_e`` is a permutation drawn from ``(seed, e)``; its augmentation seed is ``(seed, n)``. Resuming at
step ``s`` therefore reproduces exactly the batches an uninterrupted run would have seen, whatever the number of
loader workers.

With ``clip_frames = k > 1`` the epoch order amortises video decoding (:class:`ClipOrder`): each episode is cut
into clips of ``k`` consecutive frames (the cut points shift by a random offset every epoch), the clips are put in
a random order, and the frames are then shuffled within consecutive windows of ``shuffle_buffer`` positions (a
bounded shuffle buffer). It is still a permutation of the frames per epoch, so every frame is drawn exactly once
per epoch (no frequency bias); what changes is the correlation inside a step: a clip's frames all land within
two consecutive windows, so a batch of ``b`` holds at most ``min(k, b)`` frames of any one clip, and a frame
shares its batch with on average about ``(k - 1) · b / shuffle_buffer`` frames of its own clip (``shuffle_buffer
>= b``; 0 for ``k = 1``, today's default). Neighbouring frames of a clip share groups of pictures, so with
``video_cache=seek`` one decode serves up to ``k`` samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vlaforge.data.base import EpisodeReader
from vlaforge.data.lerobot import DatasetError
from vlaforge.processors.base import AUG_SEED, Pipeline, Step, collate
from vlaforge.processors.image import ColorJitter, RandomResizedCrop, RandomRotation, RandomShift
from vlaforge.types import ACTION, DATASET, OBS_IS_PAD


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


def check_finite_item(item: dict[str, Any], source: str) -> None:
    """Refuse NaN or inf in a raw training item's float arrays (action targets, states), naming the dataset, the
    episode and the frame that holds it. Costs one ``isfinite`` per array."""
    for k, v in item.items():
        if not isinstance(v, np.ndarray) or v.dtype.kind != "f" or np.isfinite(v).all():
            continue
        ep, frame = int(item.get("episode_index", -1)), int(item.get("frame_index", -1))
        if k == ACTION or (OBS_IS_PAD in item and v.ndim >= 2):  # time-major: (chunk | history, ...)
            row = int(np.flatnonzero(~np.isfinite(v.reshape(len(v), -1)).all(1))[0])
            # an action chunk starts at the frame (rows past the end repeat the last frame, which comes first);
            # a history window ends at it (rows before the start repeat frame 0)
            frame = frame + row if k == ACTION else max(0, frame - (len(v) - 1) + row)
        name = item.get(DATASET) or source
        raise DatasetError(f"training data {name}: '{k}' is not finite at episode {ep}, frame {frame} (`vlaforge "
                           f"stats DATASET` finds them all; fix or drop those episodes)")


class _Processed(Dataset):
    def __init__(self, reader: EpisodeReader, pipeline: Pipeline, seed: int) -> None:
        self.reader, self.pipeline, self.seed = reader, pipeline, seed
        meta = getattr(reader, "meta", None)
        self.source = str(getattr(meta, "root", None) or type(reader).__name__)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, position = key
        item = dict(self.reader[index])
        check_finite_item(item, self.source)
        item[AUG_SEED] = np.random.SeedSequence([self.seed, position]).generate_state(1)[0]
        return self.pipeline(item)


class ClipOrder:
    """The epoch order of the clip sampler (see the module docstring): a permutation of ``sum(lengths)`` reader
    positions, drawn from ``(seed, epoch)`` only (so resuming reproduces it)."""

    def __init__(self, starts: np.ndarray, lengths: np.ndarray, clip_frames: int, shuffle_buffer: int,
                 seed: int) -> None:
        if clip_frames < 1 or shuffle_buffer < 1:
            raise ValueError(f"clip sampler: expected clip_frames >= 1 and shuffle_buffer >= 1, got {clip_frames} "
                             f"and {shuffle_buffer}")
        self.starts, self.lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        self.k, self.buffer, self.seed = clip_frames, shuffle_buffer, seed
        self.n = int(self.lengths.sum())
        self._episode = np.repeat(np.arange(len(self.lengths)), self.lengths)
        self._position = np.repeat(self.starts, self.lengths) + (np.arange(self.n) - np.repeat(
            np.concatenate([[0], np.cumsum(self.lengths)[:-1]]), self.lengths))
        self._local = self._position - np.repeat(self.starts, self.lengths)

    def clips(self, epoch: int) -> np.ndarray:
        """Clip id of each frame (in ``_position`` order) for this epoch's cut points."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        offset = rng.integers(0, self.k, len(self.lengths))
        per_ep = (self.lengths + offset + self.k - 1) // self.k  # clips per episode
        first = np.concatenate([[0], np.cumsum(per_ep)[:-1]])
        return first[self._episode] + (self._local + offset[self._episode]) // self.k

    def __call__(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 2])
        clip = self.clips(epoch)
        rank = rng.permutation(int(clip.max()) + 1)
        order = np.lexsort((self._local, rank[clip]))  # clips in random order, frames in order within a clip
        window = np.arange(self.n) // self.buffer
        return self._position[order][np.lexsort((rng.random(self.n), window))]


class _StreamSampler(Sampler):
    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, steps: int,
                 draw: Callable[[int, int], int] | None = None, rank: int = 0, world: int = 1,
                 order: Callable[[int], np.ndarray] | None = None) -> None:
        self.n, self.batch_size, self.seed, self.draw = n, batch_size, seed, draw
        self.rank, self.world = rank, world
        self.start_step, self.steps = start_step, steps
        self.order = order
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: self.order(epoch) if self.order is not None
                           else np.random.default_rng([self.seed, epoch]).permutation(self.n)}
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
                steps: int, num_workers: int = 0, rank: int = 0, world: int = 1, clip_frames: int = 1,
                shuffle_buffer: int = 256, device: torch.device | str | None = None) -> DataLoader:
    """Micro-batches ``start_step .. steps-1`` of process ``rank`` of ``world`` (see the module docstring).

    ``clip_frames > 1`` draws the epoch order from :class:`ClipOrder` (readers that know their episodes through
    ``episode_spans()``; others count as one episode); a mixture always draws per position.

    Process ``r`` takes positions ``[(s·world + r)·B, (s·world + r + 1)·B)`` of micro-step ``s``, so the union of
    all processes' micro-batches is exactly the global batch a single process with batch ``world·B`` would see.

    For a CUDA ``device`` the batches come in pinned (page-locked) host memory, so
    :func:`~vlaforge.processors.base.to_device` copies them asynchronously; on the CPU nothing changes.
    """
    if len(reader) == 0:
        raise ValueError("training data has no frames")
    for part in getattr(reader, "readers", [reader]):  # whole columns at once where the reader can (fail early)
        if hasattr(part, "check_finite"):
            part.check_finite("; refusing to train on them (fix or drop those episodes)")
    # a mixture draws a weighted dataset per position; a single dataset walks seeded permutations
    order = None
    if clip_frames > 1 and getattr(reader, "draw", None) is None:
        spans = reader.episode_spans() if hasattr(reader, "episode_spans") else ([0], [len(reader)])
        order = ClipOrder(*spans, clip_frames, shuffle_buffer, seed)
    sampler = _StreamSampler(len(reader), batch_size, seed, start_step, steps, getattr(reader, "draw", None),
                             rank, world, order)
    return DataLoader(_Processed(reader, pipeline, seed), batch_sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=False, pin_memory=_on_cuda(device),
                      generator=torch.Generator().manual_seed(seed))


def _on_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"

