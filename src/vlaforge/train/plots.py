"""Loss-curve plots (PNG) from a run's ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _ema(x: np.ndarray, alpha: float = 0.1) -> np.ndarray:
    out = np.empty_like(x)
    acc = x[0]
    for i, v in enumerate(x):
        acc = alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def plot_losses(metrics_path: Path, png: Path, title: str | None = None) -> Path | None:
    """Training loss (raw + smoothed, log scale) and learning rate against step."""
    if not metrics_path.exists():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=1, label="loss")
    ax.plot(steps, _ema(loss), color="tab:blue", lw=2, label="loss (EMA)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    if "lr" in rows[0]:
        ax2 = ax.twinx()
        ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", lw=1, label="lr")
        ax2.set_ylabel("learning rate", color="tab:orange")
    ax.legend(loc="upper right")
    ax.set_title(title or f"training loss: {metrics_path.parent.name}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png
