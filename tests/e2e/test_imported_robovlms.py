"""An imported RoboVLMs checkpoint is an ordinary checkpoint: `vlaforge import robovlms` -> eval in Meta-World with
its history window (each env copy keeps its own window of frames)."""

from __future__ import annotations

import json

import pytest

from released_robovlms import WINDOW, write_robovlms
from vlaforge.cli.main import main
from vlaforge.inference import LocalPolicy

pytest.importorskip("metaworld")


def test_imported_robovlms_evaluates_with_its_window(tmp_path, capsys):
    src, kosmos = write_robovlms(tmp_path / "src", action_dim=4)
    ckpt, ev = tmp_path / "ckpt", tmp_path / "eval"
    assert main(["import", "robovlms", str(src), "--out", str(ckpt), "--cameras", "scene", "--dtype", "float32",
                 "--tokenizer", str(kosmos)]) == 0
    assert "unnorm_key kosmos_ph_calvin_abcd" in capsys.readouterr().out
    assert "window 2" in (ckpt / "IMPORTED.md").read_text()
    assert LocalPolicy.load(ckpt).history == WINDOW
    assert main(["eval", str(ckpt), "--env", "metaworld", "--tasks", "drawer-close", "--episodes", "2",
                 "--parallel_envs", "2", "--env.image_size=32", "--env.max_steps=2",
                 '--env.cameras={"scene": "topview"}', "--out", str(ev)]) == 0
    assert json.loads((ev / "eval.json").read_text())["tasks"]["drawer-close-v3"]["episodes"] == 2

