"""Atomic, resumable training checkpoints.

A training checkpoint is a policy checkpoint (loadable for inference as it is) plus ``train_state/``::

    train_state/optimizer.safetensors   AdamW moments, one tensor per (param index, name)
    train_state/state.json              step, optimizer param groups, scheduler state, data position
    train_state/rng.safetensors         torch / numpy / python RNG states
    train_state/raw_model.safetensors   with EMA on: the raw (non-averaged) weights; model.safetensors then holds
                                        the EMA weights, which evaluation and serving use

It is written into a hidden temporary directory and renamed into place, then the ``last`` symlink is swapped
atomically, so a crash (even ``kill -9``) leaves either the previous or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from vlaforge.config import Paths
from vlaforge.policy import VLAPolicy


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            tensors[f"{pid}.{name}"] = t.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _rng_state() -> dict[str, torch.Tensor]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.float64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor(list(py_state[1]), dtype=torch.int64),
        "python_meta": torch.tensor([py_state[0]] + ([] if py_state[2] is None else [py_state[2]]),
                                    dtype=torch.float64),
    }


def _set_rng_state(t: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(t["torch"])
    meta = t["numpy_meta"].tolist()
    np.random.set_state(("MT19937", t["numpy_keys"].numpy().astype(np.uint32), int(meta[0]), int(meta[1]),
                         float(t["numpy_gauss"][0])))
    pm = t["python_meta"].tolist()
    random.setstate((int(pm[0]), tuple(int(x) for x in t["python"].tolist()), pm[1] if len(pm) > 1 else None))


def save_checkpoint(run_dir: Path, policy: VLAPolicy, optimizer: torch.optim.Optimizer | None, scheduler: Any,
                    step: int, extra: dict[str, Any] | None = None, keep_last: int = 2, ema: Any = None) -> Path:
    """Write checkpoint ``step`` atomically and point ``last`` at it; prune older periodic checkpoints.

    With ``ema`` (a :class:`torch.optim.swa_utils.AveragedModel` of ``policy``) the checkpoint's model is the EMA
    and the raw weights go to ``train_state/`` for resuming. Without ``optimizer`` (sharded runs) the checkpoint
    holds the weights and the step but cannot be resumed.
    """
    root = Paths.checkpoints(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = Paths.checkpoint(run_dir, step)
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    (ema.module if ema is not None else policy).save_pretrained(tmp)
    ts = tmp / "train_state"
    ts.mkdir()
    if ema is not None:
        save_model(policy, str(ts / "raw_model.safetensors"))
        extra = {**(extra or {}), "ema_n_averaged": int(ema.n_averaged)}
    state: dict[str, Any] = {"step": step, "scheduler": scheduler.state_dict(), "resumable": optimizer is not None}
    if optimizer is not None:
        tensors, groups = _optimizer_tensors(optimizer)
        save_file(tensors, str(ts / "optimizer.safetensors"))
        state["optimizer"] = groups
    save_file(_rng_state(), str(ts / "rng.safetensors"))
    state.update(extra or {})
    (ts / "state.json").write_text(json.dumps(state, indent=2))
    for f in [*tmp.rglob("*")]:
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link_tmp = root / ".last-tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(final.name, link_tmp)
    os.replace(link_tmp, Paths.last_checkpoint(run_dir))
    _fsync_dir(root)
    steps = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit())
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_weights(model: torch.nn.Module, path: Path, ckpt: Path) -> None:
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt}: weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_train_state(ckpt: Path, policy: VLAPolicy, optimizer: torch.optim.Optimizer,
                     scheduler: Any, ema: Any = None) -> dict[str, Any]:
    """Restore weights (and EMA), optimizer, scheduler and RNG from a training checkpoint; returns ``state.json``."""
    ts = ckpt / "train_state"
    if not (ts / "state.json").is_file():
        raise FileNotFoundError(f"{ckpt} is not a training checkpoint (no train_state/state.json)")
    state = json.loads((ts / "state.json").read_text())
    if not state.get("resumable", True):
        raise ValueError(f"{ckpt} was written by a sharded (fsdp) run without optimizer state; it loads for "
                         f"inference and fine-tuning (--init_from) but cannot be resumed")
    raw = ts / "raw_model.safetensors"
    if (ema is None) != (not raw.is_file()):
        raise ValueError(f"{ckpt}: the checkpoint was written with{'out' if not raw.is_file() else ''} EMA; resume "
                         f"with the same --ema setting")
    _load_weights(policy, raw if ema is not None else ckpt / "model.safetensors", ckpt)
    if ema is not None:
        _load_weights(ema.module, ckpt / "model.safetensors", ckpt)
        ema.n_averaged.fill_(state["ema_n_averaged"])
    tensors = load_file(str(ts / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    sched = dict(state["scheduler"])
    sched.pop("lr_lambdas", None)
    scheduler.__dict__.update(sched)
    _set_rng_state(load_file(str(ts / "rng.safetensors")))
    return state
