"""HDF5 (ACT/DexVLA) and CALVIN sources: fixtures written by each format's own writer (h5py, numpy), converted
to LeRobot v3 and compared frame by frame; corrupt input names the episode and the file."""

from __future__ import annotations

import io
import os

import h5py
import numpy as np
import pytest
from PIL import Image

from helpers import smooth_frames
from vlaforge.cli.main import main
from vlaforge.data.calvin import ANNOTATIONS, CalvinSource
from vlaforge.data.convert import SourceError, convert
from vlaforge.data.hdf5 import HDF5Source
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.types import ACTION, OBS_STATE, REASONING, TASK, image_key

VIDEO_MAE = 4.0  # h264 / yuv420p tolerance on smooth images (as in test_lerobot_format)
JPEG_MAE = 3.0


def write_act_episode(path, n: int, seed: int, *, compress: bool = False, reasoning: bool = True,
                      language: str | None = "fold the towel") -> dict[str, np.ndarray]:
    """One episode the way ACT's recorder / DexVLA's scripts lay it out, written with h5py."""
    rng = np.random.default_rng(seed)
    src = {"cam_high": smooth_frames(n, 24, 32, seed), "cam_wrist": smooth_frames(n, 24, 32, seed + 50),
           "qpos": rng.normal(size=(n, 14)), "qvel": rng.normal(size=(n, 14)), "action": rng.normal(size=(n, 14)),
           "reasoning": [f"step {t // 3} of episode {seed}" for t in range(n)]}
    with h5py.File(path, "w") as f:
        f.attrs["sim"] = True
        f.attrs["compress"] = compress
        obs = f.create_group("observations")
        images = obs.create_group("images")
        for cam in ("cam_high", "cam_wrist"):
            if compress:  # ACT's compressed variant: encoded bytes, zero-padded to the longest
                blobs = []
                for img in src[cam]:
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="JPEG", quality=95)
                    blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
                width = max(len(b) for b in blobs)
                padded = np.zeros((n, width), dtype=np.uint8)
                for t, b in enumerate(blobs):
                    padded[t, : len(b)] = b
                images.create_dataset(cam, data=padded)
            else:
                images.create_dataset(cam, data=src[cam], chunks=(1, 24, 32, 3))
        obs.create_dataset("qpos", data=src["qpos"])
        obs.create_dataset("qvel", data=src["qvel"])
        f.create_dataset("action", data=src["action"])
        if language is not None:
            f.create_dataset("language_raw", data=np.array([language.encode()]))
        if reasoning:
            f.create_dataset("substep_reasonings", data=np.array([r.encode() for r in src["reasoning"]]))
    return src


@pytest.fixture
def act_dir(tmp_path):
    root = tmp_path / "act"
    root.mkdir()
    eps = [write_act_episode(root / f"episode_{i}.hdf5", n, i) for i, n in enumerate((6, 9, 4))]
    write_act_episode(root / "episode_10.hdf5", 5, 10)  # natural order: 10 after 2
    return root, [*eps, None]


def test_hdf5_convert_round_trip(act_dir, tmp_path):
    root, eps = act_dir
    src = HDF5Source(root, cameras={"cam_high": "top", "cam_wrist": "wrist"}, state_keys=("qpos", "qvel"))
    assert [p.name for p in src.files] == ["episode_0.hdf5", "episode_1.hdf5", "episode_2.hdf5", "episode_10.hdf5"]
    assert src.features[OBS_STATE].shape == (28,) and src.features[ACTION].shape == (14,)
    assert REASONING in src.features
    out = convert(src, tmp_path / "lerobot", progress=False)
    ds = LeRobotDataset(out)
    assert ds.meta.num_episodes == 4 and ds.meta.fps == 50
    for e, ref in enumerate(eps[:3]):
        got = ds.episode(e)
        np.testing.assert_array_equal(got[ACTION], ref["action"].astype(np.float32))
        np.testing.assert_array_equal(got[OBS_STATE],
                                      np.concatenate([ref["qpos"], ref["qvel"]], 1).astype(np.float32))
        assert got[TASK] == "fold the towel"
        assert list(got[REASONING]) == ref["reasoning"]
        for cam, ours in (("cam_high", "top"), ("cam_wrist", "wrist")):
            assert got[image_key(ours)].shape == ref[cam].shape
            assert np.abs(got[image_key(ours)].astype(int) - ref[cam]).mean() < VIDEO_MAE


def test_hdf5_compressed_images_and_task_option(tmp_path):
    root = tmp_path / "act_c"
    root.mkdir()
    ref = write_act_episode(root / "episode_0.hdf5", 5, 3, compress=True, reasoning=False, language=None)
    with pytest.raises(SourceError, match=r"episode 0 .*episode_0.hdf5.*language_raw.*--task"):
        HDF5Source(root)
    src = HDF5Source(root, task="stack the cups")
    assert REASONING not in src.features
    ep = src.read(0)
    assert ep.task == "stack the cups"
    assert np.abs(ep.frames[image_key("cam_high")].astype(int) - ref["cam_high"]).mean() < JPEG_MAE


def test_hdf5_unknown_camera_is_named(act_dir):
    root, _ = act_dir
    expected = r"cameras \['cam_left'\] not found; the file has \['cam_high', 'cam_wrist'\]"
    with pytest.raises(SourceError, match=expected):
        HDF5Source(root, cameras=["cam_left"])


def test_truncated_hdf5_names_episode_and_file(act_dir, tmp_path):
    root, _ = act_dir
    victim = root / "episode_2.hdf5"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    src = HDF5Source(root)
    with pytest.raises(SourceError, match=r"episode 2 \(.*episode_2\.hdf5\)"):
        convert(src, tmp_path / "out", progress=False)


def test_hdf5_missing_dataset_is_named(tmp_path):
    root = tmp_path / "act_m"
    root.mkdir()
    write_act_episode(root / "episode_0.hdf5", 4, 0)
    write_act_episode(root / "episode_1.hdf5", 4, 1)
    with h5py.File(root / "episode_1.hdf5", "a") as f:
        del f["action"]
    with pytest.raises(SourceError, match=r"episode 1 .*episode_1\.hdf5.*missing dataset '/action'"):
        list(HDF5Source(root))


# ------------------------------------------------------------------------------------------------- CALVIN
def write_calvin(root, segments=((0, 5), (6, 9), (10, 16)), gap: int = 2) -> dict:
    """A CALVIN split as its recorder lays it out: per-frame npz + the language annotation dict (np.save)."""
    root.mkdir(parents=True)
    last = segments[-1][1] + gap
    rng = np.random.default_rng(0)
    static, gripper = smooth_frames(last + 1, 40, 40, 1), smooth_frames(last + 1, 16, 16, 2)
    robot_obs, rel = rng.normal(size=(last + 1, 15)), rng.uniform(-1, 1, size=(last + 1, 7))
    for t in range(last + 1):
        np.savez_compressed(root / f"episode_{t:07d}.npz", rgb_static=static[t], rgb_gripper=gripper[t],
                            robot_obs=robot_obs[t], rel_actions=rel[t], actions=rel[t] * 2,
                            scene_obs=np.zeros(24), depth_static=np.zeros((40, 40), np.float32))
    anns = [f"instruction {i}" for i in range(len(segments))]
    (root / "lang_annotations").mkdir()
    np.save(root / ANNOTATIONS, {"language": {"ann": anns, "task": [f"task_{i}" for i in range(len(segments))],
                                              "emb": np.zeros((len(segments), 1, 8), np.float32)},
                                 "info": {"episodes": [], "indx": list(segments)}}, allow_pickle=True)
    return {"static": static, "gripper": gripper, "robot_obs": robot_obs, "rel": rel, "anns": anns,
            "segments": segments}


def test_calvin_convert_round_trip(tmp_path):
    ref = write_calvin(tmp_path / "training")
    assert main(["convert", "calvin", str(tmp_path / "training"), "--out", str(tmp_path / "lr")]) == 0
    ds = LeRobotDataset(tmp_path / "lr")
    assert ds.meta.num_episodes == 3 and ds.meta.fps == 30
    for e, (s, t) in enumerate(ref["segments"]):
        got = ds.episode(e)
        np.testing.assert_array_equal(got[OBS_STATE], ref["robot_obs"][s : t + 1].astype(np.float32))
        np.testing.assert_array_equal(got[ACTION], ref["rel"][s : t + 1].astype(np.float32))
        assert got[TASK] == ref["anns"][e]
        assert np.abs(got[image_key("static")].astype(int) - ref["static"][s : t + 1]).mean() < VIDEO_MAE
        assert np.abs(got[image_key("gripper")].astype(int) - ref["gripper"][s : t + 1]).mean() < VIDEO_MAE


def test_calvin_corrupt_and_missing_frames_name_the_file(tmp_path):
    write_calvin(tmp_path / "training")
    victim = tmp_path / "training" / "episode_0000007.npz"
    victim.write_bytes(victim.read_bytes()[:100])
    src = CalvinSource(tmp_path / "training", action_key="actions")
    with pytest.raises(SourceError, match=r"episode 1 \(.*episode_0000007\.npz\): unreadable npz"):
        src.read(1)
    (tmp_path / "training" / "episode_0000012.npz").unlink()
    with pytest.raises(SourceError, match=r"episode 2 \(.*episode_0000012\.npz\): frame file is missing"):
        src.read(2)


def test_calvin_annotations_refuse_arbitrary_pickles(tmp_path):
    write_calvin(tmp_path / "training")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))  # (not print: importing ray replaces builtins.print)

    np.save(tmp_path / "training" / ANNOTATIONS, np.array([Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match=r"refusing to load (posix|nt|os)\.system"):
        CalvinSource(tmp_path / "training")


def test_convert_cli_rejects_unknown_options(act_dir, tmp_path, capsys):
    root, _ = act_dir
    assert main(["convert", "hdf5", str(root), "--out", str(tmp_path / "x"), "--camreas=cam_high"]) == 1
    assert "did you mean --cameras" in capsys.readouterr().err
    assert main(["convert", "hdf5", str(root), "--out", str(tmp_path / "y"), "--cameras=cam_high:top",
                 "--state_keys=qpos"]) == 0
    ds = LeRobotDataset(tmp_path / "y")
    assert ds.meta.camera_keys == [image_key("top")]


def test_calvin_annotations_refuse_a_tampered_dtype_state(tmp_path):
    """numpy trusts a pickled dtype's itemsize/offsets; a crafted state must be refused, not rebuilt."""
    write_calvin(tmp_path / "training")

    class Tampered:
        def __reduce__(self):
            return (np.dtype, ("f8", False, True), (3, "<", None, None, None, 1 << 40, 8, 0))  # itemsize 2**40

    arr = np.empty(1, dtype=object)
    arr[0] = Tampered()
    np.save(tmp_path / "training" / ANNOTATIONS, arr, allow_pickle=True)
    with pytest.raises(SourceError, match="non-canonical pickled state"):
        CalvinSource(tmp_path / "training")
