"""Small shared helpers: progress bars, seeding, "did you mean" hints, the CPU's description."""

from __future__ import annotations

import contextlib
import difflib
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy and rich load where they are used: the registry and config import this module
    from rich.progress import Progress


BF16_UNITS = frozenset({"amx_bf16", "amx_tile", "avx512_bf16"})  # CPU flags of bf16 matmul units


def cpu_info() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (model name, flags ...); empty where there is none."""
    path = "/proc/cpuinfo"
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        first = f.read().split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def cpu_bf16_units() -> list[str]:
    """The CPU's bf16 matmul units (AMX, AVX512-BF16): where bf16 autocast pays on a CPU."""
    return sorted(set(cpu_info().get("flags", "").split()) & BF16_UNITS)


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """A rich progress bar (hidden when disabled or when ``VLAFORGE_NO_PROGRESS`` is set)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    disable = not enabled or bool(os.environ.get("VLAFORGE_NO_PROGRESS"))
    with Progress(*columns, disable=disable, transient=False) as bar:
        yield bar


def did_you_mean(name: str, known: Iterable[str], template: str = " (did you mean {}?)", n: int = 1,
                 cutoff: float = 0.6, show: Callable[[str], str] = repr, alias: Mapping[str, str] | None = None) -> str:
    """``template`` filled with the known names closest to ``name`` (" or "-joined, each through ``show``), or ""
    when none is close. ``alias`` maps a matched name to the one to show (repeats dropped)."""
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)
    if alias:
        close = list(dict.fromkeys(alias.get(c, c) for c in close))
    return template.format(" or ".join(map(show, close))) if close else ""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch's global generators (numpy and torch imported lazily)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class PinnedThreads:
    """``n`` single-thread executors: work for slot ``i`` always runs on thread ``i % n``.

    Simulators that render through EGL/OpenGL own a context that may be current in one thread only, so an
    environment must be created, stepped and closed on the same thread. MuJoCo releases the GIL while it
    simulates and renders, so ``n`` threads render ``n`` environments in parallel.
    """

    def __init__(self, n: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.n = max(1, n)
        self._pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sim{i}") for i in range(self.n)]

    def map(self, fn, slots: list[int], *args_per_slot) -> list:
        """``[fn(slot, *args) for slot ...]`` with slot ``i`` on thread ``i % n``; re-raises the first error."""
        futures = [self._pools[s % self.n].submit(fn, s, *(a[k] for a in args_per_slot))
                   for k, s in enumerate(slots)]
        return [f.result() for f in futures]

    def close(self) -> None:
        for p in self._pools:
            p.shutdown(wait=True)

    def __enter__(self) -> PinnedThreads:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
