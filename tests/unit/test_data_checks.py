"""Datasets that lie about themselves are refused with one line naming the file, the episode and the values:
fps and frame counts against the videos and timestamps, declared dtypes and shapes against the parquet schema,
non-finite data (stats and training), and ``collect --out`` that would destroy or lose data."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlaforge.cli.main import main
from vlaforge.data.lerobot import DatasetError, LeRobotDataset, compute_dataset_stats
from vlaforge.data.stats import StatsError
from vlaforge.processors.base import Pipeline
from vlaforge.train.data import make_loader
from vlaforge.types import ACTION, OBS_STATE, RobotSpec, image_key

DATA = "data/chunk-000/file-000.parquet"


def _copy(dataset, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(dataset[0], root)
    return root


def _edit_info(root: Path, feature: str | None = None, **changes: Any) -> None:
    """Set top-level keys of meta/info.json, or the fields of one of its features."""
    info = json.loads((root / "meta/info.json").read_text())
    (info["features"][feature] if feature else info).update(changes)
    (root / "meta/info.json").write_text(json.dumps(info))


def _edit_column(root: Path, key: str, edit) -> None:
    """Rewrite one column of the (single) data file through ``edit(np.ndarray) -> np.ndarray``."""
    path = root / DATA
    table = pq.read_table(path)
    col = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        values = edit(col.flatten().to_numpy().reshape(len(col), -1).copy())
        new = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), col.type.value_type), type=col.type)
    else:
        new = pa.array(edit(col.to_numpy().copy()), col.type)
    pq.write_table(table.set_column(table.schema.get_field_index(key), key, new), path)


# ---------------------------------------------------------------- 1. fps and frame counts
@pytest.mark.parametrize("fps", [0, -3, "10"])
def test_nonpositive_or_malformed_fps_names_info_json(dataset, tmp_path, fps):
    root = _copy(dataset, tmp_path)
    _edit_info(root, fps=fps)
    with pytest.raises(DatasetError, match=r"meta/info.json: 'fps' must be a positive integer, got"):
        LeRobotDataset(root)


def test_edited_fps_is_refused_against_timestamps_and_video_streams(dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)  # written at 10 fps
    _edit_info(root, fps=5)
    with pytest.raises(DatasetError, match=rf"episode 0, frame 2 in {DATA}: timestamp 0.2000 s, expected .* 0.4000 s "
                                           r"with meta/info.json fps 5"):
        LeRobotDataset(root)
    # `vlaforge stats` must not rewrite stats.json from the wrong frames: one line, nothing written
    before = (root / "meta/stats.json").read_text()
    assert main(["stats", str(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fps 5" in err
    assert (root / "meta/stats.json").read_text() == before
    # timestamps rewritten to agree with the edit: the mp4 streams still say 10 fps
    _edit_column(root, "timestamp", lambda ts: (ts * 2).astype(np.float32))
    with pytest.raises(DatasetError, match=r"episode 0, camera 'observation.images.front': "
                                           r"videos/observation.images.front/chunk-000/file-000.mp4 runs at 10 fps, "
                                           r"meta/info.json says fps 5"):
        LeRobotDataset(root)


def test_episode_past_the_end_of_its_video_is_refused(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    eps = pq.read_table(path).to_pandas()
    for cam in ("front", "wrist"):
        eps.loc[2, f"videos/{image_key(cam)}/from_timestamp"] = 2.0  # 5 frames from frame 20 of a 24-frame file
        eps.loc[2, f"videos/{image_key(cam)}/to_timestamp"] = 2.5
    pq.write_table(pa.Table.from_pandas(eps, preserve_index=False), path)
    with pytest.raises(DatasetError, match=r"episode 2, camera 'observation.images.front': .*file-000.mp4 has 24 "
                                           r"frames, the episode needs frames \[20, 25\)"):
        LeRobotDataset(root, video_cache="episode")


# ---------------------------------------------------------------- 2. declared dtypes and shapes
def test_declared_dtype_that_would_truncate_is_refused(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    _edit_info(root, ACTION, dtype="int8")
    with pytest.raises(DatasetError, match=rf"feature 'action': meta/info.json declares dtype int8, {DATA} stores "
                                           r"float32"):
        LeRobotDataset(root)


def test_declared_shape_and_unknown_dtype_are_named(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    _edit_info(root, OBS_STATE, shape=[5])
    with pytest.raises(DatasetError, match=rf"feature '{OBS_STATE}': meta/info.json declares shape \[5\] \(5 values "
                                           rf"per frame\), {DATA} holds 4 values per frame"):
        LeRobotDataset(root)
    _edit_info(root, OBS_STATE, shape=[4], dtype="float42")
    with pytest.raises(DatasetError, match=rf"meta/info.json: features.{OBS_STATE}: malformed"):
        LeRobotDataset(root)


# ---------------------------------------------------------------- 3. non-finite data and statistics
@pytest.fixture
def nan_dataset(dataset, tmp_path) -> Path:
    root = _copy(dataset, tmp_path)

    def poison(a):
        a[7 + 3, 2] = np.nan  # episode 1 starts at global frame 7
        a[7 + 5, :] = np.inf
        return a

    _edit_column(root, ACTION, poison)
    return root


def test_stats_names_non_finite_data_and_writes_nothing(nan_dataset, capsys):
    before = (nan_dataset / "meta/stats.json").read_text()
    with pytest.raises(DatasetError, match=rf"'action' is not finite at episode 1, frame 3 \(dims \[2\], in {DATA}\); "
                                           r"5 non-finite values in 2 frames; refusing"):
        compute_dataset_stats(nan_dataset)
    assert main(["stats", str(nan_dataset)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "episode 1, frame 3" in err and "stats.json:" not in err
    assert (nan_dataset / "meta/stats.json").read_text() == before


@pytest.mark.parametrize("bad", ['{"action": {"mean": [NaN, 0, 0, 0]}}', "not json", '["a list"]'])
def test_bad_stats_json_alone_is_recomputed(dataset, tmp_path, bad):
    root = _copy(dataset, tmp_path)
    good = json.loads((root / "meta/stats.json").read_text())
    (root / "meta/stats.json").write_text(bad)
    with pytest.raises(StatsError, match=r"meta/stats.json.*run `vlaforge stats .*` to recompute"):
        LeRobotDataset(root)
    compute_dataset_stats(root)
    assert json.loads((root / "meta/stats.json").read_text())[ACTION] == good[ACTION]
    assert LeRobotDataset(root).meta.stats is not None


class _Plain:
    """A reader without whole-column checks: only the per-sample check sees its values."""

    def __init__(self, reader: LeRobotDataset) -> None:
        self.reader, self.meta = reader, reader.meta

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.reader[i]


def _first_batch(reader, batch_size: int | None = None):
    loader = make_loader(reader, Pipeline([]), batch_size=batch_size or len(reader), seed=0, start_step=0, steps=1)
    return next(iter(loader))


def test_training_refuses_non_finite_targets_naming_dataset_episode_frame(nan_dataset):
    reader = LeRobotDataset(nan_dataset, chunk=4)
    with pytest.raises(DatasetError, match=rf"{nan_dataset}: 'action' is not finite at episode 1, frame 3 .*refusing "
                                           r"to train"):
        _first_batch(reader)  # before the first step
    with pytest.raises(DatasetError, match=rf"training data {nan_dataset}: 'action' is not finite at episode 1, "
                                           r"frame [35] "):
        _first_batch(_Plain(reader))  # any reader: where samples are read
    _first_batch(LeRobotDataset(nan_dataset, chunk=4, episodes=[0, 2]), 4)  # the other episodes still train


def test_training_names_the_frame_of_a_non_finite_state_in_a_history_window(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    _edit_column(root, OBS_STATE, lambda a: np.where(np.arange(len(a))[:, None] == 7 + 4, np.nan, a))
    with pytest.raises(DatasetError, match=rf"training data .*'{OBS_STATE}' is not finite at episode 1, frame 4 "):
        _first_batch(_Plain(LeRobotDataset(root, history=3, episodes=[1])))


# ---------------------------------------------------------------- 4. collect --out
@dataclass
class _FakeEnv:
    task: str
    calls: list
    fail: bool = False
    max_steps: int = 4
    fps: int = 10
    instruction: str = "do it"
    robot: RobotSpec = field(default_factory=lambda: RobotSpec(cameras={"front": (8, 8)}, state_dim=3, action_dim=2))

    def reset(self, seed: int, render: bool = True) -> dict[str, Any]:
        self.t = 0
        return self._obs()

    def _obs(self) -> dict[str, Any]:
        return {image_key("front"): np.full((8, 8, 3), 10 * self.t, np.uint8),
                OBS_STATE: np.full(3, self.t, np.float32)}

    def expert_action(self) -> np.ndarray:
        if self.fail:
            raise RuntimeError("simulator crashed")
        return np.full(2, self.t, np.float32)

    def step(self, action, render: bool = True):
        self.t += 1
        return self._obs(), self.t == 3, {}

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _FakeEnvConfig:
    calls: list
    fail_task: str = ""
    type: str = "fake"

    def make(self, task: str) -> _FakeEnv:
        self.calls.append(task)
        return _FakeEnv(task, self.calls, fail=task == self.fail_task)

    def to_dict(self) -> dict:
        return {"type": self.type}


def _collect(out: Path, calls: list, overwrite: bool = False, fail_task: str = ""):
    from vlaforge.eval.collect import collect

    return collect(_FakeEnvConfig(calls, fail_task), ["a", "b"], 2, out, overwrite=overwrite, workers=1,
                   show_progress=False)


def test_collect_refuses_a_bad_out_before_any_work(tmp_path):
    calls: list = []
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"--out .*file: is a file"):
        _collect(tmp_path / "file", calls)
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"--out .*user: directory exists and is not empty"):
        _collect(user, calls)
    with pytest.raises(FileExistsError, match=r"--out .*user: not empty and not a dataset vlaforge wrote"):
        _collect(user, calls, overwrite=True)
    assert calls == [] and (user / "thesis.tex").read_text() == "keep me"
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(DatasetError, match=r"locked is not writable"):
            _collect(locked / "out", calls)
        assert calls == []


def test_collect_overwrite_replaces_only_its_own_dataset_and_keeps_it_on_failure(tmp_path):
    out = tmp_path / "demos"
    calls: list = []
    _collect(out, calls)
    info = json.loads((out / "meta/info.json").read_text())
    assert "vlaforge_version" in info and not (tmp_path / "demos.partial").exists()
    (out / "NOTES.md").write_text("mine")
    before = (out / "meta/info.json").read_text()
    with pytest.raises(RuntimeError, match="simulator crashed"):
        _collect(out, calls, overwrite=True, fail_task="b")
    assert (out / "meta/info.json").read_text() == before  # the previous dataset is untouched
    assert LeRobotDataset(tmp_path / "demos.partial").meta.num_episodes == 2  # task a's episodes kept aside
    shutil.rmtree(tmp_path / "demos.partial")
    _collect(out, calls, overwrite=True)
    assert (out / "NOTES.md").read_text() == "mine"
    assert LeRobotDataset(out).meta.num_episodes == 4 and (out / "meta/collection.json").is_file()
    with pytest.raises(RuntimeError, match="simulator crashed"):  # nothing collected: nothing left behind
        _collect(tmp_path / "new", calls, fail_task="a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos"]
