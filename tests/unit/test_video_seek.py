"""Random access into LeRobot v3 videos without decoding whole episodes: the keyframe index (cached, rebuilt when
stale or corrupt), ``video_cache="seek"`` (exactly the preloaded frames), its byte-bounded cache, and the clip
sampler's epoch coverage."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from helpers import LENGTHS, write_dataset
from vlaforge.data.lerobot import VIDEO_INDEX_PATH, LeRobotDataset
from vlaforge.data.video import ByteLRU
from vlaforge.processors.base import Pipeline, to_device
from vlaforge.train.data import ClipOrder, make_loader
from vlaforge.types import image_key

CAMS = ("front", "wrist", "side")


@pytest.fixture(scope="module")
def gop_dataset(tmp_path_factory):
    """3 cameras, a keyframe every 4 frames: groups of pictures cross the episode boundaries (7, 12, 5 frames)."""
    root = tmp_path_factory.mktemp("seek") / "gop4"
    write_dataset(root, cams=CAMS, gop=4)
    return root


def _boundaries() -> list[int]:
    ends = np.cumsum(LENGTHS)
    return sorted({0, *ends[:-1].tolist(), *(ends - 1).tolist()})


@pytest.mark.parametrize("layout", ["one_file", "file_per_episode"])
def test_seek_frames_equal_preloaded_frames(tmp_path, layout):
    root = tmp_path / layout
    kw = {"video_files_size_in_mb": 0} if layout == "file_per_episode" else {}
    write_dataset(root, cams=CAMS, gop=4, **kw)
    pre = LeRobotDataset(root, history=3, chunk=2, video_cache="preload")
    seek = LeRobotDataset(root, history=3, chunk=2, video_cache="seek", max_cache_mb=0.02)  # ~3 decoded GOPs
    assert len(seek._seek.keyframes) == (len(CAMS) if layout == "one_file" else 3 * len(CAMS))
    assert all(len(k) > 2 for k in seek._seek.keyframes.values()) or layout == "file_per_episode"
    order = [*_boundaries(), *np.random.default_rng(0).integers(0, len(pre), 20).tolist()]
    for i in order:
        a, b = pre[i], seek[i]
        for cam in CAMS:
            np.testing.assert_array_equal(a[image_key(cam)], b[image_key(cam)], err_msg=f"{layout} {i} {cam}")
    for e in range(len(LENGTHS)):
        for cam in CAMS:
            np.testing.assert_array_equal(pre.episode(e)[image_key(cam)], seek.episode(e)[image_key(cam)])


def test_keyframe_index_is_cached_and_rebuilt_when_stale_or_corrupt(tmp_path, gop_dataset):
    root = tmp_path / "copy"
    write_dataset(root, cams=("front",), gop=4)
    first = LeRobotDataset(root, video_cache="seek")
    assert len(first.index_rebuilt) == 1 and (root / VIDEO_INDEX_PATH).is_file()
    assert LeRobotDataset(root, video_cache="seek").index_rebuilt == []  # built once, then read
    video = first.index_rebuilt[0]
    reference = LeRobotDataset(root, video_cache="preload")
    rel = video.relative_to(root).as_posix()

    def tamper(edit):
        doc = json.loads((root / VIDEO_INDEX_PATH).read_text())
        edit(doc["videos"][rel])
        (root / VIDEO_INDEX_PATH).write_text(json.dumps(doc))

    cases = {
        "wrong keyframes (digest no longer matches)": lambda: tamper(lambda e: e.update(keyframes=[0, 1, 2])),
        "file changed (mtime)": lambda: os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10)),
        "not JSON": lambda: (root / VIDEO_INDEX_PATH).write_text("{\"videos\": {tru"),
        "wrong types": lambda: tamper(lambda e: e.update(frames="many")),
    }
    for why, damage in cases.items():
        damage()
        ds = LeRobotDataset(root, video_cache="seek")
        assert ds.index_rebuilt == [video], why
        for i in (0, 6, 7, len(ds) - 1):
            np.testing.assert_array_equal(ds[i][image_key("front")], reference[i][image_key("front")], err_msg=why)
        assert LeRobotDataset(root, video_cache="seek").index_rebuilt == [], why  # the rewritten index is trusted


def test_seek_cache_never_exceeds_its_budget(gop_dataset):
    budget_mb = 0.03  # a few GOPs of 4 frames x 3 KiB, far below the 3 x 24 decoded frames
    ds = LeRobotDataset(gop_dataset, video_cache="seek", max_cache_mb=budget_mb)
    budget = int(budget_mb * 2**20)
    for i in np.random.default_rng(1).integers(0, len(ds), 60):
        ds[int(i)]
        stats = ds.cache_stats()
        assert stats["bytes"] <= budget and stats["peak"] <= budget
    assert stats["misses"] > 0 and stats["peak"] > budget // 2
    lru = ByteLRU(100)
    lru.put("big", np.zeros(101, np.uint8))  # larger than the whole budget: never stored
    lru.put("a", np.zeros(60, np.uint8))
    lru.put("b", np.zeros(60, np.uint8))  # evicts "a"
    assert len(lru) == 1 and lru.get("a") is None and lru.get("b") is not None and lru.peak <= 100


def test_episode_cache_respects_the_budget_too(gop_dataset):
    ds = LeRobotDataset(gop_dataset, video_cache="episode", max_cache_mb=0.05)
    for i in range(len(ds)):
        ds[i]
        assert ds.cache_stats()["peak"] <= int(0.05 * 2**20)


def test_auto_seeks_where_preload_does_not_fit(gop_dataset):
    assert LeRobotDataset(gop_dataset, video_cache="auto", preload_limit_gb=0).video_cache == "seek"
    assert LeRobotDataset(gop_dataset, video_cache="auto").video_cache == "preload"
    with pytest.raises(ValueError, match=r"video_cache: expected one of auto \| preload \| episode \| seek \| disk, "
                                         r"got 'gop'"):
        LeRobotDataset(gop_dataset, video_cache="gop")


@pytest.mark.parametrize("k,buffer", [(4, 8), (3, 5), (1, 7), (16, 32)])
def test_clip_order_covers_every_frame_once_per_epoch(k, buffer):
    starts, lengths = np.array([0, 7, 19, 30]), np.array([7, 12, 11, 9])  # reader positions of 4 episodes
    order = ClipOrder(starts, lengths, k, buffer, seed=3)
    n = int(lengths.sum())
    epochs = [order(e) for e in range(4)]
    for perm in epochs:
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))  # coverage: each frame exactly once
    assert any(not np.array_equal(epochs[0], p) for p in epochs[1:])
    np.testing.assert_array_equal(order(2), epochs[2])  # a function of (seed, epoch): resumable
    episode_of = np.repeat(np.arange(4), lengths)
    for e in range(4):
        clip = order.clips(e)
        _, sizes = np.unique(clip, return_counts=True)
        assert sizes.max() <= k and len(np.unique(clip)) <= n  # clips of at most k frames, within one episode
        assert all(len(np.unique(episode_of[clip == c])) == 1 for c in np.unique(clip))
        where = np.empty(n, np.int64)
        where[epochs[e]] = np.arange(n) // buffer  # the shuffle-buffer window each frame was emitted from
        for c in np.unique(clip):  # bounded shuffle: a clip's frames stay within two consecutive windows
            assert np.ptp(where[clip == c]) <= 1


def test_loader_with_clip_sampler_and_a_seek_worker_reads_every_frame(gop_dataset):
    ds = LeRobotDataset(gop_dataset, video_cache="seek", max_cache_mb=0.05)
    pre = LeRobotDataset(gop_dataset, video_cache="preload")
    n, batch = len(ds), 8
    loader = make_loader(ds, Pipeline([]), batch_size=batch, seed=0, start_step=0, steps=n // batch,
                         num_workers=1, clip_frames=4, shuffle_buffer=8)
    seen = []
    for b in loader:
        for j, g in enumerate(b["index"].tolist()):
            np.testing.assert_array_equal(b[image_key("side")][j].numpy(), pre[g][image_key("side")])
        seen += b["index"].tolist()
    assert sorted(seen) == list(range(n))


def test_loader_pins_host_memory_only_for_a_cuda_device(gop_dataset):
    """Training on CUDA: the loader pins its batches and the copies to the device do not block; on the CPU nothing
    is pinned or moved (checked through the loader's configuration and a device that needs no GPU)."""
    ds = LeRobotDataset(gop_dataset, video_cache="seek", max_cache_mb=0.05)
    kw = {"batch_size": 4, "seed": 0, "start_step": 0, "steps": 1}
    assert make_loader(ds, Pipeline([]), device=torch.device("cuda", 0), **kw).pin_memory
    assert not make_loader(ds, Pipeline([]), device="cpu", **kw).pin_memory
    assert not make_loader(ds, Pipeline([]), **kw).pin_memory
    batch = next(iter(make_loader(ds, Pipeline([]), device="cpu", **kw)))
    assert to_device(batch, "cpu") is batch
    moved = to_device({**batch, "task": ["a"] * 4}, "meta")
    assert moved["task"] == ["a"] * 4
    assert all(v.device.type == "meta" for k, v in moved.items() if k != "task")


def test_disk_cache_serves_the_preloaded_frames_within_its_cap(gop_dataset, tmp_path):
    """video_cache=disk: decoded groups go to disk once and are read back from there (also by a fresh reader), the
    frames equal the preloaded ones, the directory never exceeds its cap (least recently used out first), and a
    damaged file is a miss that is decoded again."""
    pre = LeRobotDataset(gop_dataset, video_cache="preload")
    gop_bytes = 4 * pre[0][image_key("front")].nbytes
    cache, cap = tmp_path / "frames", 6 * (gop_bytes + 128)

    def reader():  # a RAM cache smaller than one group: every read goes to the disk level
        return LeRobotDataset(gop_dataset, video_cache="disk", max_cache_mb=gop_bytes / 2 / 2**20, cache_dir=cache,
                              disk_cache_mb=cap / 2**20)

    disk = reader()
    order = [*_boundaries(), *np.random.default_rng(1).integers(0, len(pre), 20).tolist()]
    for i in order:
        a, b = pre[i], disk[i]
        for cam in CAMS:
            np.testing.assert_array_equal(a[image_key(cam)], b[image_key(cam)], err_msg=f"{i} {cam}")
        assert 0 < disk._seek.disk.bytes_on_disk() <= cap
    video = disk._video_files[(image_key("side"), 0)]  # one file per camera: file frame = dataset index
    last = disk._seek.disk.file(video, disk._seek.gop_of(video, order[-1])[0])
    assert last.is_file()  # the group read last is kept
    assert 0 < len(list(cache.glob("*/*.npy"))) < disk.cache_stats()["disk_misses"]  # evictions happened

    warm = reader()
    np.testing.assert_array_equal(warm[order[-1]][image_key("side")], pre[order[-1]][image_key("side")])
    assert warm.cache_stats()["disk_hits"] >= 1
    last.write_bytes(b"not an array")
    again = reader()
    np.testing.assert_array_equal(again[order[-1]][image_key("side")], pre[order[-1]][image_key("side")])
    assert again.cache_stats()["disk_misses"] >= 1
    assert np.load(last).dtype == np.uint8  # written again, whole
