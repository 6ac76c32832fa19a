"""vlaforge stats DATASET: recompute meta/stats.json and print it."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from vlaforge.data.lerobot import compute_dataset_stats


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: vlaforge stats DATASET")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    stats = compute_dataset_stats(argv[0])
    table = Table(title=f"{argv[0]}/meta/stats.json")
    for col in ("feature", "mean", "std", "q01", "q99"):
        table.add_column(col)
    fmt = lambda v: np.array2string(np.asarray(v).reshape(-1), precision=3, max_line_width=60)  # noqa: E731
    for k, s in stats.items():
        table.add_row(k, fmt(s["mean"]), fmt(s["std"]), fmt(s["q01"]), fmt(s["q99"]))
    Console().print(table)
    return 0
