"""HybridVLA checkpoints (``<run>/checkpoints/*.pt`` + ``<run>/dataset_statistics.json``) -> vlaforge.

HybridVLA (Liu et al., 2025), reference ``PKU-HMI-Lab/Hybrid-VLA`` (``models/vlas/hybridvla.py``,
``models/vlms/prismatic.py``, ``models/diffusion/models.py``, ``scripts/sim.py``). The ``.pt`` holds
``{"model": {part: state_dict}}`` with the parts ``vision_backbone`` (timm ``dino_featurizer.`` /
``siglip_featurizer.``), ``projector`` (``projector.0/2/4``), ``llm_backbone`` (``llm.`` + Llama), and the
diffusion modules ``x_embedder`` / ``proprio_embedder`` (``mlp.fc1/fc2``, GELU-tanh), ``t_embedder`` (``mlp.0/2``
after a cos|sin sinusoid, SiLU) and ``final_layer`` (``norm_final`` RMSNorm + ``mlp.fc1/fc2``). It is read with
``torch.load(weights_only=True)`` and never kept. The run ships no tokenizer: pass the Llama-2 tokenizer
(``--tokenizer DIR``); ``<PAD>``, ``<BOD>``, ``<EOD>`` are added as HybridVLA adds them (ids 32000-32002).

The model maps onto vlaforge's ``prismatic`` backbone (OpenVLA's conventions, instruction lower-cased, no proprio
token in the prefix) and a ``hybrid`` head: 256-bin tokens (``count_down`` from the base vocabulary minus
``need_to_sub``) + ``inllm_diffusion`` with ``<BOD>``/``<EOD>`` from the vocabulary, DDIM 4 steps on the cosine
100-step schedule, the tokens decoded after the noisy block (``ar_context=diffusion_block``), each path clamped and
its gripper snapped to {0, 1} at 0.5, and the 5.8/6 gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig
from vlaforge.types import ACTION, OBS_STATE, RobotSpec
from vlaforge.weights import IMPORTERS
from vlaforge.weights.common import (
    Imported,
    LayoutError,
    Weights,
    find_one,
    load_pt,
    load_source_tokenizer,
    pick_unnorm_key,
    read_json,
    skip_dims,
    stats_entry,
    strip_prefix,
)
from vlaforge.weights.openvla import openvla_backbone, prismatic_parts

PARTS = ("vision_backbone", "projector", "llm_backbone", "x_embedder", "t_embedder", "final_layer",
         "proprio_embedder")
LLAMA2_HEAD_DIM = 128  # Llama-2's attention head size (the .pt stores no LLM config)


def _llm_config(llm: dict[str, Tensor], given: Path | None) -> dict[str, Any]:
    """The Llama config: ``--llm_config`` (the base LLM's config.json), else Llama-2-7b-hf's settings with the
    sizes read from the weights."""
    if given is not None:
        cfg = read_json(given, "LLM config")
        return {k: v for k, v in cfg.items() if k not in ("architectures", "_name_or_path")}
    emb = llm["model.embed_tokens.weight"]
    layers = 1 + max(int(k.split(".")[2]) for k in llm if k.startswith("model.layers."))
    hidden = emb.shape[1]
    if hidden % LLAMA2_HEAD_DIM:
        raise LayoutError(f"LLM width {hidden} is not a multiple of Llama-2's head size {LLAMA2_HEAD_DIM}: pass "
                          f"--llm_config (the base LLM's config.json)")
    return {"model_type": "llama", "hidden_size": hidden, "vocab_size": emb.shape[0], "num_hidden_layers": layers,
            "intermediate_size": llm["model.layers.0.mlp.gate_proj.weight"].shape[0],
            "num_attention_heads": hidden // LLAMA2_HEAD_DIM, "num_key_value_heads": hidden // LLAMA2_HEAD_DIM,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}


def _head_weights(model: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    """The diffusion modules in the in-LLM diffusion head's names."""
    h = "head.continuous."
    x, p, t, f = (model[k] for k in ("x_embedder", "proprio_embedder", "t_embedder", "final_layer"))
    out = {}
    for name, src in (("x_emb", x), ("proprio", p)):
        for i, j in ((0, 1), (2, 2)):
            for n in ("weight", "bias"):
                out[f"{h}{name}.{i}.{n}"] = src[f"mlp.fc{j}.{n}"]
    for i, j in ((1, 0), (2, 2)):
        for n in ("weight", "bias"):
            out[f"{h}time_emb.linear_{i}.{n}"] = t[f"mlp.{j}.{n}"]
    out[f"{h}final.0.weight"] = f["norm_final.weight"]
    for i, j in ((1, 1), (3, 2)):
        for n in ("weight", "bias"):
            out[f"{h}final.{i}.{n}"] = f[f"mlp.fc{j}.{n}"]
    out[f"{h}null_proprio"] = torch.zeros(x["mlp.fc2.weight"].shape[0])  # no unconditional branch in HybridVLA
    return out


def _checkpoint_file(src: Path) -> tuple[Path, Path]:
    """(the .pt, the run directory holding dataset_statistics.json)."""
    if src.is_file():
        pt = src
    else:
        pt = find_one(src / "checkpoints" if (src / "checkpoints").is_dir() else src, "*.pt", "HybridVLA checkpoint")
    return pt, pt.parent.parent if pt.parent.name == "checkpoints" else pt.parent


@IMPORTERS.register("hybridvla")
def import_hybridvla(src: Path, unnorm_key: str | None = None, cameras: tuple[str, ...] = ("front",),
                     dtype: str = "bfloat16", tokenizer: Path | None = None, llm_config: Path | None = None,
                     need_to_sub: int = 0) -> Imported:
    """A HybridVLA run directory (or its ``.pt``); ``tokenizer``: the Llama-2 tokenizer directory."""
    src = Path(src)
    pt, run = _checkpoint_file(src)
    ckpt = load_pt(pt)
    model = ckpt.get("model")
    if not isinstance(model, dict) or any(k not in model for k in PARTS):
        found = sorted(model) if isinstance(model, dict) else sorted(ckpt)
        raise LayoutError(f"{pt}: expected {{'model': {{{', '.join(PARTS)}}}}} (a HybridVLA checkpoint saved with "
                          f"use_diff), found {found}")
    if tokenizer is None:
        raise LayoutError("hybridvla: the run has no tokenizer; pass --tokenizer LLAMA2_DIR (meta-llama/"
                          "Llama-2-7b-hf's tokenizer files)")
    tok = load_source_tokenizer(Path(tokenizer))
    base = tok.vocab_size
    tok.add_special_tokens({"pad_token": "<PAD>", "additional_special_tokens": ["<BOD>", "<EOD>"]})
    ids = tok.convert_tokens_to_ids(["<PAD>", "<BOD>", "<EOD>"])
    if ids != [base, base + 1, base + 2]:
        raise LayoutError(f"{tokenizer}: <PAD>/<BOD>/<EOD> got ids {ids}, HybridVLA's are {[base, base + 1, base + 2]}"
                          f" (the tokenizer must be Llama-2's, without added tokens)")
    model = {k: Weights(v, where=f"{pt} ['model']['{k}']") if isinstance(v, dict) else v for k, v in model.items()}
    vision = model["vision_backbone"]
    dino, siglip = strip_prefix(vision, "dino_featurizer."), strip_prefix(vision, "siglip_featurizer.")
    proj = strip_prefix(model["projector"], "projector.")
    layers = [{p: proj[f"{i}.{p}"] for p in ("weight", "bias")} for i in (0, 2, 4)]
    llm = strip_prefix(model["llm_backbone"], "llm.")
    grid = round(dino["pos_embed"].shape[1] ** 0.5)
    arch, weights = prismatic_parts(dino, siglip, layers, llm, _llm_config(llm, llm_config),
                                    grid * dino["patch_embed.proj.weight"].shape[-1])
    weights.update(_head_weights(model))
    raw = read_json(run / "dataset_statistics.json", "HybridVLA statistics")
    key = pick_unnorm_key(list(raw), unnorm_key, str(run / "dataset_statistics.json"))
    stats = {}
    for k, entry in raw.items():
        stats[k], m = stats_entry(entry, k, str(run / "dataset_statistics.json"))
        if k == key:
            mask, state_mask = m, entry.get("proprio", {}).get("mask")
    action_dim = len(stats[key][ACTION]["q01"])
    state_dim = model["proprio_embedder"]["mlp.fc1.weight"].shape[1]
    if OBS_STATE not in stats[key] or len(stats[key][OBS_STATE]["q01"]) != state_dim:
        raise LayoutError(f"{run / 'dataset_statistics.json'}: {key!r} needs {state_dim}-d 'proprio' statistics")
    diffusion = HEADS.get("inllm_diffusion")(num_train_timesteps=100, num_steps=4, beta_schedule="squaredcos_cap_v2",
                                             clip_sample=None, repeated_diffusion_steps=4, markers="vocab")
    head = HEADS.get("hybrid")(
        token=HEADS.get("tokens")(binning="uniform_edges", n_bins=256, decode_over="vocab"), continuous=diffusion,
        mode="diff+ar", threshold=5.8 / 6, gripper_dims=(-1,), gripper_values=(0.0, 1.0), binarize_gripper=True,
        clip=True, ar_context="diffusion_block", ar_suffix="▁")
    skip = {**skip_dims(mask), **skip_dims(state_mask, OBS_STATE)}
    cfg = PolicyConfig(backbone=openvla_backbone(arch, dtype, proprio="none", readout="last", prompt_lowercase=True,
                                                 action_token_offset=need_to_sub),
                       head=head, chunk=1, exec_steps=1, normalization={OBS_STATE: "q01_q99", ACTION: "q01_q99"},
                       normalize_skip=skip, cameras=tuple(cameras), state_dim=state_dim, action_dim=action_dim)
    robot = RobotSpec(cameras={c: (0, 0) for c in cameras}, state_dim=state_dim, action_dim=action_dim)
    notes = ["# Imported HybridVLA checkpoint", "", f"source: {pt}", f"unnorm_key: {key}, need_to_sub: {need_to_sub}",
             "exact: towers, projector, Llama, diffusion block and DDIM (4 steps), AR tokens after the noisy block, "
             "full-vocabulary confidence, the 5.8 gate, per-path clamp + gripper snap, un-normalisation",
             "approximate: HybridVLA decodes with Llama-2's hub generation_config (which may sample); vlaforge "
             "decodes greedily. Several views: HybridVLA's sim.py feeds the front view only",
             "not reproduced in training: HybridVLA's token loss reads the noisy diffusion block first"]
    return Imported(cfg, weights, tok, stats, key, robot, notes)
