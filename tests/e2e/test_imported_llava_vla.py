"""An imported LLaVA-VLA checkpoint is an ordinary checkpoint: `vlaforge import llava_vla` -> `vlaforge eval`."""

from __future__ import annotations

import json

import pytest

import released
from vlaforge.cli.main import main

pytest.importorskip("metaworld")


def test_imported_llava_vla_evaluates_in_metaworld(tmp_path, capsys):
    # Meta-World's robot: 4-d state and actions (the statistics file sets both), cameras scene (top) + wrist
    src, clip, yml = released.write_llava_vla(tmp_path / "src", state_dim=4, action_dim=4)
    ckpt, ev = tmp_path / "ckpt", tmp_path / "eval"
    assert main(["import", "llava_vla", str(src), "--out", str(ckpt), "--statistics", str(yml), "--vision_tower",
                 str(clip), "--cameras", "scene,wrist", "--dtype", "float32"]) == 0
    assert "cameras ['scene', 'wrist'], action dim 4" in capsys.readouterr().out
    assert main(["eval", str(ckpt), "--env", "metaworld", "--tasks", "drawer-close", "--episodes", "1",
                 "--env.image_size=32", "--env.max_steps=5", "--out", str(ev)]) == 0  # one chunk of 5
    assert json.loads((ev / "eval.json").read_text())["tasks"]["drawer-close-v3"]["episodes"] == 1
