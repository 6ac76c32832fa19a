"""Episode sources of other formats and their conversion to the LeRobot v3 layout.

Every foreign format (``hdf5``, ``libero``, ``rlds``, ``calvin``) is read by a :class:`Source`: it knows its features up
front and yields :class:`Episode` objects in the canonical keys of :mod:`vlaforge.types`
(``observation.images.<camera>`` uint8 (T, H, W, 3), ``observation.state`` and ``action`` float32 (T, D), and
optional per-frame string features such as ``reasoning``). :func:`convert` writes any source with the one
:class:`~vlaforge.data.lerobot.LeRobotWriter`, so training only ever reads one format.

A source raises :class:`SourceError` naming the episode and the file when its input is corrupt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vlaforge.registry import Registry
from vlaforge.types import FeatureSpec

SOURCES: Registry[Any] = Registry("sources", lazy={
    "hdf5": "vlaforge.data.hdf5", "libero": "vlaforge.data.hdf5", "calvin": "vlaforge.data.calvin",
    "rlds": "vlaforge.data.rlds",
})


class SourceError(RuntimeError):
    """Corrupt or inconsistent input; the message names the episode and the file."""

    def __init__(self, episode: int | str, path: str | Path, problem: str) -> None:
        self.episode, self.path, self.problem = episode, str(path), problem
        super().__init__(f"episode {episode} ({path}): {problem}")


@dataclass
class Episode:
    frames: dict[str, np.ndarray]  # canonical key -> (T, ...) array; every value has the same length T
    task: str  # the natural-language instruction
    origin: str  # file / record the episode came from, for error messages

    def __len__(self) -> int:
        return len(next(iter(self.frames.values())))


@runtime_checkable
class Source(Protocol):
    """An iterable of episodes with known features."""

    fps: int
    robot_type: str | None
    features: dict[str, FeatureSpec]

    def __len__(self) -> int: ...  # number of episodes

    def __iter__(self) -> Iterator[Episode]: ...


def check_episode(ep: Episode, features: dict[str, FeatureSpec], index: int) -> None:
    """Shape/dtype/finiteness checks of one episode against the source's declared features."""
    lengths = {k: len(v) for k, v in ep.frames.items()}
    if not lengths or min(lengths.values()) == 0:
        raise SourceError(index, ep.origin, "empty episode")
    if len(set(lengths.values())) != 1:
        raise SourceError(index, ep.origin, f"features have different lengths {lengths}")
    missing = sorted(set(features) - set(ep.frames))
    extra = sorted(set(ep.frames) - set(features))
    if missing or extra:
        raise SourceError(index, ep.origin, f"features: missing {missing}, unexpected {extra}")
    for k, spec in features.items():
        v = ep.frames[k]
        if spec.is_visual:
            if v.dtype != np.uint8 or tuple(v.shape[1:]) != tuple(spec.shape):
                raise SourceError(index, ep.origin, f"'{k}': expected uint8 (T, {tuple(spec.shape)}), "
                                                    f"got {v.dtype} {v.shape}")
        elif spec.dtype != "string":
            if v.reshape(len(v), -1).shape[1] != int(np.prod(spec.shape)):
                raise SourceError(index, ep.origin, f"'{k}': expected (T, {tuple(spec.shape)}), got {v.shape}")
            if not np.isfinite(v).all():
                raise SourceError(index, ep.origin, f"'{k}' has non-finite values")


def convert(source: Source, out: str | Path, *, overwrite: bool = False, progress: bool = True,
            **writer_kw: Any) -> Path:
    """Write every episode of ``source`` into a new LeRobot v3 dataset at ``out``; returns ``out``."""
    from vlaforge.data.lerobot import LeRobotWriter
    from vlaforge.utils import progress_bar

    out = Path(out)
    with LeRobotWriter(out, source.fps, source.features, robot_type=source.robot_type, overwrite=overwrite,
                       **writer_kw) as w, progress_bar(progress) as bar:
        job = bar.add_task(f"convert -> {out.name}", total=len(source))
        for i, ep in enumerate(source):
            check_episode(ep, source.features, i)
            w.add_episode({k: ep.frames[k] for k in source.features}, ep.task)
            bar.advance(job)
    return out
