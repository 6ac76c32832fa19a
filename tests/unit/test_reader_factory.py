"""One reader factory: training opens any registered dataset format through ``vlaforge.data.open_reader``."""

from __future__ import annotations

import pytest

from helpers import tiny_policy_config
from vlaforge.data import FORMATS, open_reader
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.registry import RegistryError


def test_auto_detects_the_format_and_unknown_data_is_one_clear_error(dataset, tmp_path):
    root, _ = dataset
    reader = open_reader(root, history=2, chunk=3)
    assert type(reader) is LeRobotDataset and reader.history == 2 and reader.chunk == 3
    assert type(open_reader(root, format="lerobot")) is LeRobotDataset
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no registered format reads it \(formats: .*lerobot.*\)"):
        open_reader(tmp_path / "empty")
    with pytest.raises(RegistryError, match="Did you mean 'lerobot'"):
        open_reader(root, format="lerobbot")


def test_training_reads_a_registered_format_through_the_factory(dataset, tmp_path, monkeypatch):
    from vlaforge.train.config import DataConfig, TrainConfig
    from vlaforge.train.trainer import build_reader_and_policy

    opened = []

    class Wrapped(LeRobotDataset):  # a stand-in for another format's reader; never auto-detected
        @classmethod
        def detect(cls, root):
            return False

        def __init__(self, root, **kw):
            opened.append(kw)
            super().__init__(root, **kw)

    monkeypatch.setitem(FORMATS._entries, "wrapped", Wrapped)
    root, _ = dataset
    cfg = TrainConfig(policy=tiny_policy_config("tokens", chunk=4), data=DataConfig(path=str(root), format="wrapped"),
                      out=str(tmp_path / "run"), steps=1)
    reader, policy = build_reader_and_policy(cfg)
    assert type(reader) is Wrapped
    assert opened == [{"history": 1, "chunk": 4, "video_cache": "auto", "max_cache_mb": 512.0}]
    assert policy.robot == reader.meta.robot_spec()
    # auto picks the detecting format, never the stand-in
    reader, _ = build_reader_and_policy(cfg.replace(data=cfg.data.replace(format="auto")))
    assert type(reader) is LeRobotDataset and len(opened) == 1
    # video_cache=disk: the RAM budget is per worker, the disk cap is not (the workers share the directory)
    frames = str(tmp_path / "frames")
    build_reader_and_policy(cfg.replace(data=cfg.data.replace(video_cache="disk", num_workers=2, cache_dir=frames,
                                                              disk_cache_mb=64.0)))
    assert opened[-1] == {"history": 1, "chunk": 4, "video_cache": "disk", "max_cache_mb": 256.0,
                          "cache_dir": frames, "disk_cache_mb": 64.0}
