"""An imported released checkpoint is an ordinary checkpoint: `vlaforge import` -> eval in Meta-World -> serve and
query with the real client -> fine-tune with --init_from."""

from __future__ import annotations

import json

import numpy as np
import pytest

import released
from helpers import write_dataset
from vlaforge.cli.main import main
from vlaforge.inference import LocalPolicy
from vlaforge.serve.client import RemotePolicy
from vlaforge.serve.server import PolicyServer, ServeConfig, ServerThread
from vlaforge.types import image_key

pytest.importorskip("metaworld")


def test_imported_openvla_evaluates_serves_and_fine_tunes(tmp_path, capsys):
    src = released.write_openvla(tmp_path / "src", action_dim=4, keys=("metaworld",))
    ckpt, ev = tmp_path / "ckpt", tmp_path / "eval"
    assert main(["import", "openvla", str(src), "--out", str(ckpt), "--cameras", "scene", "--dtype", "float32"]) == 0
    assert "unnorm_key metaworld" in capsys.readouterr().out
    assert main(["eval", str(ckpt), "--env", "metaworld", "--tasks", "drawer-close", "--episodes", "1",
                 "--env.image_size=32", "--env.max_steps=6", '--env.cameras={"scene": "topview"}', "--out",
                 str(ev)]) == 0
    assert json.loads((ev / "eval.json").read_text())["tasks"]["drawer-close-v3"]["episodes"] == 1

    local = LocalPolicy.load(ckpt)
    obs = {image_key("scene"): np.full((40, 40, 3), 90, np.uint8), "task": "close the drawer"}
    cfg = ServeConfig(checkpoint=str(ckpt), port=0, max_batch=2, max_wait_ms=5)
    with ServerThread(PolicyServer(local, cfg)) as thread, RemotePolicy(thread.url) as remote:
        served = remote.infer(dict(obs))["actions"]
    np.testing.assert_allclose(served, local.infer(dict(obs))["actions"], rtol=1e-6)
    assert served.shape == (1, 4) and np.isfinite(served).all()

    data = tmp_path / "data"
    write_dataset(data, cams=("scene",))  # has a state: the imported policy reads none and ignores it
    assert main(["train", "quickstart_tokens", "--data", str(data), "--out", str(tmp_path / "ft"),
                 f"--init_from={ckpt}", "--steps=2", "--batch_size=2", "--log_every=1"]) == 0
    losses = [json.loads(line)["loss"] for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
