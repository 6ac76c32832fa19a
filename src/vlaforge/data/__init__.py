"""Datasets: the LeRobot v3 format (read and write), statistics, and readers of other formats.

Training opens every dataset through :func:`open_reader`: a reader class registered in :data:`FORMATS` takes
``(root, *, history, chunk, video_cache)`` and is an :class:`~vlaforge.data.base.EpisodeReader`; its classmethod
``detect(root) -> bool`` says whether a directory is in its format (``format="auto"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlaforge.registry import Registry

FORMATS: Registry[type] = Registry("formats", lazy={"lerobot": "vlaforge.data.lerobot"})


def open_reader(root: str | Path, format: str = "auto", **options: Any) -> Any:
    """The reader of the dataset at ``root``: the registered ``format``, or with ``"auto"`` the one that detects it.

    ``options`` (``history``, ``chunk``, ``video_cache``) go to the reader's constructor.
    """
    if format != "auto":
        return FORMATS.get(format)(root, **options)
    found = [name for name, cls in FORMATS.items() if getattr(cls, "detect", None) and cls.detect(Path(root))]
    if len(found) != 1:
        what = "no registered format reads it" if not found else f"several formats read it: {found}"
        raise ValueError(f"dataset {root}: {what} (formats: {', '.join(FORMATS.names())}); "
                         "pass --data.format=NAME, or convert it with `vlaforge convert`")
    return FORMATS.get(found[0])(root, **options)
