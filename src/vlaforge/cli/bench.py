"""vlaforge bench backbones|inference|data|train|serve [ARGS]: run a benchmark script of the source tree.

The scripts live in ``bench/`` of a checkout (they are not installed with the package); each writes
``bench/results/NAME.json`` and prints a Markdown table. ``vlaforge bench NAME --help`` shows its options.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import vlaforge


def _bench_dir() -> Path | None:
    for root in (Path(vlaforge.__file__).resolve().parents[2], Path.cwd()):
        if (root / "bench").is_dir():
            return root / "bench"
    return None


def main(argv: list[str]) -> int:
    folder = _bench_dir()
    names = sorted(p.stem for p in folder.glob("*.py")) if folder else []
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + (f"\n\nbenchmarks: {', '.join(names)}" if names else ""))
        return 0
    if folder is None:
        raise FileNotFoundError("no bench/ folder (the scripts ship with a source checkout)")
    name = argv[0]
    if name not in names:
        raise ValueError(f"unknown benchmark {name!r}; choose from {names}")
    sys.argv = [str(folder / f"{name}.py"), *argv[1:]]
    sys.path.insert(0, str(folder))
    try:
        runpy.run_path(str(folder / f"{name}.py"), run_name="__main__")
    finally:
        sys.path.remove(str(folder))
    return 0
