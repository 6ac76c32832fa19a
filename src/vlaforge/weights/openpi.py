"""openpi's PyTorch pi0 / pi0.5 checkpoints -> vlaforge (``paligemma`` backbone + ``pi0`` head).

Reference: openpi ``src/openpi/models_pytorch/pi0_pytorch.py``, ``gemma_pytorch.py``,
``examples/convert_jax_model_to_pytorch.py``, ``src/openpi/shared/normalize.py``, ``transforms.py``. A checkpoint
directory holds ``model.safetensors`` (``safetensors.torch.save_model`` of ``PI0Pytorch``), a small
``config.json`` (action_dim, action_horizon, variants, precision; absent from training checkpoints) and
``assets/<asset id>/norm_stats.json`` (``{"norm_stats": {"state": {mean, std, q01, q99}, "actions": …}}``).

* ``paligemma_with_expert.paligemma.model.{vision_tower.vision_model, multi_modal_projector, language_model}.*``
  and ``.lm_head`` -> the PaliGemma backbone (transformers < 4.52's ``paligemma.language_model.model.*`` layout
  too); the tied ``lm_head`` fills a missing ``embed_tokens`` and the other way round;
* ``paligemma_with_expert.gemma_expert.model.{layers, norm}.*`` -> ``head.{layers, norm}.*`` (the expert's unused
  ``lm_head`` is dropped); ``action_in_proj``, ``action_out_proj``, ``state_proj``, ``action_time_mlp_{in,out}``
  (pi0) / ``time_mlp_{in,out}`` (pi0.5, recognised by these) -> ``head.*``;
* sizes come from the weights (every openpi Gemma variant has one KV head; SigLIP heads: 16 for So400m, width / 64
  otherwise); chunk from ``config.json``'s ``action_horizon`` (default 50);
* statistics: pi0 mean/std, pi0.5 q01/q99, openpi's ``+ 1e-6`` folded into std / q99 so vlaforge's formulas give
  openpi's numbers; pi0.5 writes the normalized state into the prompt as 256 bins unless the checkpoint was trained
  without (``--no_state_in_prompt``, e.g. ``pi05_libero``);
* openpi ships no tokenizer: ``--tokenizer DIR`` names PaliGemma's (a transformers directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from vlaforge.data.stats import Stats
from vlaforge.policy import PolicyConfig
from vlaforge.types import ACTION, OBS_STATE, RobotSpec
from vlaforge.weights import IMPORTERS
from vlaforge.weights.common import Imported, LayoutError, Weights, load_source_tokenizer, pick_unnorm_key, read_json

OPENPI_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
EPS = 1e-6  # openpi's normalization epsilon
_PG, _EX = "paligemma_with_expert.paligemma.", "paligemma_with_expert.gemma_expert."
# source prefix -> vlaforge prefix (None: dropped); the longest matching prefix wins
RENAMES: dict[str, str | None] = {
    _PG + "model.vision_tower.vision_model.": "backbone.model.model.vision_tower.",
    _PG + "model.multi_modal_projector.": "backbone.model.model.multi_modal_projector.",
    _PG + "model.language_model.": "backbone.model.model.language_model.",
    _PG + "lm_head.": "backbone.model.lm_head.",
    _PG + "vision_tower.vision_model.": "backbone.model.model.vision_tower.",  # transformers < 4.52
    _PG + "multi_modal_projector.": "backbone.model.model.multi_modal_projector.",
    _PG + "language_model.model.": "backbone.model.model.language_model.",
    _PG + "language_model.lm_head.": "backbone.model.lm_head.",
    _EX + "model.embed_tokens.": None,
    _EX + "lm_head.": None,
    _EX + "model.": "head.",
    **{f"{n}.": f"head.{n}." for n in ("action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in",
                                       "action_time_mlp_out", "time_mlp_in", "time_mlp_out")},
}
_ORDER = sorted(RENAMES, key=len, reverse=True)
EMBED, LM_HEAD = "backbone.model.model.language_model.embed_tokens.weight", "backbone.model.lm_head.weight"


def rename_openpi(sd: dict[str, Tensor], where: str, prefix: str = "") -> dict[str, Tensor]:
    """openpi names (after ``prefix``, LeRobot's ``model.``) -> vlaforge's; unknown keys are refused."""
    out: dict[str, Tensor] = Weights(where=where)
    unknown = []
    for key, v in sd.items():
        k = key.removeprefix(prefix) if prefix else key
        src = next((p for p in _ORDER if k.startswith(p)), None)
        if src is None or (prefix and not key.startswith(prefix)):
            unknown.append(key)
        elif RENAMES[src] is not None:
            out[RENAMES[src] + k[len(src):]] = v
    if unknown:
        raise LayoutError(f"{where}: {len(unknown)} weights are not pi0 / pi0.5 weights, e.g. {sorted(unknown)[:4]}")
    if any(k.startswith("head.layers.0.input_layernorm.dense.") for k in out):  # pi0.5 (adaRMS expert)
        for name in ("in", "out"):  # some pi0.5 checkpoints name the time MLP as pi0's (LeRobot renames it)
            for p in ("weight", "bias"):
                if f"head.action_time_mlp_{name}.{p}" in out:
                    out.setdefault(f"head.time_mlp_{name}.{p}", out.pop(f"head.action_time_mlp_{name}.{p}"))
        for k in [k for k in out if k.startswith("head.state_proj.") or (k.startswith("head.") and
                  k.endswith("norm.weight") and k[: -len("weight")] + "dense.weight" in out)]:
            del out[k]  # unused by pi0.5
    if LM_HEAD in out:  # tied in PaliGemma: save_model keeps one of the two names, LeRobot copies lm_head
        out[EMBED] = out[LM_HEAD]
    if LM_HEAD not in out and EMBED in out:
        out[LM_HEAD] = out[EMBED]
    for need in (EMBED, "head.action_in_proj.weight", "head.layers.0.self_attn.q_proj.weight"):
        if need not in out:
            raise LayoutError(f"{where}: no {need.split('.', 1)[1]!r} among the pi0 weights (found keys like "
                              f"{sorted(sd)[:4]})")
    return out


def _count(w: dict[str, Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in w if k.startswith(prefix)})


def paligemma_arch(w: dict[str, Tensor], tokenizer: Any) -> dict[str, Any]:
    """The PaliGemma backbone's ``arch`` (HF config dict + [-1, 1] pixels) from the renamed weights' shapes."""
    from transformers import PaliGemmaConfig

    v, t = "backbone.model.model.vision_tower.", "backbone.model.model.language_model."
    patch = w[v + "embeddings.patch_embedding.weight"]
    width, positions = patch.shape[0], w[v + "embeddings.position_embedding.weight"].shape[0]
    side = round(positions ** 0.5)
    vision = dict(model_type="siglip_vision_model", hidden_size=width, patch_size=patch.shape[-1],
                  image_size=side * patch.shape[-1], num_hidden_layers=_count(w, v + "encoder.layers."),
                  intermediate_size=w[v + "encoder.layers.0.mlp.fc1.weight"].shape[0],
                  num_attention_heads=16 if width == 1152 else max(1, width // 64),
                  vision_use_head=any(k.startswith(v + "head.") for k in w))
    vocab, d = w[EMBED].shape
    head_dim = w[t + "layers.0.self_attn.k_proj.weight"].shape[0]  # one KV head
    text = dict(model_type="gemma", hidden_size=d, vocab_size=vocab, num_hidden_layers=_count(w, t + "layers."),
                intermediate_size=w[t + "layers.0.mlp.gate_proj.weight"].shape[0], num_key_value_heads=1,
                head_dim=head_dim, num_attention_heads=w[t + "layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
                hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    hf = PaliGemmaConfig(vision_config={**vision, "projection_dim": d}, text_config=text, projection_dim=d,
                         image_token_id=vocab)
    return {"hf_config": hf.to_dict(), "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


def expert_options(w: dict[str, Tensor], arch: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``pi0`` head's width, GeGLU size, padded action dim and variant from the renamed weights."""
    text = arch["hf_config"]["text_config"]
    q = w["head.layers.0.self_attn.q_proj.weight"]
    if q.shape[0] != text["num_attention_heads"] * text["head_dim"] or _count(w, "head.layers.") != \
            text["num_hidden_layers"]:
        raise LayoutError(f"{where}: the action expert's attention ({_count(w, 'head.layers.')} layers, "
                          f"{q.shape[0]} query features) does not match the VLM's ({text['num_hidden_layers']} "
                          f"layers, {text['num_attention_heads']} x {text['head_dim']})")
    return {"width": q.shape[1], "mlp_dim": w["head.layers.0.mlp.gate_proj.weight"].shape[0],
            "model_action_dim": w["head.action_in_proj.weight"].shape[1],
            "time_conditioning": "adarms" if "head.time_mlp_in.weight" in w else "concat"}


def openpi_stats(entry: dict[str, Any], mode: str, where: str) -> Stats:
    """One ``norm_stats`` dict -> vlaforge Stats (``state`` -> state, ``actions`` -> action), openpi's epsilon
    folded in (mean/std: std + 1e-6; quantiles: q99 + 1e-6), min/max set to the quantiles when present."""
    out: Stats = {}
    for ours, theirs in ((OBS_STATE, "state"), (ACTION, "actions")):
        s = entry.get(theirs)
        if s is None:
            continue
        need = ("mean", "std") if mode == "mean_std" else ("q01", "q99")
        if not isinstance(s, dict) or any(s.get(n) is None for n in need):
            have = sorted(s) if isinstance(s, dict) else s
            raise LayoutError(f"{where}: '{theirs}' statistics lack {need} (have {have})")
        arr = {n: np.asarray(s[n], dtype=np.float64).reshape(-1) for n in ("mean", "std", "q01", "q99")
               if s.get(n) is not None}
        if mode == "mean_std":
            arr["std"] = arr["std"] + EPS
        else:
            arr["q99"] = arr["q99"] + EPS
        if "q01" in arr and "q99" in arr:
            arr["min"], arr["max"] = arr["q01"], arr["q99"]
        out[ours] = {n: a.astype(np.float32) for n, a in arr.items()}
    if ACTION not in out:
        raise LayoutError(f"{where}: no 'actions' statistics (have {sorted(entry)})")
    return out


def read_norm_stats(src: Path, mode: str) -> dict[str, Stats]:
    """Every ``assets/<id>/norm_stats.json`` of an openpi checkpoint, by asset id."""
    files = sorted(src.glob("assets/*/norm_stats.json"))
    if not files:
        raise LayoutError(f"{src}: no assets/<id>/norm_stats.json (openpi keeps the statistics there)")
    out = {}
    for f in files:
        data = read_json(f, "openpi norm_stats.json")
        entry = data.get("norm_stats", data)
        if not isinstance(entry, dict):
            raise LayoutError(f"{f}: expected {{'norm_stats': {{'state': …, 'actions': …}}}}")
        out[f.parent.name] = openpi_stats(entry, mode, str(f))
    return out


def pi0_policy_config(w: dict[str, Tensor], tokenizer: Any, stats: Stats, *, where: str, cameras: tuple[str, ...],
                      dtype: str, chunk: int, state_in_prompt: bool,
                      modes: dict[str, str] | None = None) -> tuple[PolicyConfig, RobotSpec]:
    """The policy config of renamed pi0 / pi0.5 weights and the chosen statistics (shared with LeRobot's)."""
    from vlaforge.presets.pi0 import pi0_backbone, pi0_head

    arch = paligemma_arch(w, tokenizer)
    opts = expert_options(w, arch, where)
    pi05 = opts["time_conditioning"] == "adarms"
    state_dim = len(stats[OBS_STATE]["mean"]) if OBS_STATE in stats and (not pi05 or state_in_prompt) else 0
    action_dim = len(stats[ACTION]["mean"])
    if action_dim > opts["model_action_dim"] or (not pi05 and state_dim > opts["model_action_dim"]):
        raise LayoutError(f"{where}: statistics of {action_dim} action / {state_dim} state dims exceed the model's "
                          f"{opts['model_action_dim']}")
    extra = {} if (not pi05 or state_in_prompt) else dict(prompt_template="{task}\n", prompt_state_bins=0,
                                                          max_prompt_tokens=48)
    backbone = pi0_backbone(pi05, arch=arch, dtype=dtype, **extra)
    norm = "q01_q99" if pi05 else "mean_std"
    modes = {k: m for k, m in (modes or {ACTION: norm, OBS_STATE: norm}).items() if k != OBS_STATE or state_dim}
    cfg = PolicyConfig(backbone=backbone, head=pi0_head(pi05, **opts), chunk=chunk, exec_steps=min(5, chunk),
                       normalization=modes, cameras=tuple(cameras), state_dim=state_dim, action_dim=action_dim)
    return cfg, RobotSpec(cameras={c: (0, 0) for c in cameras}, state_dim=state_dim, action_dim=action_dim)


@IMPORTERS.register("openpi")
def import_openpi(src: Path, unnorm_key: str | None = None, cameras: tuple[str, ...] = OPENPI_CAMERAS,
                  dtype: str = "bfloat16", tokenizer: str | None = None, chunk: int | None = None,
                  state_in_prompt: bool = True) -> Imported:
    """An openpi PyTorch pi0 / pi0.5 directory (``model.safetensors``, ``config.json``, ``assets/<id>/``)."""
    from vlaforge.weights.common import read_safetensors_dir

    src = Path(src)
    if tokenizer is None:
        raise LayoutError("openpi checkpoints carry no tokenizer: pass --tokenizer DIR (PaliGemma's, a transformers "
                          "directory such as google/paligemma-3b-pt-224)")
    tok = load_source_tokenizer(Path(tokenizer))
    info = read_json(src / "config.json", "openpi config.json") if (src / "config.json").is_file() else {}
    w = rename_openpi(read_safetensors_dir(src), str(src / "model.safetensors"))
    pi05 = "head.time_mlp_in.weight" in w
    all_stats = read_norm_stats(src, "q01_q99" if pi05 else "mean_std")
    key = pick_unnorm_key(list(all_stats), unnorm_key, f"{src}/assets")
    horizon = int(chunk or info.get("action_horizon", 50))
    cfg, robot = pi0_policy_config(w, tok, all_stats[key], where=str(src), cameras=tuple(cameras), dtype=dtype,
                                   chunk=horizon, state_in_prompt=state_in_prompt)
    notes = ["# Imported openpi checkpoint", "", f"source: {src}", f"asset (unnorm_key): {key}",
             f"model: {'pi0.5' if pi05 else 'pi0'}, chunk {horizon}, cameras {list(cameras)}",
             "exact: SigLIP, projector, Gemma, the Gemma expert's joint attention, flow-matching Euler (10 steps), "
             "prompt layout, normalization (openpi's 1e-6 folded into std / q99)",
             "approximate: images are resized with torch bilinear + antialias (openpi: PIL bilinear) when they are "
             "not already 224 px; the instruction is used as given (openpi also replaces '_' and newlines by "
             "spaces); normalized q01/q99 values are clipped to [-1, 1] (openpi does not clip); dims whose std or "
             "range is below 1e-4 are only centred"]
    return Imported(cfg, w, tok, all_stats, key, robot, notes)
