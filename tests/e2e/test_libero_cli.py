"""LIBERO end to end through the command line: scripted collect (LeRobot v3 + LIBERO's HDF5) -> train -> eval."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from vlaforge.cli.main import main

pytest.importorskip("libero.libero", reason="the LIBERO extra is not installed (pip install 'vlaforge[libero]')")

TASK = "pick_up_the_alphabet_soup_and_place_it_in_the_basket"


def test_collect_both_formats_train_eval(tmp_path):
    data, run, ev = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    assert main(["collect", "libero", "--tasks", "libero_object:0", "--episodes", "1", "--out", str(data),
                 "--env.image_size=32", "--format", "libero", "--workers", "1"]) == 0
    info = json.loads((data / "meta/info.json").read_text())
    assert info["total_episodes"] == 1 and info["robot_type"] == "libero"
    assert info["features"]["observation.state"]["shape"] == [8] and info["features"]["action"]["shape"] == [7]
    assert {"observation.images.image", "observation.images.wrist_image"} <= set(info["features"])
    frames = pq.read_table(next((data / "data").rglob("*.parquet"))).to_pandas()
    actions = np.stack(frames["action"].to_numpy())
    states = np.stack(frames["observation.state"].to_numpy())

    # LIBERO's own layout, one file per task, the same episode frame for frame
    with h5py.File(data / "libero" / f"{TASK}_demo.hdf5", "r") as f:
        d = f["data"]
        assert d.attrs["num_demos"] == 1 and d.attrs["total"] == len(actions)
        problem = json.loads(d.attrs["problem_info"])
        assert problem["language_instruction"] == "pick up the alphabet soup and place it in the basket"
        assert problem["problem_name"] == "libero_floor_manipulation"
        demo = d["demo_0"]
        np.testing.assert_allclose(demo["actions"][()], actions, atol=1e-6)
        obs = demo["obs"]
        for key, shape in [("agentview_rgb", (32, 32, 3)), ("eye_in_hand_rgb", (32, 32, 3)), ("ee_pos", (3,)),
                           ("ee_ori", (3,)), ("gripper_states", (2,)), ("joint_states", (7,))]:
            assert obs[key].shape == (len(actions), *shape), key
        # the vlaforge state is ee_pos + ee_ori + gripper_states of the same step
        lib_state = np.concatenate([obs["ee_pos"][()], obs["ee_ori"][()], obs["gripper_states"][()]], axis=1)
        np.testing.assert_allclose(lib_state, states, atol=1e-5)
        assert demo["dones"][-1] == 1 and demo["states"].shape[0] == len(actions)

    # `vlaforge convert libero` of those files gives the LeRobot v3 collection back, frame for frame
    conv = tmp_path / "converted"
    assert main(["convert", "libero", str(data / "libero"), "--out", str(conv), "--robot_type", "libero"]) == 0
    from vlaforge.data.lerobot import LeRobotDataset

    a, b = LeRobotDataset(data, video_cache="preload"), LeRobotDataset(conv, video_cache="preload")
    assert len(a) == len(b) == len(actions)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x["task"] == y["task"]
        for key in ("observation.images.image", "observation.images.wrist_image", "observation.state", "action"):
            np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=f"{key} at frame {i}")

    common = ["--data", str(data), "--out", str(run), "--backbone.image_size=32", "--batch_size=4", "--log_every=1"]
    assert main(["train", "quickstart_tokens", *common, "--steps=2"]) == 0
    assert main(["eval", str(run / "checkpoints" / "last"), "--env", "libero", "--tasks", "libero_object:0",
                 "--episodes", "1", "--env.image_size=32", "--env.max_steps=3", "--out", str(ev)]) == 0
    result = json.loads((ev / "eval.json").read_text())
    assert result["tasks"][TASK]["episodes"] == 1 and result["episodes"][0]["steps"] == 3
    assert result["expert"]["tasks"][TASK]["episodes"] == 1
