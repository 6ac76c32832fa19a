"""End to end through the command line: collect 2 episodes -> train a few steps -> resume -> load -> eval."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlaforge.cli.main import main

pytest.importorskip("metaworld")


def test_collect_train_resume_eval(tmp_path):
    data, run, ev = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    assert main(["collect", "metaworld", "--tasks", "drawer-close", "--episodes", "2", "--out", str(data),
                 "--env.image_size=32"]) == 0
    info = json.loads((data / "meta/info.json").read_text())
    assert info["total_episodes"] == 2
    assert set(info["features"]) >= {"observation.images.scene", "observation.images.wrist", "observation.state",
                                     "action"}
    assert info["features"]["observation.environment_state"]["shape"] == [9]  # objects + goal, for training only
    assert json.loads((data / "meta/tasks.parquet").exists() and (data / "meta/collection.json").read_text())
    common = ["--data", str(data), "--out", str(run), "--backbone.image_size=32", "--batch_size=4",
              "--save_every=3", "--log_every=1"]
    assert main(["train", "quickstart_tokens", *common, "--steps=5", "--stop_at=3"]) == 0
    assert main(["train", "quickstart_tokens", "--out", str(run), "--resume", "--stop_at=5"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    ckpt = run / "checkpoints" / "last"
    assert main(["eval", str(ckpt), "--env", "metaworld", "--tasks", "drawer-close", "--episodes", "1",
                 "--env.image_size=32", "--env.max_steps=40", "--ensemble=2", "--out", str(ev)]) == 0
    result = json.loads((ev / "eval.json").read_text())
    assert result["config"]["ensemble"] == 2 and "| drawer-close-v3 | easy |" in (ev / "eval.md").read_text()
    assert result["tasks"]["drawer-close-v3"]["episodes"] == 1
    assert result["expert"]["tasks"]["drawer-close-v3"]["episodes"] == 1
    assert result["episodes"][0]["seed"] >= 100_000  # evaluation seeds are disjoint from demo seeds 0, 1
    assert len(list((ev / "videos").glob("*.mp4"))) == 1
    # an environment whose cameras differ from the checkpoint's is refused with the differences listed
    assert main(["eval", str(ckpt), "--env", "metaworld", "--tasks", "drawer-close", "--episodes", "1",
                 "--env.image_size=32", '--env.cameras={"scene": "topview"}', "--out", str(ev)]) == 1


def test_console_script_lists_registries():
    out = subprocess.run([sys.executable, "-m", "vlaforge.cli.main", "list"], capture_output=True, text=True,
                         check=True).stdout
    for name in ("smolvlm", "tokens", "dit", "lerobot", "metaworld", "quickstart_tokens", "quickstart_dit"):
        assert name in out


def test_bench_command_finds_the_scripts(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ("inference", "train", "data", "serve", "backbones"))
    assert main(["bench", "nope"]) == 1
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
