"""Test helpers: tiny LeRobot v3 datasets written by our own writer, and tiny policy configs.

(Not named ``tests.*``: draccus installs a top-level ``tests`` package that would shadow it.)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from vlaforge.types import ACTION, OBS_STATE, FeatureSpec, image_key

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> ModuleType:
    """``bench/NAME.py`` imported by path (bench/ is not a package) as ``_bench_NAME``, registered in
    ``sys.modules`` because dataclasses look their module up while the file runs."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


IMG = 32  # fixture camera resolution; tiny backbones use image_size=32 in the tests
LENGTHS = (7, 12, 5)
TASKS = ("open the drawer", "press the button from the top", "open the drawer")


def smooth_frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Natural-ish images (gradients + a moving blob) that survive video compression well."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        cy, cx = h / 2 + 6 * np.sin(t / 3 + seed), w / 2 + 6 * np.cos(t / 4 + seed)
        blob = 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30)
        for c in range(3):
            out[t, :, :, c] = np.clip(base[c] + 40 * (xx / w) - 30 * (yy / h) + blob * (c + 1) / 3, 0, 255)
    return out


def make_episode(n: int, seed: int, cams: tuple[str, ...] = ("front", "wrist"), size: int = IMG,
                 state_dim: int = 4, action_dim: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ep = {image_key(c): smooth_frames(n, size, size, seed * 10 + i) for i, c in enumerate(cams)}
    ep[OBS_STATE] = np.cumsum(rng.normal(0, 0.1, (n, state_dim)), 0).astype(np.float32)
    ep[ACTION] = np.clip(rng.normal(0, 0.5, (n, action_dim)), -1, 1).astype(np.float32)
    return ep


def features(cams: tuple[str, ...] = ("front", "wrist"), size: int = IMG, state_dim: int = 4,
             action_dim: int = 4) -> dict[str, FeatureSpec]:
    f = {image_key(c): FeatureSpec("video", (size, size, 3)) for c in cams}
    f[OBS_STATE] = FeatureSpec("float32", (state_dim,))
    f[ACTION] = FeatureSpec("float32", (action_dim,))
    return f


def write_dataset(root: Path, cams: tuple[str, ...] = ("front", "wrist"), state_dim: int = 4,
                  action_dim: int = 4, extra: dict | None = None, extra_values=None,
                  **writer_kw) -> list[dict[str, np.ndarray]]:
    """Write the 3-episode fixture; ``extra`` features get per-episode values from ``extra_values(ep, n)``."""
    from vlaforge.data.lerobot import LeRobotWriter

    episodes = []
    feats = {**features(cams, IMG, state_dim, action_dim), **(extra or {})}
    with LeRobotWriter(root, 10, feats, overwrite=True, **writer_kw) as w:
        for i, (n, task) in enumerate(zip(LENGTHS, TASKS, strict=True)):
            ep = make_episode(n, i, cams, IMG, state_dim, action_dim)
            if extra_values is not None:
                ep.update(extra_values(i, n))
            w.add_episode(ep, task)
            episodes.append({**ep, "task": task})
    return episodes


def tiny_policy_config(head: str = "tokens", chunk: int = 4, **head_kw):
    from vlaforge.backbones.base import BACKBONES
    from vlaforge.heads.base import HEADS
    from vlaforge.policy import PolicyConfig

    return PolicyConfig(backbone=BACKBONES.get("smolvlm")(size="tiny", image_size=IMG),
                        head=HEADS.get(head)(**head_kw), chunk=chunk, exec_steps=min(4, chunk))
