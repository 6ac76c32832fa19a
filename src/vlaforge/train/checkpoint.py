"""Atomic, resumable training checkpoints.

A training checkpoint is a policy checkpoint (loadable for inference as it is) plus ``train_state/``::

    train_state/optimizer.safetensors   the full optimizer state, one tensor per ``{parameter name}/{state name}``
    train_state/state.json              step, optimizer param groups (with parameter names), scheduler state, ...
    train_state/rng.safetensors         every process's torch / numpy / python RNG states (``rank{r}/...``)
    train_state/raw_model.safetensors   with EMA on: the raw (non-averaged) weights; model.safetensors then holds
                                        the EMA weights, which evaluation and serving use

Weights and optimizer state are full (gathered from shards under FSDP / DeepSpeed) and keyed by parameter name,
so a checkpoint resumes under any engine and number of processes. It is written into a hidden temporary directory
and renamed into place, then the ``last`` symlink is swapped atomically, so a crash (even ``kill -9``) leaves
either the previous or the new checkpoint, never half of one.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlaforge.config import Paths
from vlaforge.manifest import verify_enabled, verify_manifest, write_manifest
from vlaforge.policy import VLAPolicy, data_address, load_weights, save_state_dict

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for name, st in state["state"].items():
        for key, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            if key == "step":  # float32 as torch's Adam keeps it (DeepSpeed's CPU Adam counts in a Python int)
                t = t.float()
            tensors[f"{name}/{key}"] = t.detach().cpu().contiguous()
    return tensors, state["param_groups"]


def _rng_state() -> dict[str, torch.Tensor]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.float64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor(list(py_state[1]), dtype=torch.int64),
        # fixed length on every process (so it can be all-gathered): gauss_next None is NaN
        "python_meta": torch.tensor([py_state[0], math.nan if py_state[2] is None else py_state[2]],
                                    dtype=torch.float64),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def gather_rng_states(runtime: Any) -> dict[str, torch.Tensor]:
    """Every process's RNG states as ``rank{r}/{name}`` (a collective: every rank calls it)."""
    out = {}
    for name, t in _rng_state().items():
        for r, part in enumerate(runtime.all_gather(t)):
            out[f"rank{r}/{name}"] = part
    return out


def _set_rng_state(saved: dict[str, torch.Tensor], rank: int) -> None:
    prefix = f"rank{rank}/"
    if not any(k.startswith(prefix) for k in saved):
        n = len({k.split("/", 1)[0] for k in saved})
        log.warning("the checkpoint holds the RNG states of %d process(es), not of rank %d: it continues from "
                    "rank 0's state (random draws will differ from an uninterrupted run)", n, rank)
        prefix = "rank0/"
    t = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
    torch.set_rng_state(t["torch"])
    if "cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["cuda"])
    meta = t["numpy_meta"].tolist()
    np.random.set_state(("MT19937", t["numpy_keys"].numpy().astype(np.uint32), int(meta[0]), int(meta[1]),
                         float(t["numpy_gauss"][0])))
    version, gauss = t["python_meta"].tolist()
    random.setstate((int(version), tuple(int(x) for x in t["python"].tolist()), None if math.isnan(gauss) else gauss))


_FILES_MARGIN = 32 * 2**20  # config, processors and tokenizer files next to the tensors (bytes, generous)


def _tensor_bytes(*groups: dict[str, torch.Tensor] | None) -> int:
    """Bytes the tensors of ``groups`` take in safetensors files (a tied / shared storage counted once per group)."""
    total = 0
    for group in groups:
        seen: set[tuple[int, int]] = set()
        for t in (group or {}).values():
            key = (data_address(t), t.numel())
            if t.numel() and key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def _step_dirs(root: Path) -> list[Path]:
    """The periodic checkpoint directories under ``root`` (``checkpoints/0000100``, ...), oldest first."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit())


def _make_room(root: Path, step_name: str, need: int, keep_last: int) -> None:
    """Check that a checkpoint of ``need`` bytes fits under ``root``; when it does not, remove first the periodic
    checkpoints that pruning would remove after the write anyway (never the one ``last`` points to, nor the newest),
    and if that is still not enough, raise before writing anything."""
    free = shutil.disk_usage(root).free
    if free >= need:
        return
    last = Paths.last_checkpoint(root.parent)
    old = [p for p in _step_dirs(root) if p.name != step_name]
    keep = {old[-1].name} if old else set()
    if last.is_symlink():
        keep.add(os.readlink(last))
    # after the write the newest keep_last of old + new stay: the new one takes one place
    drop = [p for p in old[:max(len(old) - (keep_last - 1), 0)] if p.name not in keep]
    sizes = {p: _dir_bytes(p) for p in drop}
    if free + sum(sizes.values()) < need:
        freed = f" ({_gb(sum(sizes.values()))} more once old checkpoints are pruned)" if drop else ""
        raise RuntimeError(f"not enough disk space for checkpoint {step_name}: it needs about {_gb(need)} in {root}, "
                           f"{_gb(free)} free{freed}; free some space (or lower --keep_last) and resume with --resume")
    for p in drop:
        log.warning("disk almost full (%s free, checkpoint %s needs about %s): removing checkpoint %s before writing "
                    "the new one", _gb(free), step_name, _gb(need), p.name)
        shutil.rmtree(p, ignore_errors=True)


def _disk_full(e: BaseException) -> bool:
    """``e`` says the disk is full: an OSError(ENOSPC), or safetensors' SafetensorError wrapping one (its text holds
    the Rust I/O error, whose message is the system's "No space left on device")."""
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or os.strerror(errno.ENOSPC) in str(e)


def save_checkpoint(run_dir: Path, policy: VLAPolicy, step: int, scheduler: Any, optimizer_state: dict[str, Any],
                    rng: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None = None,
                    raw_weights: dict[str, torch.Tensor] | None = None, extra: dict[str, Any] | None = None,
                    keep_last: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and point ``last`` at it; prune older periodic checkpoints.

    ``policy`` gives the config and pipelines, and its own weights unless ``weights`` (the full weights to publish:
    gathered shards, or the EMA) is given; ``raw_weights`` are the non-averaged weights of an EMA run.
    ``optimizer_state`` is :meth:`SingleProcess.optimizer_state`'s format, ``rng`` :func:`gather_rng_states`'.

    The free space is checked first (:func:`_make_room`); a failed write (disk full included) removes its temporary
    directory and leaves the previous checkpoints and ``last`` as they were.
    """
    root = Paths.checkpoints(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = Paths.checkpoint(run_dir, step)
    for stale in root.glob(".tmp-*"):  # an interrupted save's leftovers (only the main process writes here)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{final.name}"
    tensors, groups = _optimizer_tensors(optimizer_state)
    need = int(_tensor_bytes(weights if weights is not None else policy.state_dict(), raw_weights, tensors, rng)
               * 1.01) + _FILES_MARGIN
    _make_room(root, final.name, need, keep_last)
    link_tmp = root / ".last-tmp"
    try:
        policy.save_pretrained(tmp, weights=weights)
        ts = tmp / "train_state"
        ts.mkdir()
        if raw_weights is not None:
            save_state_dict(raw_weights, ts / "raw_model.safetensors")
        save_file(tensors, str(ts / "optimizer.safetensors"))
        save_file(rng, str(ts / "rng.safetensors"))
        state: dict[str, Any] = {"step": step, "scheduler": scheduler.state_dict(), "resumable": True,
                                 "optimizer": {"param_groups": groups}, **(extra or {})}
        (ts / "state.json").write_text(json.dumps(state, indent=2))
        write_manifest(tmp)  # now over train_state/ too
        for f in [*tmp.rglob("*")]:
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        os.symlink(final.name, link_tmp)
        os.replace(link_tmp, Paths.last_checkpoint(run_dir))
    except BaseException as e:  # nothing half-written stays behind; the previous checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        if link_tmp.is_symlink():
            link_tmp.unlink()
        if isinstance(e, Exception) and _disk_full(e):
            free = shutil.disk_usage(root).free
            raise RuntimeError(f"disk full while writing checkpoint {final.name}: it needs about {_gb(need)} in "
                               f"{root}, {_gb(free)} free now; free some space (or lower --keep_last) and resume "
                               f"with --resume") from e
        raise
    _fsync_dir(root)
    for old in _step_dirs(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_train_state(ckpt: Path) -> dict[str, Any]:
    """``train_state/state.json`` of a resumable training checkpoint (clear errors otherwise)."""
    ts = ckpt / "train_state"
    if not (ts / "state.json").is_file():
        raise FileNotFoundError(f"{ckpt} is not a training checkpoint (no train_state/state.json)")
    state = json.loads((ts / "state.json").read_text())
    groups = state.get("optimizer", {}).get("param_groups", [])
    if not state.get("resumable", True) or any(not isinstance(p, str) for g in groups for p in g["params"]):
        raise ValueError(f"{ckpt} was written by an older vlaforge (optimizer state without parameter names); it "
                         f"loads for inference and fine-tuning (--init_from) but cannot be resumed")
    return state


def _trained_weights(ckpt: Path) -> Path:
    """The file of the weights the optimizer trains: the raw ones of an EMA run, else the published ones."""
    raw = ckpt / "train_state" / "raw_model.safetensors"
    return raw if raw.is_file() else ckpt / "model.safetensors"


def load_train_weights(ckpt: Path, policy: VLAPolicy, ema: Any = None) -> dict[str, Any]:
    """Restore the weights (and the EMA's) into the unwrapped, unsharded modules; returns ``state.json``. The
    checkpoint's manifest (training state included) is verified first unless $VLAFORGE_VERIFY=0."""
    if verify_enabled(None):
        verify_manifest(ckpt)
    state = read_train_state(ckpt)
    has_ema = (ckpt / "train_state" / "raw_model.safetensors").is_file()
    if (ema is not None) != has_ema:
        raise ValueError(f"{ckpt}: the checkpoint was written with{'' if has_ema else 'out'} EMA; resume "
                         f"with the same --ema setting")
    load_weights(policy, _trained_weights(ckpt))
    if ema is not None:
        load_weights(ema.module, ckpt / "model.safetensors")
        ema.n_averaged.fill_(state["ema_n_averaged"])
    return state


def load_train_state(ckpt: Path, state: dict[str, Any], runtime: Any, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Restore an engine's master weights and the optimizer (into a prepared, possibly sharded model), the
    scheduler and this rank's RNG; ``state`` is the ``state.json`` :func:`load_train_weights` returned."""
    ts = ckpt / "train_state"
    runtime.load_master_weights(model, _trained_weights(ckpt))
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in load_file(str(ts / "optimizer.safetensors")).items():
        name, field = key.rsplit("/", 1)
        per_param.setdefault(name, {})[field] = v
    runtime.load_optimizer_state(model, optimizer, {"state": per_param,
                                                    "param_groups": state["optimizer"]["param_groups"]})
    sched = dict(state["scheduler"])
    sched.pop("lr_lambdas", None)
    scheduler.__dict__.update(sched)
    _set_rng_state(load_file(str(ts / "rng.safetensors")), runtime.rank)
