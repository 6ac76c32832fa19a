"""DexVLA's released parts through the command line: `vlaforge import dexvla SRC --base QWEN2VL_DIR` -> eval in
Meta-World -> serve and query with the real client (the reference forward is in tests/unit/test_import_dexvla.py)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import released
from vlaforge.cli.main import main
from vlaforge.inference import LocalPolicy
from vlaforge.policy import VLAPolicy
from vlaforge.serve.client import RemotePolicy
from vlaforge.serve.server import PolicyServer, ServeConfig, ServerThread
from vlaforge.types import OBS_STATE, image_key

pytest.importorskip("metaworld")


def test_imported_dexvla_evaluates_and_serves(tmp_path, capsys):
    base, _, hidden = released.write_qwen2vl_base(tmp_path / "Qwen2-VL-2B-Instruct")
    head = tmp_path / "scale_dp_tiny.ckpt"
    released.write_scaledp(head, hidden, action_dim=4, state_dim=4, chunk=8)  # Meta-World: 4-d state and action
    stats = released.dexvla_stats(4, 4)
    (tmp_path / "dataset_stats.pkl").write_bytes(pickle.dumps(stats))
    ckpt, ev = tmp_path / "ckpt", tmp_path / "eval"
    assert main(["import", "dexvla", str(head), "--base", str(base), "--stats", str(tmp_path / "dataset_stats.pkl"),
                 "--out", str(ckpt), "--cameras", "scene", "--dtype", "float32"]) == 0
    assert "action dim 4" in capsys.readouterr().out
    assert "CC BY-NC 4.0" in (ckpt / "IMPORTED.md").read_text()
    imported = VLAPolicy.from_pretrained(ckpt)  # a random tiny LM never says EOS: keep the reasoning short
    short = VLAPolicy(imported.cfg.replace(reasoning=imported.cfg.reasoning.replace(max_tokens=4)),
                      assets=ckpt / "tokenizer")
    short.load_state_dict(imported.state_dict())
    short.make_pipelines(None, imported.robot, dataset_stats=imported.dataset_stats, unnorm_key=imported.unnorm_key)
    ckpt = tmp_path / "short"
    short.save_pretrained(ckpt)
    assert main(["eval", str(ckpt), "--env", "metaworld", "--tasks", "drawer-close", "--episodes", "1",
                 "--env.image_size=32", "--env.max_steps=4", '--env.cameras={"scene": "topview"}', "--out",
                 str(ev)]) == 0
    assert json.loads((ev / "eval.json").read_text())["tasks"]["drawer-close-v3"]["episodes"] == 1

    local = LocalPolicy.load(ckpt)
    obs = {image_key("scene"): np.full((40, 40, 3), 90, np.uint8), OBS_STATE: np.zeros(4, np.float32),
           "task": "close the drawer"}
    with ServerThread(PolicyServer(local, ServeConfig(checkpoint=str(ckpt), port=0))) as thread, \
            RemotePolicy(thread.url) as remote:
        served = remote.infer(dict(obs))["actions"]
    np.testing.assert_allclose(served, local.infer(dict(obs))["actions"], rtol=1e-5, atol=1e-6)
    assert served.shape[-1] == 4 and np.isfinite(served).all()
    assert (served >= stats["action_min"]).all() and (served <= stats["action_max"]).all()
