"""LeRobot policy checkpoints -> vlaforge: ``vlaforge import lerobot SRC --tokenizer VLM_DIR --out CKPT``.

A LeRobot policy directory (``save_pretrained`` of a ``PreTrainedPolicy``, e.g. a fine-tune of
``lerobot/smolvla_base``) holds ``model.safetensors``, ``config.json`` (the policy config with its ``type`` tag and
``input_features`` / ``output_features``) and the processor pipelines: ``policy_preprocessor.json`` and
``policy_postprocessor.json``, whose ``normalizer_processor`` / ``unnormalizer_processor`` steps keep their statistics
in ``policy_{pre,post}processor_step_N_*.safetensors`` (``<feature>.<stat>`` keys; LeRobot's ``eps`` of the step,
1e-8, is folded into std). The policy ``type`` picks the converter (``CONVERTERS``): ``smolvla`` here, ``pi0`` and
``pi05`` through ``vlaforge.weights.openpi``'s mapping (openpi's names under ``model.``; the tied ``lm_head`` /
``embed_tokens`` either or both; pi0.5's time MLP sometimes under pi0's ``action_time_mlp_*`` names).

SmolVLA (LeRobot ``policies/smolvla``) maps onto the ``smolvlm`` backbone with SmolVLA's options
(``vlaforge.presets.smolvla.SMOLVLA_BACKBONE``) and the ``smolvla_expert`` head; weights are renamed
``model.vlm_with_expert.vlm.`` -> ``backbone.model.``, ``model.vlm_with_expert.lm_expert.`` -> ``head.expert.``,
``model.state_proj.`` -> ``backbone.proprio.0.`` (its columns past the state dim dropped: LeRobot pads the state with
zeros to ``max_state_dim``, so they never contribute) and ``model.action_*`` -> ``head.action_*`` (kept
``max_action_dim`` wide: the padded action dims are integrated noise that feeds back into the expert). The VLM's own
config and tokenizer are not in the checkpoint (LeRobot fetches ``vlm_model_name`` from the Hub): ``--tokenizer``
names a local snapshot of that VLM (config.json + tokenizer files).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from vlaforge.backbones.base import BACKBONES
from vlaforge.data.stats import Stats
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig
from vlaforge.presets.smolvla import SMOLVLA_BACKBONE
from vlaforge.types import ACTION, OBS_IMAGES, OBS_STATE, RobotSpec, camera_of
from vlaforge.weights import IMPORTERS
from vlaforge.weights.common import Imported, LayoutError, load_source_tokenizer, read_json, read_safetensors_dir

log = logging.getLogger(__name__)

# LeRobot NormalizationMode -> vlaforge normalization mode
NORM_MODES = {"MEAN_STD": "mean_std", "MIN_MAX": "min_max", "IDENTITY": "identity", "QUANTILES": "q01_q99"}
_STAT_NAMES = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "q01_q99": ("q01", "q99")}


def processor_stats(src: Path, pipeline: str, registry_name: str) -> dict[str, dict[str, np.ndarray]]:
    """``{feature: {stat: array}}`` of the ``registry_name`` step of ``{pipeline}.json`` (its state file)."""
    from safetensors.numpy import load_file

    f = src / f"{pipeline}.json"
    spec = read_json(f, "LeRobot processor pipeline")
    steps = spec.get("steps") if isinstance(spec, dict) else None
    if not isinstance(steps, list):
        raise LayoutError(f"{f}: expected an object with a 'steps' list")
    entry = next((s for s in steps if isinstance(s, dict) and s.get("registry_name") == registry_name), None)
    if entry is None or not entry.get("state_file"):
        raise LayoutError(f"{f}: no {registry_name!r} step with a state_file (found "
                          f"{[s.get('registry_name') for s in steps if isinstance(s, dict)]})")
    path = src / entry["state_file"]
    if not path.is_file():
        raise LayoutError(f"{f}: state_file {entry['state_file']} is missing")
    eps = float((entry.get("config") or {}).get("eps", 1e-8))  # LeRobot: (x - mean) / (std + eps)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(str(path)).items():
        feature, _, stat = key.rpartition(".")
        value = np.asarray(value, dtype=np.float64).reshape(-1)
        out.setdefault(feature, {})[stat] = (value + eps if stat == "std" else value).astype(np.float32)
    return out


def _cameras(hf: dict[str, Any], where: Path) -> list[str]:
    """The ``VISUAL`` input features' camera names, in the config's order."""
    feats = hf.get("input_features") or {}
    cams = [camera_of(k) for k, v in feats.items() if k.startswith(OBS_IMAGES + ".")
            and str((v or {}).get("type", "VISUAL")).upper() == "VISUAL"]
    if not cams:
        raise LayoutError(f"{where}: input_features has no VISUAL '{OBS_IMAGES}.*' entry (have {sorted(feats)})")
    return cams


def _features(hf: dict[str, Any], where: Path) -> tuple[list[str], int, int]:
    """(cameras in the config's order, state dim, action dim) from ``input_features`` / ``output_features``."""
    inputs, outputs = hf.get("input_features"), hf.get("output_features")
    if not isinstance(inputs, dict) or not isinstance(outputs, dict) or ACTION not in outputs:
        raise LayoutError(f"{where}: expected input_features and output_features with an '{ACTION}' entry")
    state = inputs.get(OBS_STATE, {})
    return _cameras(hf, where), int((state.get("shape") or [0])[0]), int(outputs[ACTION]["shape"][0])


def _modes(hf: dict[str, Any], state_dim: int, where: Path) -> dict[str, str]:
    mapping = hf.get("normalization_mapping") or {}
    modes = {}
    for key, kind in ((OBS_STATE, "STATE"), (ACTION, "ACTION")):
        if key == OBS_STATE and not state_dim:
            continue
        mode = mapping.get(kind, "MEAN_STD")
        if mode not in NORM_MODES:
            raise LayoutError(f"{where}: normalization_mapping.{kind} is {mode!r}, expected one of "
                              f"{sorted(NORM_MODES)}")
        modes[key] = NORM_MODES[mode]
    return modes


def _stats(src: Path, modes: dict[str, str]) -> Stats:
    """State statistics from the preprocessor, action statistics from the postprocessor (what un-normalizes; the
    preprocessor's copy where a checkpoint has no postprocessor)."""
    stats: Stats = {}
    sources = {OBS_STATE: ("policy_preprocessor", "normalizer_processor"),
               ACTION: ("policy_postprocessor", "unnormalizer_processor")}
    for key, mode in modes.items():
        if mode == "identity":
            continue
        pipeline, step = sources[key]
        if not (src / f"{pipeline}.json").is_file():
            pipeline, step = sources[OBS_STATE]
        found = processor_stats(src, pipeline, step)
        need = _STAT_NAMES[mode]
        if key not in found or any(n not in found[key] for n in need):
            raise LayoutError(f"{src / pipeline}.json: the {step} statistics have no {key} {'/'.join(need)} "
                              f"(have {sorted(f'{k}.{s}' for k, v in found.items() for s in v)[:8]})")
        stats[key] = dict(found[key])
        if mode == "q01_q99":
            stats[key].setdefault("min", stats[key]["q01"])
            stats[key].setdefault("max", stats[key]["q99"])
    return stats


# ---------------------------------------------------------------- SmolVLA
# SmolVLM2-500M-Video-Instruct's architecture, used when --tokenizer has no config.json (head counts and the
# pixel-shuffle factor cannot be read off the weights' shapes).
SMOLVLM2_500M = {
    "model_type": "smolvlm", "scale_factor": 4, "tie_word_embeddings": False,
    "vision_config": {"model_type": "smolvlm_vision", "hidden_size": 768, "intermediate_size": 3072,
                      "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 512, "patch_size": 16},
    "text_config": {"model_type": "llama", "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                    "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64, "rms_norm_eps": 1e-5,
                    "vocab_size": 49280, "max_position_embeddings": 8192, "tie_word_embeddings": False},
}
_RENAMES = (("model.vlm_with_expert.vlm.", "backbone.model."), ("model.vlm_with_expert.lm_expert.", "head.expert."),
            ("model.state_proj.", "backbone.proprio.0."), ("model.action_", "head.action_"))


def smolvla_weights(sd: dict[str, Tensor], state_dim: int, where: str) -> dict[str, Tensor]:
    """LeRobot SmolVLA weights in vlaforge names (see the module docstring)."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new = next((ours + key[len(theirs):] for theirs, ours in _RENAMES if key.startswith(theirs)), None)
        if new is None:
            raise LayoutError(f"{where}: unexpected SmolVLA weight {key!r} (expected keys under "
                              f"{[t for t, _ in _RENAMES]})")
        out[new] = value
    proj = "backbone.proprio.0.weight"
    if proj in out:
        out[proj] = out[proj][:, :state_dim]
    embed = "backbone.model.model.text_model.embed_tokens.weight"
    if "backbone.model.lm_head.weight" not in out and embed in out:  # a tied LM head is saved once
        out["backbone.model.lm_head.weight"] = out[embed]
    return out


def _vlm_config(tokenizer_dir: Path | None, hf: dict[str, Any], sd: dict[str, Tensor]) -> tuple[dict[str, Any], str]:
    """The VLM's HF config: from the snapshot's config.json, else SmolVLM2-500M's (sizes checked on the weights)."""
    if tokenizer_dir is not None and (tokenizer_dir / "config.json").is_file():
        vlm = read_json(tokenizer_dir / "config.json", "VLM config.json")
        if vlm.get("model_type") not in ("smolvlm", "idefics3"):
            raise LayoutError(f"{tokenizer_dir / 'config.json'}: model_type {vlm.get('model_type')!r}, expected "
                              f"'smolvlm' (a snapshot of {hf.get('vlm_model_name')})")
        origin = f"{tokenizer_dir / 'config.json'}"
    else:
        vlm, origin = dict(SMOLVLM2_500M), "built-in SmolVLM2-500M-Video-Instruct shapes"
    vlm = {k: v for k, v in vlm.items() if k not in ("architectures", "_name_or_path", "auto_map")}
    text = dict(vlm.get("text_config") or {})
    emb = sd.get("model.vlm_with_expert.vlm.model.text_model.embed_tokens.weight")
    if emb is not None and tuple(emb.shape) != (text.get("vocab_size"), text.get("hidden_size")):
        raise LayoutError(f"{origin}: text vocab x hidden {text.get('vocab_size')} x {text.get('hidden_size')}, "
                          f"the weights' embedding is {list(emb.shape)} (pass --tokenizer with the VLM's snapshot)")
    vlm["text_config"] = text
    return vlm, origin


def _refuse(hf: dict[str, Any], where: Path, field: str, ok: Any, expected: str) -> None:
    if not ok(hf.get(field)):
        raise LayoutError(f"{where}: {field} is {hf.get(field)!r}; vlaforge imports SmolVLA with {expected}")


def import_smolvla(src: Path, hf: dict[str, Any], unnorm_key: str | None, cameras: tuple[str, ...] | None,
                   dtype: str, tokenizer: str | None) -> Imported:
    where = src / "config.json"
    _refuse(hf, where, "adapt_to_pi_aloha", lambda v: not v, "adapt_to_pi_aloha false")
    _refuse(hf, where, "empty_cameras", lambda v: not v, "empty_cameras 0")
    _refuse(hf, where, "add_image_special_tokens", lambda v: not v, "add_image_special_tokens false")
    n_vlm = int(hf.get("num_vlm_layers", 16))
    _refuse(hf, where, "num_expert_layers", lambda v: v is None or v <= 0 or v == n_vlm,
            f"one expert layer per VLM layer (num_expert_layers <= 0 or {n_vlm})")
    own_cams, state_dim, action_dim = _features(hf, where)
    cams = tuple(cameras or own_cams)
    if len(cams) != len(own_cams):
        raise LayoutError(f"--cameras: the checkpoint has {len(own_cams)} cameras {own_cams}, got {list(cams)}")
    tok_dir = Path(tokenizer) if tokenizer else None
    if tok_dir is None:
        raise LayoutError(f"{src}: a LeRobot SmolVLA checkpoint has no tokenizer; pass --tokenizer DIR, a local "
                          f"snapshot of {hf.get('vlm_model_name', 'its VLM')} (tokenizer files + config.json)")
    sd = read_safetensors_dir(src)
    vlm, origin = _vlm_config(tok_dir, hf, sd)
    vlm["text_config"]["num_hidden_layers"] = n_vlm
    size = vlm.get("vision_config", {}).get("image_size")
    resize = hf.get("resize_imgs_with_padding") or [size, size]
    if list(resize) != [size, size]:
        raise LayoutError(f"{where}: resize_imgs_with_padding {resize} differs from the vision tower's {size} px")
    backbone = BACKBONES.get("smolvlm")(**{
        **SMOLVLA_BACKBONE, "arch": {"hf_config": vlm, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
        "dtype": dtype, "lm_layers": n_vlm, "max_prompt_tokens": int(hf.get("tokenizer_max_length", 48)),
        "proprio": "linear" if state_dim else "none"})
    head = HEADS.get("smolvla_expert")(
        width_multiplier=float(hf.get("expert_width_multiplier", 0.75)),
        self_attn_every_n_layers=max(1, int(hf.get("self_attn_every_n_layers", 2))),
        cross_attention="cross" in str(hf.get("attention_mode", "cross_attn")),
        min_period=float(hf.get("min_period", 4e-3)), max_period=float(hf.get("max_period", 4.0)),
        num_steps=int(hf.get("num_steps", 10)), max_action_dim=int(hf.get("max_action_dim", 32)),
        rms_norm_eps=float(vlm["text_config"].get("rms_norm_eps", 1e-5)))
    chunk = int(hf.get("chunk_size", 50))
    modes = _modes(hf, state_dim, where)
    cfg = PolicyConfig(backbone=backbone, head=head, chunk=chunk, exec_steps=int(hf.get("n_action_steps", chunk)),
                       normalization=modes, cameras=cams, state_dim=state_dim, action_dim=action_dim)
    stats = _stats(src, modes)
    key = unnorm_key or "lerobot"
    robot = RobotSpec(cameras={c: (0, 0) for c in cams}, state_dim=state_dim, action_dim=action_dim)
    notes = ["# Imported LeRobot SmolVLA checkpoint", "", f"source: {src}", f"VLM config: {origin}",
             f"cameras {list(cams)} (LeRobot's {own_cams}), chunk {chunk}, normalization {modes}",
             "exact: truncated SmolVLM2, sqrt(d)-scaled image and prompt embeddings, state token after the padded "
             "prompt (block mask), expert cross/self-attention, 32-wide padded actions, sin-cos time, Euler steps, "
             "resize-with-pad (left/top) and [-1, 1] pixels, task + '\\n' right-padded prompt",
             "approximate: an instruction longer than "
             "tokenizer_max_length is refused (LeRobot truncates); a rename_observations step is not carried over "
             "(name cameras with --cameras)"]
    weights = smolvla_weights(sd, state_dim, str(src / "model.safetensors"))
    return Imported(cfg, weights, load_source_tokenizer(tok_dir), {key: stats}, key, robot, notes)


# ---------------------------------------------------------------- pi0 / pi0.5
def import_lerobot_pi0(src: Path, cfg: dict[str, Any], unnorm_key: str | None, cameras: tuple[str, ...] | None,
                       dtype: str, tokenizer: str | None) -> Imported:
    """A LeRobot ``pi0`` / ``pi05`` directory (see the module docstring)."""
    from vlaforge.weights.openpi import pi0_policy_config, rename_openpi

    where = str(src / "config.json")
    if tokenizer is None:
        raise LayoutError("LeRobot pi0 / pi0.5 checkpoints carry no tokenizer: pass --tokenizer DIR (PaliGemma's, "
                          "google/paligemma-3b-pt-224 as a local transformers directory)")
    tok = load_source_tokenizer(Path(tokenizer))
    w = rename_openpi(read_safetensors_dir(src), str(src / "model.safetensors"), prefix="model.")
    modes = _modes(cfg, 1, src / "config.json")
    stats = _stats(src, modes)
    cams = tuple(cameras or _cameras(cfg, src / "config.json"))
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


CONVERTERS = {"smolvla": import_smolvla, "pi0": import_lerobot_pi0, "pi05": import_lerobot_pi0}


@IMPORTERS.register("lerobot")
def import_lerobot(src: Path, unnorm_key: str | None = None, cameras: tuple[str, ...] | None = None,
                   dtype: str = "bfloat16", tokenizer: str | None = None) -> Imported:
    """A LeRobot policy directory (model.safetensors, config.json, policy_{pre,post}processor*)."""
    src = Path(src)
    hf = read_json(src / "config.json", "LeRobot policy config.json")
    kind = hf.get("type") if isinstance(hf, dict) else None
    if kind not in CONVERTERS:
        raise LayoutError(f"{src / 'config.json'}: policy type {kind!r}; vlaforge imports LeRobot "
                          f"{' / '.join(sorted(CONVERTERS))} checkpoints")
    return CONVERTERS[kind](src, hf, unnorm_key, cameras, dtype, tokenizer)
