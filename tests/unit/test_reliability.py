"""Load-time and inference-time refusals of hostile or broken checkpoints (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file
from safetensors.torch import save_file as save_torch

from helpers import tiny_policy_config
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.policy import VLAPolicy
from vlaforge.types import image_key


@pytest.fixture
def ckpt(dataset, tmp_path):
    reader = LeRobotDataset(dataset[0], chunk=4)
    policy = VLAPolicy(tiny_policy_config().with_robot(reader.meta.robot_spec()))
    policy.make_pipelines(reader.meta.stats, reader.meta.robot_spec())
    return policy.save_pretrained(tmp_path / "ckpt"), reader


def test_a_state_file_outside_the_checkpoint_is_refused(ckpt, tmp_path):
    path, _ = ckpt
    save_file({"action/mean": np.zeros(4, np.float32)}, str(tmp_path / "outside.safetensors"))
    spec = json.loads((path / "processors" / "inputs.json").read_text())
    stateful = next(e for e in spec["steps"] if "state" in e)
    stateful["state"] = "../../outside.safetensors"
    (path / "processors" / "inputs.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"outside .*a checkpoint's files must lie inside it"):
        VLAPolicy.from_pretrained(path, verify=False)  # the loader's own check (the manifest refuses it first)


def test_a_tokenizer_with_custom_code_is_never_run_even_on_a_terminal(ckpt, tmp_path):
    """transformers asks "run the custom code? [y/N]" on a terminal; vlaforge never lets it ask (or run it)."""
    import os
    import pty
    import time

    path, _ = ckpt
    tok = path / "tokenizer"
    marker = tmp_path / "ran"
    (tok / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((tok / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    cfg.pop("tokenizer_class", None)  # only the custom class names a tokenizer
    (tok / "tokenizer_config.json").write_text(json.dumps(cfg))
    code = ("from pathlib import Path; from vlaforge.backbones.base import load_tokenizer\n"
            f"try:\n    load_tokenizer(Path({str(tok)!r}))\nexcept ValueError as e:\n    print('refused:', e)\n")
    pid, fd = pty.fork()
    if pid == 0:  # the child runs on a terminal, where transformers would prompt
        os.execv(sys.executable, [sys.executable, "-c", code])
    deadline, out, answered = time.time() + 120, b"", False
    while time.time() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if b"[y/N]" in out and not answered:
            os.write(fd, b"y\n")  # what a user might type
            answered = True
    os.waitpid(pid, 0)
    assert b"[y/N]" not in out and not marker.exists(), out.decode(errors="replace")


def test_non_finite_weights_are_refused_at_load_and_actions_at_inference(ckpt):
    path, reader = ckpt
    weights = load_file(path / "model.safetensors")
    name = next(k for k in weights if k.startswith("backbone.model.") and k.endswith("q_proj.weight"))
    clean = dict(weights)
    weights[name] = weights[name].clone()
    weights[name][0, 0] = float("nan")
    save_torch(weights, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"model.safetensors: non-finite .*{name}"):
        VLAPolicy.from_pretrained(path, verify=False)  # the loader's own check (the manifest refuses it first)
    save_torch(clean, str(path / "model.safetensors"))
    policy = VLAPolicy.from_pretrained(path, verify=False)
    with torch.no_grad():
        dict(policy.named_parameters())[name][0].fill_(float("nan"))  # NaN reaching a tokens head at run time
    item = reader[2]
    with pytest.raises(ValueError, match="non-finite"):
        policy.predict_action({c: item[image_key(c)] for c in ("front", "wrist")}, item["task"],
                              item["observation.state"])


def test_python_dash_m_vlaforge_runs():
    out = subprocess.run([sys.executable, "-m", "vlaforge", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip()


def test_list_describes_registries_in_words(capsys):
    from vlaforge.cli.list import main

    assert main(["envs", "importers"]) == 0
    out = capsys.readouterr().out
    assert "metaworld" in out and "Meta-World v3" in out and "MetaWorldConfig(" not in out
    assert "openvla_oft" in out and "hybridvla" in out


def test_quickstart_train_options_reach_the_training_config(tmp_path):
    from vlaforge.cli.quickstart import QuickstartConfig, train_overrides
    from vlaforge.config import ConfigError, parse_overrides
    from vlaforge.presets import get_preset

    cfg = QuickstartConfig(preset="pi0_tiny", steps=300, max_train_minutes=7,
                           train="lr=3e-4 --batch_size=32 chunk=8 exec_steps=2 head.num_steps=5 data.shift_pad=2")
    tcfg = parse_overrides(get_preset(cfg.preset), train_overrides(cfg, tmp_path / "data", tmp_path / "train"))
    assert (tcfg.optim.lr, tcfg.batch_size, tcfg.steps, tcfg.max_minutes, tcfg.budget) == (3e-4, 32, 300, 7, "fit")
    assert (tcfg.policy.chunk, tcfg.policy.exec_steps, tcfg.policy.head.num_steps, tcfg.data.shift_pad) == (8, 2, 5, 2)
    assert tcfg.data.path == str(tmp_path / "data") and tcfg.policy.head.type == "pi0"
    with pytest.raises(ConfigError, match="config field 'train': expected space-separated KEY=VALUE"):
        QuickstartConfig(train="lr 3e-4")


@pytest.mark.parametrize("argv, line", [
    (["quickstart", "--demos", "0"], "config field 'demos': expected >= 1, got 0"),
    (["quickstart", "--train", "lr"], "config field 'train': expected space-separated KEY=VALUE"),
    (["collect", "metaworld", "--episodes", "0"], "config field 'episodes': expected >= 1, got 0"),
    (["serve", "ckpt", "--max_batch", "0"], "config field 'max_batch': expected >= 1, got 0"),
])
def test_a_failed_config_validation_is_one_line_naming_the_field(argv, line, capsys, tmp_path):
    from vlaforge.cli.main import main

    assert main([*argv, "--out", str(tmp_path / "out")] if argv[0] != "serve" else argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vlaforge {argv[0]}: error: {line}"), err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_quickstart_overwrite_removes_only_its_own_outputs(dataset, tmp_path):
    import shutil

    from vlaforge.cli.quickstart import clear_outputs

    out = tmp_path / "qs"
    shutil.copytree(dataset[0], out / "data")
    (out / "train" / "checkpoints").mkdir(parents=True)
    (out / "train" / "metrics.jsonl").write_text("")
    (out / "report.md").write_text("old")
    (out / "notes.txt").write_text("mine")
    clear_outputs(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    with pytest.raises(FileExistsError, match="holds no quick start outputs"):
        clear_outputs(out)  # a folder holding only someone else's files
    (out / "data").mkdir()
    (out / "data" / "thesis.tex").write_text("mine")
    with pytest.raises(FileExistsError, match="not a dataset vlaforge wrote"):
        clear_outputs(out)
    assert (out / "data" / "thesis.tex").read_text() == "mine"
