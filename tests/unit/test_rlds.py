"""RLDS reader: TFDS-written fixtures read back exactly, OXE transforms, LeRobot conversion, corrupt shards.

The fixtures under ``tests/fixtures/rlds`` were written by TensorFlow Datasets itself
(``tests/fixtures/make_rlds_fixtures.py``); ``expected.json`` holds every array written and the standardized
episodes computed there with TensorFlow ops, so these tests compare against an independent implementation.
"""

from __future__ import annotations

import base64
import json
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from vlaforge.data.convert import SOURCES, SourceError, convert
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.rlds import (
    MIXTURES,
    RLDSSource,
    Standardized,
    Steps,
    binarize_gripper,
    get_transform,
    mixture,
    read_step_schema,
    rel2abs_gripper,
    transform_for_dataset,
)
from vlaforge.data.tfrecord import (
    TFRecordError,
    count_records,
    example_class,
    masked_crc,
    parse_sequence_example,
    read_examples,
    read_records,
)
from vlaforge.types import ACTION, OBS_STATE, TASK, image_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rlds"
BRIDGE, BRIDGE_OXE, FRACTAL = "bridge_dataset", "bridge", "fractal20220817_data"
ALL = (BRIDGE, BRIDGE_OXE, FRACTAL)
STANDARD = [(BRIDGE, "bridge"), (BRIDGE_OXE, "bridge_oxe"), (FRACTAL, "fractal")]
JPEG_MAE = 2.5  # mean abs pixel error of TFDS's quality-95 JPEG on the 16x16 fixture images
JPEG_MAX = 16  # worst single pixel
VIDEO_MAE = 4.0  # h264 / yuv420p round trip of 16-pixel frames (chroma is 8x8 there)


@cache
def expected() -> dict:
    return json.loads((FIXTURES / "expected.json").read_text())


def arr(v) -> np.ndarray:
    """An array from expected.json (uint8 images are base64 of the raw pixels)."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["b64"]), np.uint8).reshape(v["shape"])
    return np.asarray(v)


def written(name: str) -> list[dict]:
    return expected()["datasets"][name]["episodes"]


def dataset_dir(name: str) -> Path:
    return FIXTURES / expected()["datasets"][name]["path"]


def shards(name: str) -> list[Path]:
    return sorted(dataset_dir(name).glob("*.tfrecord-*"))


def all_steps(name: str) -> list[Steps]:
    schema = read_step_schema(dataset_dir(name) / "features.json")
    return [Steps(ex, schema, str(p)) for p in shards(name) for ex in read_examples(p)]


def copy_fixture(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


# ------------------------------------------------------------------------------------------------ tfrecord
def test_masked_crc_known_values():
    assert masked_crc(b"") == 0xA282EAD8  # crc32c("") = 0, then only the mask delta
    crc = 0xE3069283  # crc32c("123456789"), the standard check value
    assert masked_crc(b"123456789") == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_tfds_shards_frame_and_count_as_dataset_info_says():
    for name in ALL:
        info = json.loads((dataset_dir(name) / "dataset_info.json").read_text())
        lengths = [int(x) for x in info["splits"][0]["shardLengths"]]
        files = shards(name)
        assert len(files) == expected()["datasets"][name]["num_shards"] == len(lengths)
        assert [count_records(p) for p in files] == lengths
        assert [sum(1 for _ in read_records(p)) for p in files] == lengths


def test_every_written_step_field_reads_back():
    """Each field TFDS serialized decodes to exactly the array written (JPEG images within tolerance)."""
    for name in ALL:
        steps_list = all_steps(name)
        assert len(steps_list) == len(written(name))
        for steps, ep in zip(steps_list, written(name), strict=True):
            fields = {k.removeprefix("steps/"): v for k, v in ep.items() if k.startswith("steps/")}
            assert len(steps) == len(arr(fields["is_first"]))
            for key, value in fields.items():
                want, got = arr(value), steps[key]
                if steps.field(key).kind == "image":
                    assert got.shape == want.shape and got.dtype == np.uint8, key
                    if steps.field(key).encoding == "png":
                        np.testing.assert_array_equal(got, want, err_msg=key)
                    else:
                        err = np.abs(got.astype(int) - want)
                        assert err.mean() < JPEG_MAE and err.max() <= JPEG_MAX, (key, err.mean(), err.max())
                elif want.dtype.kind in "UO":
                    assert list(got) == list(want), key
                else:
                    assert got.shape == want.shape, (key, got.shape, want.shape)
                    np.testing.assert_array_equal(got, want.astype(got.dtype), err_msg=key)


def test_episode_metadata_and_dtypes_follow_features_json():
    ex = next(read_examples(shards(BRIDGE)[0]))
    assert ex["episode_metadata/file_path"] == [b"/raw/bridge/traj0.pkl"]
    assert ex["episode_metadata/episode_id"].tolist() == [100]
    steps = all_steps(FRACTAL)[0]
    assert steps["is_first"].dtype == np.bool_ and steps["is_first"].tolist() == [True] + [False] * 5
    assert steps["action/terminate_episode"].dtype == np.int32
    assert steps["observation/orientation_box"].shape == (6, 2, 3)
    assert steps.field("observation/height_to_bottom").encoding == "zlib"


def test_sequence_example_schema_round_trips():
    msg = example_class("SequenceExample")()
    msg.context.feature["id"].int64_list.value.append(7)
    for t in range(3):
        msg.feature_lists.feature_list["obs"].feature.add().float_list.value.extend([t, t + 0.5])
    context, lists = parse_sequence_example(msg.SerializeToString())
    assert context["id"].tolist() == [7]
    assert [v.tolist() for v in lists["obs"]] == [[0, 0.5], [1, 1.5], [2, 2.5]]


# ------------------------------------------------------------------------------------------ standardization
def test_gripper_helpers_follow_openvla():
    # binarize: > 0.95 open, < 0.05 closed, in-between takes the next decided value (the last raw one at the end)
    np.testing.assert_array_equal(binarize_gripper([1.0, 0.5, 0.0, 0.0]), [1, 0, 0, 0])
    np.testing.assert_array_equal(binarize_gripper([0.0, 0.3, 0.98, 0.6]), np.float32([0, 1, 1, 0.6]))
    assert binarize_gripper([]).shape == (0,)
    # rel2abs: +1 close, -1 open; before the first command, the opposite state; open if never commanded
    np.testing.assert_array_equal(rel2abs_gripper([0, 0, 1, 0, 0, -1]), [1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(rel2abs_gripper([0, -1, 0, 0.05, 0.8]), [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(rel2abs_gripper([0, 0, 0]), [1, 1, 1])
    assert rel2abs_gripper([]).shape == (0,)


@pytest.mark.parametrize("name,std", STANDARD)
def test_standardized_episodes_match_tensorflow_reference(name, std):
    src = RLDSSource(dataset_dir(name), standardize=std)
    ref = expected()["datasets"][name]["standardized"]
    episodes = list(src)
    assert len(src) == len(episodes) == len(ref)
    t = get_transform(std)
    assert src.fps == t.fps and src.robot_type == t.robot_type
    for ep, want, raw in zip(episodes, ref, written(name), strict=True):
        np.testing.assert_array_equal(ep.frames[ACTION], np.float32(want["action"]))
        np.testing.assert_array_equal(ep.frames[OBS_STATE], np.float32(want["observation.state"]))
        assert ep.task == want["task"]
        cam_key = next(k for k in raw if k.endswith(f"observation/{next(iter(t.cameras))}"))
        img = ep.frames[image_key("primary")]
        src_img = arr(raw[cam_key])[want["steps"]]
        assert img.shape == src_img.shape
        if name == FRACTAL:
            np.testing.assert_array_equal(img, src_img)  # PNG: exact
        else:
            assert np.abs(img.astype(int) - src_img).mean() < JPEG_MAE


def test_bridge_and_fractal_transforms_by_hand():
    bridge = list(RLDSSource(dataset_dir(BRIDGE), standardize="bridge"))
    # raw gripper [1, 1, .5, 0, 0] -> drop step 0 -> binarize [1, 0, 0, 0] -> drop the last step
    assert [ep.frames[ACTION][:, 6].tolist() for ep in bridge] == [[1, 0, 0], [1, 1, 0, 0], [1, 1]]
    raw_state = arr(written(BRIDGE)[0]["steps/observation/state"]).astype(np.float32)
    np.testing.assert_array_equal(bridge[0].frames[ACTION][:, :6], raw_state[2:5, :6] - raw_state[1:4, :6])
    np.testing.assert_array_equal(bridge[0].frames[OBS_STATE][:, 6], 0)
    np.testing.assert_array_equal(bridge[0].frames[OBS_STATE][:, 7], raw_state[1:4, 6])
    oxe = list(RLDSSource(dataset_dir(BRIDGE_OXE), standardize="bridge_oxe"))
    # open_gripper [T, T, F, F, T] -> drop step 0 -> [T, F, F, T] -> drop the last step
    assert [ep.frames[ACTION][:, 6].tolist() for ep in oxe] == [[1, 0, 0], [0, 0]]
    assert oxe[0].task == "put eggplant into pot"
    fractal = list(RLDSSource(dataset_dir(FRACTAL), standardize="fractal"))
    assert [ep.frames[ACTION][:, 6].tolist() for ep in fractal] == [[1, 1, 0, 0, 0, 1], [1, 1, 1], [0, 1, 1, 1, 0]]
    raw = written(FRACTAL)[1]
    np.testing.assert_array_equal(fractal[1].frames[ACTION][:, :3], np.float32(raw["steps/action/world_vector"]))
    np.testing.assert_array_equal(fractal[1].frames[OBS_STATE][:, 7:],
                                  np.float32(raw["steps/observation/gripper_closed"]))


def test_short_bridge_episode_is_empty_after_the_transform():
    class FakeSteps(dict):
        def __len__(self) -> int:
            return 2

    out = get_transform("bridge").fn(FakeSteps({"observation/state": np.zeros((2, 7)), "action": np.zeros((2, 7))}))
    assert out.action.shape == (0, 7) and out.state.shape == (0, 8) and len(out.steps) == 0


def test_episodes_left_empty_are_skipped_with_a_warning(monkeypatch):
    src = RLDSSource(dataset_dir(FRACTAL), standardize="fractal")
    fn, empty = src._fn, Standardized(np.zeros((0, 8), np.float32), np.zeros((0, 7), np.float32), np.zeros(0, int))
    monkeypatch.setattr(src, "_fn", lambda steps: fn(steps) if len(steps) != 3 else empty)  # record 1 has 3 steps
    with pytest.warns(UserWarning, match=r"record 1 has no frames after the 'fractal' transform; skipped"):
        episodes = list(src)
    assert [len(e) for e in episodes] == [6, 5]


def test_generic_options_read_raw_fields():
    src = RLDSSource(dataset_dir(FRACTAL), cameras={"image": "front"}, fps=3,
                     state_keys=["base_pose_tool_reached", "observation/height_to_bottom"],
                     action_key=["action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"])
    assert src.features[OBS_STATE].shape == (8,) and src.features[ACTION].shape == (7,)
    for ep, raw in zip(src, written(FRACTAL), strict=True):
        state = np.concatenate([arr(raw["steps/observation/base_pose_tool_reached"]),
                                arr(raw["steps/observation/height_to_bottom"])], axis=1)
        np.testing.assert_array_equal(ep.frames[OBS_STATE], state.astype(np.float32))
        np.testing.assert_array_equal(ep.frames[ACTION][:, 6],
                                      np.float32(raw["steps/action/gripper_closedness_action"])[:, 0])
        np.testing.assert_array_equal(ep.frames[image_key("front")], arr(raw["steps/observation/image"]))
        assert ep.task == raw["steps/observation/natural_language_instruction"][0]
    no_state = RLDSSource(dataset_dir(FRACTAL), fps=3, state_keys=[], action_key="action/world_vector")
    assert OBS_STATE not in no_state.features and OBS_STATE not in next(iter(no_state)).frames
    # bridge defaults: every observation image, 'state', 'action', 'language_instruction'; nothing dropped
    src = RLDSSource(dataset_dir(BRIDGE), fps=5, task="do it")
    assert sorted(src.features) == [ACTION, image_key("image_0"), image_key("image_1"), OBS_STATE]
    for ep, raw in zip(src, written(BRIDGE), strict=True):
        np.testing.assert_array_equal(ep.frames[ACTION], np.float32(raw["steps/action"]))
        np.testing.assert_array_equal(ep.frames[OBS_STATE], np.float32(raw["steps/observation/state"]))
        assert ep.task == "do it"


def test_version_dir_or_its_parent():
    a = RLDSSource(FIXTURES / BRIDGE, standardize="bridge")
    b = RLDSSource(dataset_dir(BRIDGE), standardize="bridge")
    assert a.root == b.root == dataset_dir(BRIDGE) and a.name == BRIDGE and len(a) == 3


def test_registered_as_a_source():
    assert SOURCES.get("rlds") is RLDSSource


def test_option_errors_are_clear():
    with pytest.raises(KeyError, match="Did you mean 'bridge'"):
        RLDSSource(dataset_dir(BRIDGE), standardize="bridgee")
    with pytest.raises(ValueError, match=r"fps.*standardize='fractal'"):
        RLDSSource(dataset_dir(FRACTAL))
    with pytest.raises(SourceError, match=r"'action' is a dict of .*world_vector.*standardize='fractal'"):
        RLDSSource(dataset_dir(FRACTAL), fps=3, state_keys=["base_pose_tool_reached"])
    with pytest.raises(SourceError, match=r"split 'test' not found.*\['train'\]"):
        RLDSSource(dataset_dir(BRIDGE), split="test", standardize="bridge")
    with pytest.raises(SourceError, match=r"no step field 'image_9'.*Did you mean"):
        RLDSSource(dataset_dir(BRIDGE), standardize="bridge", cameras={"image_9": "primary"})
    with pytest.raises(ValueError, match="do not pass state_keys"):
        RLDSSource(dataset_dir(BRIDGE), standardize="bridge", state_keys=["state"])
    with pytest.raises(FileNotFoundError, match="no dataset_info.json"):
        RLDSSource(FIXTURES)


# ------------------------------------------------------------------------------------------ corrupt shards
def test_truncated_shard_names_the_file_and_record(tmp_path):
    root = copy_fixture(tmp_path, BRIDGE)
    shard = sorted(root.glob("*/*.tfrecord-00000-of-00002"))[0]
    first = next(read_records(shard))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])  # cut inside record 1
    with pytest.raises(TFRecordError, match=rf"{shard.name}: record 1: truncated data"):
        list(read_records(shard))
    src = RLDSSource(root, standardize="bridge")
    with pytest.raises(SourceError, match=rf"episode 1 \(.*{shard.name}\): record 1: truncated"):
        list(src)
    shard.write_bytes(data[: 12 + len(first) + 4 + 5])  # record 1's header cut short
    with pytest.raises(TFRecordError, match=r"record 1: truncated header"):
        list(read_records(shard))


def test_flipped_bytes_fail_the_crc(tmp_path):
    root = copy_fixture(tmp_path, FRACTAL)
    shard = next(root.glob("*/*.tfrecord-*"))
    data = bytearray(shard.read_bytes())
    flipped = bytearray(data)
    flipped[40] ^= 0x01  # inside record 0's data
    shard.write_bytes(bytes(flipped))
    with pytest.raises(SourceError, match=rf"episode 0 \(.*{shard.name}\): record 0: data checksum mismatch"):
        list(RLDSSource(root, standardize="fractal"))
    assert len(list(read_records(shard, verify=False))) == 3  # framing intact, only the payload changed
    flipped = bytearray(data)
    flipped[2] ^= 0x10  # record 0's length
    shard.write_bytes(bytes(flipped))
    with pytest.raises(TFRecordError, match=r"record 0: length checksum mismatch"):
        list(read_records(shard))


def test_missing_shard_is_named(tmp_path):
    root = copy_fixture(tmp_path, BRIDGE)
    next(root.glob("*/*-00001-of-00002")).unlink()
    with pytest.raises(SourceError, match=r"shard files missing: \['bridge_dataset-train.tfrecord-00001-of-00002'\]"):
        RLDSSource(root, standardize="bridge")


# ------------------------------------------------------------------------------------------ LeRobot convert
@pytest.mark.parametrize("name,std", STANDARD)
def test_convert_to_lerobot_reads_back_every_frame(tmp_path, name, std):
    src = RLDSSource(dataset_dir(name), standardize=std)
    episodes = list(src)
    out = convert(src, tmp_path / "lerobot", progress=False)
    ds = LeRobotDataset(out)
    assert ds.meta.fps == src.fps
    assert ds.meta.num_episodes == len(episodes) and len(ds) == sum(len(e) for e in episodes)
    for e, ep in enumerate(episodes):
        got = ds.episode(e)
        np.testing.assert_array_equal(got[ACTION], ep.frames[ACTION])
        np.testing.assert_array_equal(got[OBS_STATE], ep.frames[OBS_STATE])
        assert got[TASK] == ep.task
        k = image_key("primary")
        assert got[k].shape == ep.frames[k].shape and got[k].dtype == np.uint8
        assert np.abs(got[k].astype(int) - ep.frames[k]).mean() < VIDEO_MAE
    # one random-access frame carries the same action as the episode view
    item = ds[len(episodes[0])]
    np.testing.assert_array_equal(item[ACTION][0], episodes[1].frames[ACTION][0])


# ------------------------------------------------------------------------------------------------- mixtures
def test_named_mixtures():
    assert mixture("bridge_fractal") == [("bridge_dataset", 1.0), ("fractal20220817_data", 1.0)]
    with pytest.raises(KeyError, match="Did you mean 'bridge_fractal'"):
        mixture("bridge_fractl")
    for name, entries in MIXTURES.items():
        assert entries and all(w > 0 for _, w in entries), name
        assert all(transform_for_dataset(d) is not None for d, _ in entries), name


def test_transform_for_dataset_names():
    assert transform_for_dataset("bridge_dataset") == transform_for_dataset("bridge_orig") == "bridge"
    assert transform_for_dataset("bridge") == "bridge_oxe"  # the OXE bucket's name for its Bridge copy
    assert transform_for_dataset("fractal20220817_data") == "fractal"
    assert transform_for_dataset("kuka") is None


def test_mixture_datasets_share_cameras_and_dims():
    """What MixtureDataset requires of its members: the same camera names and state / action dims."""
    specs = [RLDSSource(dataset_dir(d), standardize=transform_for_dataset(d)).features for d in ALL]
    assert all(set(s) == set(specs[0]) for s in specs)
    for key in (OBS_STATE, ACTION):
        assert len({s[key].shape for s in specs}) == 1
