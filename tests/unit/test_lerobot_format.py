"""LeRobot v3 writer/reader: exact round trips, layout, windows, padding masks, rollover, corrupt input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import LENGTHS, TASKS, write_dataset
from vlaforge.data.lerobot import DatasetError, LeRobotDataset, compute_dataset_stats
from vlaforge.data.stats import QUANTILES
from vlaforge.types import ACTION, ACTION_IS_PAD, OBS_IS_PAD, OBS_STATE, TASK, image_key

VIDEO_MAE = 4.0  # mean absolute pixel error allowed by the h264 / yuv420p round trip on smooth images


def test_round_trip_is_exact_for_numbers_and_tasks_and_close_for_video(dataset):
    root, episodes = dataset
    ds = LeRobotDataset(root)
    assert len(ds) == sum(LENGTHS)
    assert ds.meta.tasks == list(dict.fromkeys(TASKS))
    for e, src in enumerate(episodes):
        got = ds.episode(e)
        np.testing.assert_array_equal(got[ACTION], src[ACTION])
        np.testing.assert_array_equal(got[OBS_STATE], src[OBS_STATE])
        assert got[TASK] == src["task"]
        for cam in ("front", "wrist"):
            k = image_key(cam)
            assert got[k].shape == src[k].shape and got[k].dtype == np.uint8
            assert np.abs(got[k].astype(int) - src[k]).mean() < VIDEO_MAE


def test_layout_matches_lerobot_v3(dataset):
    root, _ = dataset
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 2
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in info["features"]
    cam = info["features"][image_key("front")]
    assert cam["dtype"] == "video" and cam["shape"] == [32, 32, 3] and cam["info"]["video.codec"] == "h264"
    assert (root / "videos" / image_key("front") / "chunk-000" / "file-000.mp4").is_file()
    tasks = pd.read_parquet(root / "meta/tasks.parquet")  # as LeRobot reads it: task strings are the index
    assert list(tasks.index) == ["open the drawer", "press the button from the top"]
    assert tasks.loc["press the button from the top", "task_index"] == 1
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pandas()
    assert list(eps["length"]) == list(LENGTHS)
    assert list(eps["dataset_from_index"]) == [0, 7, 19] and list(eps["dataset_to_index"]) == [7, 19, 24]
    assert eps["videos/observation.images.front/from_timestamp"].tolist() == [0.0, 0.7, 1.9]
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column("index").to_pylist() == list(range(24))
    state_type = data.schema.field(OBS_STATE).type
    assert pa.types.is_fixed_size_list(state_type) and state_type.list_size == 4
    assert state_type.value_type == pa.float32()


def test_stats_match_numpy_and_recompute(dataset):
    root, episodes = dataset
    ds = LeRobotDataset(root)
    allact = np.concatenate([e[ACTION] for e in episodes]).astype(np.float64)
    s = ds.meta.stats[ACTION]
    np.testing.assert_allclose(s["mean"], allact.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s["std"], allact.std(0), rtol=1e-6)
    np.testing.assert_allclose(s["min"], allact.min(0))
    np.testing.assert_allclose(s["q01"], np.quantile(allact, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(s["q99"], np.quantile(allact, 0.99, axis=0), rtol=1e-6)
    assert set(QUANTILES) <= set(s)
    img = ds.meta.stats[image_key("front")]
    assert img["mean"].shape == (3, 1, 1) and img["mean"].min() >= 0 and img["mean"].max() <= 1
    again = compute_dataset_stats(root, write=False)
    np.testing.assert_allclose(again[ACTION]["q99"], s["q99"], rtol=1e-6)


def test_history_window_and_action_chunk_padding_at_episode_ends(dataset):
    root, episodes = dataset
    ds = LeRobotDataset(root, history=3, chunk=4)
    # first frame of episode 1: history reaches before the start -> clamped to frame 0 and flagged
    item = ds[7]
    assert item["episode_index"] == 1 and item["frame_index"] == 0
    assert item[OBS_IS_PAD].tolist() == [True, True, False]
    np.testing.assert_array_equal(item[OBS_STATE], episodes[1][OBS_STATE][[0, 0, 0]])
    assert item[image_key("front")].shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(item[ACTION], episodes[1][ACTION][0:4])
    assert not item[ACTION_IS_PAD].any()
    # second-to-last frame of episode 1: the chunk runs 2 past the end -> last action repeated, flagged
    item = ds[7 + 10]
    assert item[ACTION_IS_PAD].tolist() == [False, False, True, True]
    np.testing.assert_array_equal(item[ACTION], episodes[1][ACTION][[10, 11, 11, 11]])
    np.testing.assert_array_equal(item[OBS_STATE], episodes[1][OBS_STATE][8:11])
    assert not item[OBS_IS_PAD].any()


def test_episode_cache_mode_equals_preload(dataset):
    root, _ = dataset
    a, b = LeRobotDataset(root, chunk=2, video_cache="preload"), LeRobotDataset(root, chunk=2, video_cache="episode")
    for i in range(0, len(a), 5):
        np.testing.assert_array_equal(a[i][image_key("wrist")], b[i][image_key("wrist")])


def test_rollover_into_several_files_reads_back(tmp_path):
    root = tmp_path / "rolled"
    episodes = write_dataset(root, data_files_size_in_mb=0, video_files_size_in_mb=0, chunks_size=2)
    assert len(list((root / "data").glob("*/*.parquet"))) == 3  # one file per episode, over two chunk dirs
    assert (root / "data/chunk-001/file-000.parquet").is_file()
    ds = LeRobotDataset(root)
    for e, src in enumerate(episodes):
        np.testing.assert_array_equal(ds.episode(e)[ACTION], src[ACTION])
        assert np.abs(ds.episode(e)[image_key("front")].astype(int) - src[image_key("front")]).mean() < VIDEO_MAE


def test_missing_and_broken_files_name_episode_and_file(tmp_path, dataset):
    src, _ = dataset
    root = tmp_path / "broken"
    shutil.copytree(src, root)
    video = root / "videos" / image_key("wrist") / "chunk-000" / "file-000.mp4"
    video.write_bytes(video.read_bytes()[:200])  # truncated mp4
    with pytest.raises(DatasetError, match=r"episodes \[0, 1, 2\].*file-000.mp4"):
        LeRobotDataset(root, video_cache="preload")
    with pytest.raises(DatasetError, match=r"episode 0, camera 'observation.images.wrist'"):
        LeRobotDataset(root, video_cache="episode")[0]
    video.unlink()
    with pytest.raises(DatasetError, match=r"episode 0, camera 'observation.images.wrist'.*not found"):
        LeRobotDataset(root)
    (root / "data/chunk-000/file-000.parquet").unlink()
    with pytest.raises(DatasetError, match="no data files"):
        LeRobotDataset(root)


def test_old_version_is_refused(tmp_path, dataset):
    src, _ = dataset
    root = tmp_path / "old"
    shutil.copytree(src, root)
    info = json.loads((root / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="v2.1.*expected v3"):
        LeRobotDataset(root)


def test_writer_rejects_bad_episodes(tmp_path):
    from helpers import features, make_episode
    from vlaforge.data.lerobot import LeRobotWriter

    with LeRobotWriter(tmp_path / "w", 10, features(), overwrite=True) as w:
        ep = make_episode(5, 0)
        bad = dict(ep, **{ACTION: ep[ACTION][:, :3]})
        with pytest.raises(ValueError, match="feature 'action'"):
            w.add_episode(bad, "t")
        with pytest.raises(ValueError, match="missing"):
            w.add_episode({k: v for k, v in ep.items() if k != OBS_STATE}, "t")
        w.add_episode(ep, "t")
    with pytest.raises(FileExistsError):
        LeRobotWriter(tmp_path / "w", 10, features())
