"""LeRobot policy checkpoints -> vlaforge: ``vlaforge import lerobot SRC`` (pi0 and pi0.5 here).

Reference: LeRobot ``src/lerobot/policies/{pi0,pi05}/`` (``modeling_*.py``: ``_fix_pytorch_state_dict_keys``,
``processor_*.py``) and ``src/lerobot/processor/normalize_processor.py``. A checkpoint directory (as pushed to the
Hub) holds ``config.json`` (``"type"``, ``chunk_size``, ``input_features`` / ``output_features``,
``normalization_mapping``), ``model.safetensors`` (openpi's names under ``model.``; the tied ``lm_head`` /
``embed_tokens`` either or both; pi0.5's time MLP sometimes under pi0's ``action_time_mlp_*`` names) and, in newer
repositories, ``policy_preprocessor.json`` / ``policy_postprocessor.json`` whose normalizer steps keep the
statistics in ``policy_*_step_N_normalizer_processor.safetensors`` (keys ``observation.state.mean``,
``action.q01`` …). LeRobot normalizes mean/std as ``(x − mean) / (std + eps)`` and quantiles as
``2 (x − q01) / (q99 − q01) − 1`` without an epsilon; ``eps`` (config of the step, 1e-8) is folded into std.

The model then maps as ``vlaforge.weights.openpi`` describes; cameras are the ``VISUAL`` input features in order.
Other policy types are refused with the list of supported ones (each type adds one entry to ``LEROBOT_TYPES``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.data.stats import Stats
from vlaforge.types import ACTION, OBS_IMAGES, OBS_STATE, camera_of
from vlaforge.weights import IMPORTERS
from vlaforge.weights.common import Imported, LayoutError, load_source_tokenizer, read_json, read_safetensors_dir

MODES = {"MEAN_STD": "mean_std", "QUANTILES": "q01_q99", "MIN_MAX": "min_max", "IDENTITY": "identity"}


def lerobot_stats(src: Path, mapping: dict[str, str]) -> tuple[Stats, dict[str, str]]:
    """The statistics of the ``normalizer_processor`` step in ``policy_preprocessor.json`` (its safetensors file)
    and the vlaforge normalization modes of state and action (from ``config.json``'s ``normalization_mapping``)."""
    from safetensors.numpy import load_file

    modes = {key: MODES.get(str(mapping.get(kind, "")).upper(), "") for key, kind in
             ((OBS_STATE, "STATE"), (ACTION, "ACTION"))}
    bad = {k: mapping.get(kind) for (k, kind) in ((OBS_STATE, "STATE"), (ACTION, "ACTION")) if not modes[k]}
    if bad:
        raise LayoutError(f"{src / 'config.json'}: normalization_mapping {bad} not one of {sorted(MODES)}")
    f = src / "policy_preprocessor.json"
    if not f.is_file():
        raise LayoutError(f"{src}: no policy_preprocessor.json (older LeRobot repositories keep the statistics in "
                          f"the dataset; re-save the policy with a current LeRobot)")
    steps = read_json(f, "LeRobot processor").get("steps", [])
    norm = next((s for s in steps if s.get("registry_name") == "normalizer_processor"), None)
    if norm is None or not norm.get("state_file"):
        raise LayoutError(f"{f}: no normalizer_processor step with a state_file (steps: "
                          f"{[s.get('registry_name') for s in steps]})")
    state_file = src / norm["state_file"]
    if not state_file.is_file():
        raise LayoutError(f"{f}: its normalizer state {norm['state_file']} is missing")
    flat = load_file(str(state_file))
    eps = float((norm.get("config") or {}).get("eps", 1e-8))
    out: Stats = {}
    for key in (OBS_STATE, ACTION):
        entry = {name[len(key) + 1:]: np.asarray(v, dtype=np.float64).reshape(-1) for name, v in flat.items()
                 if name.startswith(key + ".")}
        if not entry:
            continue
        if "std" in entry:
            entry["std"] = entry["std"] + eps
        if "q01" in entry and "q99" in entry:
            entry.setdefault("min", entry["q01"])
            entry.setdefault("max", entry["q99"])
        out[key] = {k: v.astype(np.float32) for k, v in entry.items()}
    if ACTION not in out:
        raise LayoutError(f"{state_file}: no '{ACTION}.*' statistics (found {sorted(flat)[:6]})")
    return out, modes


def _cameras(cfg: dict[str, Any], where: str) -> tuple[str, ...]:
    feats = cfg.get("input_features") or {}
    cams = tuple(camera_of(k) for k, v in feats.items() if k.startswith(OBS_IMAGES + ".")
                 and str((v or {}).get("type", "VISUAL")).upper() == "VISUAL")
    if not cams:
        raise LayoutError(f"{where}: input_features name no '{OBS_IMAGES}.*' camera (have {sorted(feats)})")
    return cams


def import_lerobot_pi0(src: Path, cfg: dict[str, Any], *, unnorm_key: str | None, cameras: tuple[str, ...] | None,
                       dtype: str, tokenizer: str | None) -> Imported:
    """A LeRobot ``pi0`` / ``pi05`` directory (see the module docstring)."""
    from vlaforge.weights.openpi import pi0_policy_config, rename_openpi

    where = str(src / "config.json")
    if tokenizer is None:
        raise LayoutError("LeRobot pi0 / pi0.5 checkpoints carry no tokenizer: pass --tokenizer DIR (PaliGemma's, "
                          "google/paligemma-3b-pt-224 as a local transformers directory)")
    tok = load_source_tokenizer(Path(tokenizer))
    w = rename_openpi(read_safetensors_dir(src), str(src / "model.safetensors"), prefix="model.")
    stats, modes = lerobot_stats(src, cfg.get("normalization_mapping") or {})
    cams = tuple(cameras or _cameras(cfg, where))
    chunk = int(cfg.get("chunk_size", 50))
    for flag in ("use_relative_actions", "use_visual_memory", "use_proprioceptive_memory"):
        if cfg.get(flag):
            raise LayoutError(f"{where}: {flag}=true is not supported (plain pi0 / pi0.5 only)")
    policy_cfg, robot = pi0_policy_config(w, tok, stats, where=str(src), cameras=cams, dtype=dtype, chunk=chunk,
                                          state_in_prompt=True, modes=modes)
    n_exec = int(cfg.get("n_action_steps", policy_cfg.exec_steps))
    policy_cfg = policy_cfg.replace(exec_steps=max(1, min(n_exec, chunk)))
    notes = ["# Imported LeRobot checkpoint", "", f"source: {src}", f"type: {cfg.get('type')}, chunk {chunk}, "
             f"cameras {list(cams)}, normalization {modes}",
             "exact: weights (openpi's architecture), prompt layout, normalization (LeRobot's eps folded into std)",
             "approximate: images resized with torch bilinear + antialias when not 224 px; the instruction as given "
             "(LeRobot replaces '_' and newlines); quantile-normalized values clipped to [-1, 1]"]
    return Imported(policy_cfg, w, tok, {"lerobot": stats}, "lerobot", robot, notes)


LEROBOT_TYPES = {"pi0": import_lerobot_pi0, "pi05": import_lerobot_pi0}


@IMPORTERS.register("lerobot")
def import_lerobot(src: Path, unnorm_key: str | None = None, cameras: tuple[str, ...] | None = None,
                   dtype: str = "bfloat16", tokenizer: str | None = None) -> Imported:
    """A LeRobot policy directory (``config.json`` + ``model.safetensors`` + ``policy_*processor*`` files)."""
    src = Path(src)
    cfg = read_json(src / "config.json", "LeRobot config.json")
    kind = cfg.get("type")
    if kind not in LEROBOT_TYPES:
        raise LayoutError(f"{src / 'config.json'}: policy type {kind!r}, supported: {sorted(LEROBOT_TYPES)}")
    return LEROBOT_TYPES[kind](src, cfg, unnorm_key=unnorm_key, cameras=cameras, dtype=dtype, tokenizer=tokenizer)
