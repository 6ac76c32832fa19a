"""LIBERO data: ``vlaforge convert libero`` reads LIBERO's robomimic HDF5 (one file per task) into LeRobot v3 with
the env adapter's conventions; a LeRobot-format LIBERO dataset (its own feature names) trains as it is."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import smooth_frames, tiny_policy_config, write_dataset
from vlaforge.data.convert import SOURCES, SourceError
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.types import ACTION, OBS_STATE, TASK, image_key

VIDEO_MAE = 4.0  # h264 / yuv420p round trip of smooth frames
TASKS = ("pick up the alphabet soup and place it in the basket", "pick up the ketchup and place it in the basket")


def write_libero_file(path: Path, instruction: str, lengths: tuple[int, ...], seed: int) -> dict[str, dict]:
    """A file as LIBERO's ``scripts/create_dataset.py`` writes it (images as rendered: upside down)."""
    rng = np.random.default_rng(seed)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                 "domain_name": "robosuite", "language_instruction": instruction})
        data.attrs["env_name"] = "Libero_Tabletop_Manipulation"
        for d, n in enumerate(lengths):
            ep = {"agentview_rgb": smooth_frames(n, 32, 32, seed * 10 + d),
                  "eye_in_hand_rgb": smooth_frames(n, 32, 32, seed * 10 + d + 5),
                  "ee_pos": rng.normal(0, 0.3, (n, 3)), "ee_ori": rng.normal(0, 1.0, (n, 3)),
                  "gripper_states": rng.uniform(-0.04, 0.04, (n, 2)), "joint_states": rng.normal(0, 1, (n, 7)),
                  "actions": np.clip(rng.normal(0, 0.5, (n, 7)), -1, 1)}
            g = data.create_group(f"demo_{d}")
            obs = g.create_group("obs")
            for k in ("agentview_rgb", "eye_in_hand_rgb", "ee_pos", "ee_ori", "gripper_states", "joint_states"):
                obs.create_dataset(k, data=ep[k])
            obs.create_dataset("ee_states", data=np.concatenate([ep["ee_pos"], ep["ee_ori"]], 1))
            g.create_dataset("actions", data=ep["actions"])
            g.create_dataset("dones", data=np.eye(1, n, n - 1, dtype=np.uint8)[0])
            g.attrs["num_samples"] = n
            demos[f"demo_{d}"] = ep
    return demos


@pytest.fixture
def libero_dir(tmp_path):
    root = tmp_path / "libero_object"
    root.mkdir()
    a = write_libero_file(root / "pick_up_the_alphabet_soup_demo.hdf5", TASKS[0], (5, 4, 3), 1)
    b = write_libero_file(root / "pick_up_the_ketchup_demo.hdf5", TASKS[1], (6,), 2)
    # natural demo order inside a file (demo_2 before demo_10 would matter with 11+ demos): files sort by name
    return root, [(TASKS[0], a[f"demo_{i}"]) for i in range(3)] + [(TASKS[1], b["demo_0"])]


def _state(ep: dict) -> np.ndarray:
    return np.concatenate([ep["ee_pos"], ep["ee_ori"], ep["gripper_states"]], 1).astype(np.float32)


def test_libero_source_gives_the_env_adapters_conventions_exactly(libero_dir):
    root, refs = libero_dir
    src = SOURCES.get("libero")(root)
    assert len(src) == 4 and src.fps == 20
    assert src.features[OBS_STATE].shape == (8,) and src.features[ACTION].shape == (7,)
    assert set(src.features) == {image_key("image"), image_key("wrist_image"), OBS_STATE, ACTION}
    for i, (task, ref) in enumerate(refs):
        ep = src.read(i)
        assert ep.task == task and ":data/demo_" in ep.origin
        # rotated by 180 degrees, as the adapter turns robosuite's raw render: img[::-1, ::-1]
        np.testing.assert_array_equal(ep.frames[image_key("image")], ref["agentview_rgb"][:, ::-1, ::-1])
        np.testing.assert_array_equal(ep.frames[image_key("wrist_image")], ref["eye_in_hand_rgb"][:, ::-1, ::-1])
        np.testing.assert_array_equal(ep.frames[OBS_STATE], _state(ref))  # [ee_pos, axis-angle, gripper qpos]
        np.testing.assert_array_equal(ep.frames[ACTION], ref["actions"].astype(np.float32))


def test_convert_libero_round_trips_through_lerobot_v3(libero_dir, tmp_path):
    from vlaforge.cli.main import main

    root, refs = libero_dir
    assert main(["convert", "libero", str(root), "--out", str(tmp_path / "v3")]) == 0
    ds = LeRobotDataset(tmp_path / "v3")
    assert ds.meta.num_episodes == 4 and ds.meta.fps == 20 and ds.meta.robot_type == "panda"
    assert ds.meta.tasks == list(TASKS)
    for e, (task, ref) in enumerate(refs):
        got = ds.episode(e)
        assert got[TASK] == task
        np.testing.assert_array_equal(got[OBS_STATE], _state(ref))
        np.testing.assert_array_equal(got[ACTION], ref["actions"].astype(np.float32))
        rotated = ref["agentview_rgb"][:, ::-1, ::-1].astype(int)
        assert np.abs(got[image_key("image")].astype(int) - rotated).mean() < VIDEO_MAE
        assert np.abs(got[image_key("image")].astype(int) - ref["agentview_rgb"]).mean() > 3 * VIDEO_MAE


def test_libero_file_without_instruction_or_demos_is_named(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    write_libero_file(root / "a.hdf5", TASKS[0], (3,), 0)
    with h5py.File(root / "a.hdf5", "a") as f:
        del f["data"].attrs["problem_info"]
    with pytest.raises(SourceError, match=r"a\.hdf5:data/demo_0.*language_instruction.*--task"):
        SOURCES.get("libero")(root)
    assert SOURCES.get("libero")(root, task="do it").read(0).task == "do it"
    with h5py.File(root / "b.hdf5", "w") as f:
        f.create_group("data")
    with pytest.raises(SourceError, match=r"b\.hdf5.*no 'data/demo_\*' groups"):
        SOURCES.get("libero")(root)


def test_lerobot_libero_dataset_with_its_feature_names_trains(tmp_path):
    from vlaforge.train.config import DataConfig, TrainConfig
    from vlaforge.train.trainer import train

    write_dataset(tmp_path / "libero_v3", cams=("image", "wrist_image"), state_dim=8, action_dim=7)
    cfg = TrainConfig(policy=tiny_policy_config("mlp"), data=DataConfig(path=str(tmp_path / "libero_v3")),
                      out=str(tmp_path / "run"), steps=2, batch_size=4, save_every=2, log_every=1)
    train(cfg, show_progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(np.isfinite(json.loads(x)["loss"]) for x in lines)
    saved = json.loads(next((tmp_path / "run").rglob("config.json")).read_text())
    robot = json.dumps(saved)
    assert '"wrist_image"' in robot and '"image"' in robot
