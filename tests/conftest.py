"""Session fixtures and environment for the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("VLAFORGE_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import write_dataset


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """A 3-episode, 2-camera, 32x32 LeRobot v3 dataset (episode lengths 7, 12, 5; two tasks)."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    return root, write_dataset(root)
