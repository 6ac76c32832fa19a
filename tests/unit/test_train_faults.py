"""Training under faults and changed minds: --resume with new options (applied and recorded, or refused), a disk
that fills up at a save, and DeepSpeed imported only when it is asked for."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from helpers import tiny_policy_config
from vlaforge.config import Paths
from vlaforge.train import checkpoint
from vlaforge.train.config import DataConfig, OptimConfig, TrainConfig


@pytest.fixture(scope="module")
def stopped_run(dataset, tmp_path_factory) -> Path:
    """A 3-step run stopped after step 1 (one checkpoint, 0000001)."""
    from vlaforge.train.trainer import train

    root, _ = dataset
    out = tmp_path_factory.mktemp("faults") / "run"
    train(TrainConfig(policy=tiny_policy_config("mlp", chunk=1), data=DataConfig(path=str(root), shift_pad=0),
                      out=str(out), steps=3, batch_size=2, save_every=5, log_every=1, stop_at=1,
                      optim=OptimConfig(warmup_steps=0)), show_progress=False)
    return out


@pytest.fixture
def run(stopped_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(stopped_run, copy, symlinks=True)  # `last` stays a relative symlink
    return copy


def _cli(*args: str) -> int:
    from vlaforge.cli.main import main

    return main(["train", "quickstart_tokens", *args])


def test_resume_applies_a_new_lr_and_records_it(run, capsys):
    from vlaforge.train.optim import make_optimizer

    assert _cli("--out", str(run), "--resume", "--lr=0.1", "--stop_at=2") == 0
    # the lr logged at step 2 is the schedule's after 2 of 3 steps, scaled to the new base lr
    _, sched = make_optimizer(torch.nn.Linear(2, 2), OptimConfig(lr=0.1, warmup_steps=0), 3)
    logged = {json.loads(ln)["step"]: json.loads(ln)["lr"] for ln in (run / "metrics.jsonl").read_text().splitlines()}
    assert logged[2] == pytest.approx(0.1 * sched.lr_lambdas[0](2), rel=1e-9)
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 0.1
    record = json.loads((run / "resumes.jsonl").read_text())
    assert record["step"] == 1 and record["changed"]["optim.lr"] == [3e-4, 0.1]


def test_resume_refuses_options_that_make_another_experiment(run, tmp_path, capsys):
    before = (run / "config.json").read_bytes()
    assert _cli("--out", str(run), "--resume", "--data", str(tmp_path / "other"), "--batch_size", "8") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "data.path" in err and "batch_size 2 -> 8" in err and "--init_from" in err
    assert (run / "config.json").read_bytes() == before
    assert sorted(p.name for p in Paths.checkpoints(run).iterdir()) == ["0000001", "last"]


def test_resume_changes_rule(stopped_run):
    from vlaforge.train.config import resume_changes

    saved = TrainConfig.from_json(stopped_run / "config.json")
    assert resume_changes(saved, saved.replace(steps=5, optim=OptimConfig(lr=0.1, warmup_steps=0)), 1) == {
        "steps": (3, 5), "optim.lr": (3e-4, 0.1)}
    with pytest.raises(ValueError, match=r"policy\.chunk 1 -> 2.*seed 0 -> 1"):
        resume_changes(saved, saved.replace(policy=saved.policy.replace(chunk=2, exec_steps=1), seed=1), 1)
    with pytest.raises(ValueError, match="steps: expected >= 5"):
        resume_changes(saved, saved, 5)


def _save(run: Path, step: int, keep_last: int = 2) -> Path:
    """save_checkpoint of the run's policy with a small fake optimizer state."""
    from vlaforge.policy import VLAPolicy

    policy = VLAPolicy.from_pretrained(Paths.checkpoint(run, 1))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return checkpoint.save_checkpoint(run, policy, step, sched, {"state": {}, "param_groups": []},
                                      {"rank0/x": torch.zeros(1)}, keep_last=keep_last)


def _disk(monkeypatch, free: int) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _: usage(10 * free, 9 * free, free))


def _left(run: Path) -> list[str]:
    return sorted(p.name for p in Paths.checkpoints(run).iterdir())


def test_save_refuses_up_front_when_the_disk_is_too_small(run, monkeypatch):
    _disk(monkeypatch, 1000)
    with pytest.raises(RuntimeError, match=r"not enough disk space for checkpoint 0000002: it needs about [\d.]+ GB "
                                           r"in .*checkpoints, 0\.00 GB free"):
        _save(run, 2, keep_last=1)  # the keep limit would drop 0000001, but it is the last good one
    assert _left(run) == ["0000001", "last"]
    assert os.readlink(Paths.last_checkpoint(run)) == "0000001"


def test_disk_full_while_writing_leaves_no_temporary(run, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(RuntimeError, match=r"disk full while writing checkpoint 0000002: it needs about .* GB in "):
        _save(run, 2)
    assert _left(run) == ["0000001", "last"]  # no .tmp-*, no .last-tmp
    assert os.readlink(Paths.last_checkpoint(run)) == "0000001"


def test_checkpoints_the_keep_limit_drops_go_first_when_space_is_short(run, monkeypatch):
    _save(run, 2)
    # room for the new checkpoint only once 0000001 (which keep_last=2 prunes after this save anyway) is gone
    _disk(monkeypatch, checkpoint._FILES_MARGIN)  # < the need (margin + weights) < free + size
    real = checkpoint.save_file

    def save_file(tensors, path):
        if Paths.checkpoint(run, 1).exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    _save(run, 3)
    assert _left(run) == ["0000002", "0000003", "last"]


def test_a_run_without_deepspeed_does_not_import_it(tmp_path):
    """DeepSpeed's import prints "Setting accelerator to CPU" on every process: only --distributed=deepspeed may."""
    import importlib.util
    import socket

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (nothing could import it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = f"""
import os, sys, torch
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT="{port}")
from vlaforge.train.runtime import make_runtime
rt = make_runtime("ddp", "fp32")
lin = torch.nn.Linear(2, 2)
model, opt = rt.prepare(lin, torch.optim.SGD(lin.parameters(), lr=0.1))
rt.backward(model(torch.ones(1, 2)).sum())
rt.clip_grad_norm(model, 1.0)
rt.full_state_dict(model)
rt.unwrap(model)
torch.distributed.destroy_process_group()
print("deepspeed imported:", "deepspeed" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "deepspeed imported: False" in proc.stdout, proc.stderr[-2000:]


def test_resume_refuses_a_training_state_changed_after_saving(run):
    opt = run / "checkpoints" / "0000001" / "train_state" / "optimizer.safetensors"
    data = bytearray(opt.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern of one optimizer moment: would resume silently without the manifest
    opt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="optimizer.safetensors: content differs"):
        _cli_raising("--out", str(run), "--resume", "--stop_at=2")


def _cli_raising(*args: str) -> None:
    from vlaforge.cli.train import main

    main(["quickstart_tokens", *args])
