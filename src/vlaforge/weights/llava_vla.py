"""LLaVA-VLA checkpoints (a LLaVA-1.5 trainer folder: ``config.json``, safetensors shards, tokenizer) -> vlaforge.

LLaVA-VLA (Song et al., 2025), reference ``OpenHelix-Team/LLaVA-VLA`` (``llava/serve/flask_server.py``,
``llava/action_tokenizer.py``, ``llava/conversation.py``, ``llava/mm_utils.py``, ``scripts/helper/calvin2json.py``,
``calvin_test/evaluate_policy_multiserver.py``); released as ``chenpyyy/LLaVA-VLA`` (MIT code; Vicuna / Llama-2
terms for the base weights). The weights use LLaVA-1.5's original names and map onto transformers' LLaVA inside
vlaforge's ``llava`` backbone:

* ``model.embed_tokens`` / ``model.layers.*`` / ``model.norm`` / ``lm_head`` -> the Llama of ``LlavaForConditional
  Generation``; ``model.mm_projector.{0,2}`` (``mlp2x_gelu``) -> ``multi_modal_projector.linear_{1,2}``;
  ``model.vision_tower.vision_tower.vision_model.*`` -> the CLIP tower. LLaVA's loader re-reads the tower from
  ``mm_vision_tower`` (openai/clip-vit-large-patch14-336): ``--vision_tower DIR`` takes it from there, as the
  original does; otherwise from the shards. Features of layer -2 without the CLS token.
* Images: the static and gripper views each resized (PIL Lanczos) to 334 x 167 and stacked vertically into one
  334 x 334 image, then CLIP's processor (PIL bicubic to 336, CLIP mean/std) — ``views=stitch``,
  ``stitch_view_size=334``.
* Prompt: the Vicuna-v1 conversation with LLaVA-VLA's system prompt, ``{system} USER: <image>\\n{instruction}\\n
  {state} ASSISTANT:``, each side of ``<image>`` tokenized alone (``tokenizer_image_token``); the instruction as
  given.
* State: the 15-d CALVIN ``robot_obs`` normalized with ``statistics.yaml``'s ``robot_obs[0].mean/std``
  ((x - mean) / (std + 1e-5) / 3, ``mean_3std``), binned (OpenVLA's edges on ``tokenizer.vocab_size``; the
  ``use_norm_bins`` grid with ``--norm_bins``), the ids *decoded to text* and written into the prompt
  (``proprio=text``).
* Actions: greedy generation over the whole vocabulary until EOS or 128 tokens, ``output_ids[2:-1]``, each id to
  ``bin_centres[clip(vocab_size - id - 1, 0, 254)]``, truncated / zero-padded to 5 x 7 as its client does. CALVIN's
  relative actions are used as decoded (``identity``); ``--actions absolute`` un-normalizes with the yaml's
  ``act_min_bound`` / ``act_max_bound`` (``denormalize_actions``: min/max).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from vlaforge.backbones.base import BACKBONES
from vlaforge.backbones.llava import CLIP_MEAN_STD, LLAVA_VLA_AFTER_IMAGE, LLAVA_VLA_BEFORE_IMAGE, LLAVA_VLA_IMAGE_SIZE
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig
from vlaforge.types import ACTION, OBS_STATE, RobotSpec
from vlaforge.weights import IMPORTERS
from vlaforge.weights.common import (
    Imported,
    LayoutError,
    Weights,
    load_source_tokenizer,
    read_json,
    read_safetensors_dir,
    strip_prefix,
)

CHUNK = 5  # future_k: 5 actions of 7 dims = 35 tokens
MAX_NEW_TOKENS = 128  # flask_server.py's default
KEEP = (2, -1)  # flask_server.py: output_ids[0].tolist()[2:-1]
CLIP_HEAD_DIM = 64  # CLIP ViTs' attention head size (only used when no --vision_tower config is given)
TOWER = "model.vision_tower.vision_tower."
FLAT_TOWER = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")


def read_statistics(path: Path) -> dict[str, Any]:
    """CALVIN's ``statistics.yaml``: ``robot_obs`` (a list whose first entry holds ``mean`` / ``std``) and
    ``act_min_bound`` / ``act_max_bound``."""
    import yaml

    if not path.is_file():
        raise LayoutError(f"{path}: not found (pass CALVIN's training statistics.yaml with --statistics)")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LayoutError(f"{path}: not readable YAML ({first})") from None
    obs = data.get("robot_obs") if isinstance(data, dict) else None
    entry = obs[0] if isinstance(obs, list) and obs else obs
    if not isinstance(entry, dict) or not all(k in entry for k in ("mean", "std")):
        raise LayoutError(f"{path}: expected robot_obs: [{{mean: [...], std: [...]}}] (CALVIN's statistics.yaml), "
                          f"found {type(obs).__name__ if obs is not None else 'no robot_obs'}")
    mean, std = (np.asarray(entry[k], dtype=np.float64).reshape(-1) for k in ("mean", "std"))
    if mean.shape != std.shape:
        raise LayoutError(f"{path}: robot_obs mean has {mean.size} values, std {std.size}")
    out = {"mean": mean, "std": std}
    for k in ("act_min_bound", "act_max_bound"):
        if k in data:
            out[k] = np.asarray(data[k], dtype=np.float64).reshape(-1)
    return out


def _llava_config(src: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LLaVA's config.json, its Llama part as a transformers text_config)."""
    cfg = read_json(src / "config.json", "LLaVA config.json")
    return cfg, llava_text_config(cfg, str(src / "config.json"))


def llava_text_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """The Llama part of LLaVA's ``config.json`` dict as a transformers ``text_config``, after checking it is
    LLaVA-1.5 as LLaVA-VLA trains it (``where`` names the file in errors)."""
    if cfg.get("mm_projector_type", "linear") != "mlp2x_gelu":
        raise LayoutError(f"{where}: mm_projector_type {cfg.get('mm_projector_type')!r}, expected "
                          f"'mlp2x_gelu' (LLaVA-1.5)")
    if cfg.get("mm_use_im_start_end") or cfg.get("mm_use_im_patch_token"):
        raise LayoutError(f"{where}: image start/end or patch tokens are on; LLaVA-VLA uses neither")
    skip = ("architectures", "_name_or_path", "model_type", "transformers_version", "torch_dtype", "dtype",
            "use_cache")
    text = {k: v for k, v in cfg.items() if not k.startswith(("mm_", "image_", "tokenizer_", "tune_", "freeze_"))
            and k not in skip}
    return {**text, "model_type": "llama"}


def _vision(src: Path, sd: dict[str, Tensor], tower: Path | None, select_feature: str
            ) -> tuple[dict[str, Any], dict[str, Tensor], tuple, tuple]:
    """The CLIP tower's config, weights (``vision_model.*`` stripped) and image mean/std."""
    from vlaforge.backbones.base import read_processor

    if tower is not None:
        hf = read_json(tower / "config.json", "CLIP vision tower config.json")
        vc = hf.get("vision_config", hf) if hf.get("model_type") == "clip" else hf
        found = read_safetensors_dir(tower)
        weights = strip_prefix(found, "vision_model.", required=False)  # transformers 4 / OpenAI's naming
        if not weights:  # a CLIPVisionModel saved by transformers 5 (no vision_model. level)
            weights = Weights({k: x for k, x in found.items() if k.startswith(FLAT_TOWER)}, where=str(tower))
        if not weights:
            raise LayoutError(f"{tower}: no CLIP vision weights (vision_model.* or embeddings.* / encoder.*)")
        proc = read_processor(tower)
        mean, std = tuple(proc.get("image_mean", CLIP_MEAN_STD[0])), tuple(proc.get("image_std", CLIP_MEAN_STD[1]))
    else:
        weights = strip_prefix(sd, TOWER + "vision_model.", required=False)
        if not weights:
            raise LayoutError(f"{src}: the shards hold no vision tower ({TOWER}*); pass --vision_tower DIR (the "
                              f"model's mm_vision_tower, openai/clip-vit-large-patch14-336)")
        d = weights["embeddings.patch_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("encoder.layers."))
        grid = round((weights["embeddings.position_embedding.weight"].shape[0] - 1) ** 0.5)
        vc = {"hidden_size": d[0], "intermediate_size": weights["encoder.layers.0.mlp.fc1.weight"].shape[0],
              "num_hidden_layers": layers, "num_attention_heads": d[0] // CLIP_HEAD_DIM, "patch_size": d[-1],
              "image_size": grid * d[-1], "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
        mean, std = CLIP_MEAN_STD
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
            "image_size", "hidden_act", "layer_norm_eps", "num_channels", "projection_dim", "attention_dropout")
    vision = {"model_type": "clip_vision_model", **{k: v for k, v in vc.items() if k in keep}}
    weights = {k: v for k, v in weights.items() if not k.endswith("position_ids")}  # an old non-persistent buffer
    if select_feature not in ("patch", "cls_patch"):
        raise LayoutError(f"mm_vision_select_feature {select_feature!r}: expected 'patch' or 'cls_patch'")
    return vision, weights, mean, std


def llava_weights(sd: dict[str, Tensor], vision: dict[str, Tensor]) -> dict[str, Tensor]:
    """LLaVA-1.5 original names -> the ``llava`` backbone's (transformers' LlavaForConditionalGeneration)."""
    out: dict[str, Tensor] = {}
    lm = "backbone.model.model.language_model."
    for k, v in sd.items():
        if k.startswith(TOWER) or k.endswith("rotary_emb.inv_freq"):
            continue  # the tower comes from `vision`; old checkpoints store RoPE frequencies
        if k == "lm_head.weight":
            out["backbone.model.lm_head.weight"] = v
        elif k.startswith("model.mm_projector."):
            i, _, p = k[len("model.mm_projector."):].partition(".")
            if i not in ("0", "2"):
                raise LayoutError(f"projector weight {k!r}: mlp2x_gelu has layers 0 and 2 only")
            out[f"backbone.model.model.multi_modal_projector.linear_{1 if i == '0' else 2}.{p}"] = v
        elif k.startswith("model."):
            out[lm + k[len("model."):]] = v
        else:
            raise LayoutError(f"unexpected weight {k!r} in a LLaVA-1.5 checkpoint")
    out.update({f"backbone.model.model.vision_tower.{k}": v for k, v in vision.items()})
    return out


def llava_hf_config(cfg: dict[str, Any], vision: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``LlavaConfig`` (as a dict) from LLaVA's ``config.json`` (its ``mm_*`` / ``image_token_index``
    fields; LLaVA-1.5's defaults where absent), the CLIP tower's config and the Llama ``text_config``."""
    return {"vision_config": vision, "text_config": text, "projector_hidden_act": "gelu",
            "vision_feature_layer": cfg.get("mm_vision_select_layer", -2),
            "vision_feature_select_strategy": "default" if cfg.get("mm_vision_select_feature", "patch") == "patch"
            else "full", "image_token_id": cfg.get("image_token_index", 32000), "model_type": "llava"}


def llava_vla_policy(hf: dict[str, Any], image_mean: tuple | list, image_std: tuple | list, *, state_dim: int,
                     action_dim: int = 7, cameras: tuple[str, ...] = ("static", "gripper"), dtype: str = "bfloat16",
                     norm_bins: bool = False, actions: str = "relative") -> PolicyConfig:
    """The policy LLaVA-VLA runs, on the LLaVA architecture ``hf`` (:func:`llava_hf_config`): the two views stacked,
    the Vicuna-v1 prompt with the state as text, greedy decoding of the reply over the vocabulary (``import_llava_vla``
    and ``bench/inference.py`` both build it here)."""
    grid = "norm_bins" if norm_bins else "uniform_edges"
    backbone = BACKBONES.get("llava")(
        arch={"hf_config": hf, "image_mean": list(image_mean), "image_std": list(image_std)}, dtype=dtype,
        views="stitch", stitch_view_size=LLAVA_VLA_IMAGE_SIZE, image_resize="squash", image_interpolation="bicubic",
        proprio="text", proprio_bins=grid, prompt_before_image=LLAVA_VLA_BEFORE_IMAGE,
        prompt_template=LLAVA_VLA_AFTER_IMAGE, prompt_lowercase=False,
        max_prompt_tokens=256, action_tokens="count_down", num_action_tokens=256, readout="last")
    head = HEADS.get("tokens")(binning=grid, n_bins=256, decode_over="vocab", max_new_tokens=MAX_NEW_TOKENS,
                               keep=KEEP)
    return PolicyConfig(backbone=backbone, head=head, chunk=CHUNK, exec_steps=CHUNK, cameras=tuple(cameras),
                        normalization={OBS_STATE: "mean_3std",
                                       ACTION: "min_max" if actions == "absolute" else "identity"},
                        state_dim=state_dim, action_dim=action_dim)


@IMPORTERS.register("llava_vla")
def import_llava_vla(src: Path, unnorm_key: str | None = None, cameras: tuple[str, ...] = ("static", "gripper"),
                     dtype: str = "bfloat16", vision_tower: Path | None = None, statistics: Path | None = None,
                     norm_bins: bool = False, actions: str = "relative") -> Imported:
    """A LLaVA-VLA trainer folder; ``statistics``: CALVIN's ``statistics.yaml`` (default ``SRC/statistics.yaml``);
    ``vision_tower``: the CLIP directory the original loads the tower from; ``norm_bins``: the checkpoint was
    trained with ``use_norm_bins``; ``actions``: "relative" (CALVIN ``rel_actions``, used as decoded) or
    "absolute" (un-normalized with ``act_min_bound`` / ``act_max_bound``)."""
    src = Path(src)
    if actions not in ("relative", "absolute"):
        raise LayoutError(f"--actions: expected 'relative' or 'absolute', got {actions!r}")
    if len(cameras) != 2:
        raise LayoutError(f"--cameras: LLaVA-VLA stacks two views (static on top, gripper below), got {list(cameras)}")
    cfg, text = _llava_config(src)
    sd = read_safetensors_dir(src)
    vision, tower_w, mean, std = _vision(src, sd, Path(vision_tower) if vision_tower else None,
                                         cfg.get("mm_vision_select_feature", "patch"))
    weights = llava_weights(sd, tower_w)
    tok = load_source_tokenizer(src)
    stats_file = Path(statistics) if statistics else src / "statistics.yaml"
    st = read_statistics(stats_file)
    state_dim = st["mean"].size
    if actions == "absolute" and not all(k in st for k in ("act_min_bound", "act_max_bound")):
        raise LayoutError(f"{stats_file}: --actions absolute needs act_min_bound and act_max_bound")
    action_dim = st["act_min_bound"].size if "act_min_bound" in st else 7
    key = unnorm_key or "calvin"
    stats = {OBS_STATE: {"mean": st["mean"].astype(np.float32), "std": st["std"].astype(np.float32)}}
    if "act_min_bound" in st and "act_max_bound" in st:
        stats[ACTION] = {"min": st["act_min_bound"].astype(np.float32), "max": st["act_max_bound"].astype(np.float32)}
    policy = llava_vla_policy(llava_hf_config(cfg, vision, text), mean, std, state_dim=state_dim,
                              action_dim=action_dim, cameras=tuple(cameras), dtype=dtype, norm_bins=norm_bins,
                              actions=actions)
    grid = policy.head.binning
    robot = RobotSpec(cameras={c: (0, 0) for c in cameras}, state_dim=state_dim, action_dim=action_dim)
    notes = ["# Imported LLaVA-VLA checkpoint", "", f"source: {src}", f"statistics: {stats_file}",
             f"bins: {grid}, actions: {actions}, cameras (top, bottom): {list(cameras)}",
             "exact: CLIP tower (layer -2, no CLS), mlp2x_gelu projector, Llama, the two views stacked at 334 x 334 "
             "(Lanczos) then CLIP's bicubic 336, the Vicuna-v1 prompt with the robot system prompt tokenized on "
             "both sides of <image>, the state normalized / 3 / binned / decoded to text, greedy decoding over the "
             "vocabulary until EOS (128 tokens at most), output_ids[2:-1], vocab_size - id bins, the client's "
             "truncation / zero padding to 5 x 7",
             "approximate: the state is normalized in float32 (the original: float64; a value within ~1e-7 of a "
             "bin edge may bin differently); vlaforge loads the tokenizer with AutoTokenizer (fast), the original "
             "with use_fast=False; the gripper is returned raw (CALVIN's client maps it to +-1)",
             "training from this checkpoint teaches the 35 action tokens directly after 'ASSISTANT:' (the original "
             "also supervises the leading space token and </s>)"]
    return Imported(policy, Weights(weights, where=str(src)), tok, {key: stats}, key, robot, notes)
