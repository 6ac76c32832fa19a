"""OpenVLA (HF format) and OpenVLA-OFT checkpoints -> vlaforge.

OpenVLA (Kim et al., 2024), reference ``openvla/openvla`` (``prismatic/extern/hf/modeling_prismatic.py``,
``processing_prismatic.py``, ``prismatic/vla/action_tokenizer.py``); released as ``openvla/openvla-7b``: sharded
bf16 safetensors + ``config.json`` holding ``norm_stats``. The checkpoint maps onto vlaforge's ``prismatic``
backbone and ``tokens`` head with these options (nothing is copied):

* vision: timm DINOv2-reg4 ViT-L/14 + SigLIP so400m/14 (fused ``qkv``, LayerScale, DINOv2 without a class-token
  position, exact GELU) renamed onto transformers' ``Dinov2WithRegistersModel`` / ``SiglipVisionModel``
  (``common.timm_vit_to_hf``); both read the second-to-last block, each with its own mean/std; projector
  ``fc1/fc2/fc3`` -> ``projector.0/2/4``;
* images squashed to 224 x 224 with PIL bicubic (``resize-naive``), no letterbox;
* prompt ``In: What action should the robot take to {instruction}?\\nOut:`` (instruction as given, not lower-cased)
  followed by the ``▁`` token (29871), after BOS and the image patches;
* action tokens: bin ``k`` is id ``tokenizer.vocab_size - 1 - k`` (``action_tokens=count_down``), 256 edges over
  [-1, 1] and 255 centres (``binning=uniform_edges``), greedy over the whole vocabulary (``decode_over=vocab``);
  q01/q99 un-normalisation with the dataset's mask (``normalize_skip``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from vlaforge.backbones.base import BACKBONES
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig
from vlaforge.types import ACTION, RobotSpec
from vlaforge.weights import IMPORTERS
from vlaforge.weights.common import (
    TIMM_HEADS,
    Imported,
    LayoutError,
    load_source_tokenizer,
    pick_unnorm_key,
    read_json,
    read_safetensors_dir,
    skip_dims,
    stats_entry,
    strip_prefix,
    timm_vit_config,
    timm_vit_to_hf,
)

PROMPT = "In: What action should the robot take to {task}?\nOut:"
DEFAULT_TIMM = ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224")


def _heads(timm_id: str) -> int:
    base = timm_id.split(".")[0]
    if base not in TIMM_HEADS:
        raise LayoutError(f"timm model {timm_id!r}: unknown head count (known: {sorted(TIMM_HEADS)})")
    return TIMM_HEADS[base]


def prismatic_parts(dino: dict[str, Tensor], siglip: dict[str, Tensor], projector: list[dict[str, Tensor]],
                    llm: dict[str, Tensor], llm_config: dict[str, Any], image_size: int,
                    timm_ids: tuple[str, str] = DEFAULT_TIMM) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The ``prismatic`` backbone's ``arch`` and weights (``backbone.model.*``) from a Prismatic-family model's
    parts: timm DINOv2 / SigLIP weights, the projector's three linear layers in order, the Llama weights."""
    configs = {"dino": timm_vit_config(dino, "dino", _heads(timm_ids[0]), image_size),
               "siglip": timm_vit_config(siglip, "siglip", _heads(timm_ids[1]), image_size),
               "llm": {**llm_config, "model_type": llm_config.get("model_type", "llama")}}
    w = {f"backbone.model.dino.{k}": v for k, v in timm_vit_to_hf(dino, "dino").items()}
    w.update({f"backbone.model.siglip.{k}": v for k, v in timm_vit_to_hf(siglip, "siglip").items()})
    for i, layer in zip((0, 2, 4), projector, strict=True):
        w.update({f"backbone.model.projector.{i}.{p}": layer[p] for p in ("weight", "bias")})
    w.update({f"backbone.model.llm.{k}": v for k, v in llm.items()})
    return {"configs": configs, "image_mean": [0.0] * 3, "image_std": [1.0] * 3}, w


def openvla_backbone(arch: dict[str, Any], dtype: str, **options: Any) -> Any:
    """The prismatic backbone config with OpenVLA's conventions (see the module docstring)."""
    return BACKBONES.get("prismatic")(**{
        "arch": arch, "dtype": dtype, "prompt_template": PROMPT, "prompt_lowercase": False, "prompt_suffix": "▁",
        "max_prompt_tokens": 96, "image_resize": "squash", "image_interpolation": "bicubic",
        "action_tokens": "count_down", "num_action_tokens": 256, **options})


def _hf_parts(src: Path, hf: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Config and weights of an HF-format OpenVLA directory (shared by OpenVLA and OFT)."""
    if hf.get("model_type") != "openvla":
        raise LayoutError(f"{src / 'config.json'}: model_type {hf.get('model_type')!r}, expected 'openvla' (an "
                          f"HF-format OpenVLA checkpoint, as openvla/openvla-7b)")
    timm_ids = tuple(hf.get("timm_model_ids") or DEFAULT_TIMM)
    if not hf.get("use_fused_vision_backbone", True) or len(timm_ids) != 2:
        raise LayoutError(f"{src / 'config.json'}: only the fused DINOv2 + SigLIP vision backbone is supported, "
                          f"found timm_model_ids={list(timm_ids)}")
    sizes = hf.get("image_sizes") or [224, 224]
    if len(set(sizes)) != 1:
        raise LayoutError(f"{src / 'config.json'}: image_sizes {sizes} differ between the two towers")
    sd = read_safetensors_dir(src)
    proj = strip_prefix(sd, "projector.")
    layers = [{p: proj[f"fc{i}.{p}"] for p in ("weight", "bias")} for i in (1, 2, 3) if f"fc{i}.weight" in proj]
    if len(layers) != 3:
        raise LayoutError(f"{src}: projector weights {sorted(proj)} are not fc1/fc2/fc3 (the fused GELU MLP)")
    text = {k: v for k, v in (hf.get("text_config") or {}).items() if k not in ("architectures", "_name_or_path")}
    return prismatic_parts(strip_prefix(sd, "vision_backbone.featurizer."),
                           strip_prefix(sd, "vision_backbone.fused_featurizer."), layers,
                           strip_prefix(sd, "language_model."), text, int(sizes[0]), timm_ids)


def _statistics(src: Path, hf: dict[str, Any], unnorm_key: str | None) -> tuple[dict[str, Any], str, list | None]:
    """(every dataset's Stats, the chosen key, its action mask); ``dataset_statistics.json`` overrides config's."""
    f = src / "dataset_statistics.json"
    raw, where = (read_json(f, "statistics"), f.name) if f.is_file() else (hf.get("norm_stats"), "config.json")
    if not isinstance(raw, dict) or not raw:
        raise LayoutError(f"{src}: no statistics (neither dataset_statistics.json nor norm_stats in config.json)")
    key = pick_unnorm_key(list(raw), unnorm_key, f"{src / where}")
    stats = {}
    for k, entry in raw.items():
        stats[k], mask = stats_entry(entry, k, f"{src / where}")
        if k == key:
            chosen_mask = mask
    return stats, key, chosen_mask


@IMPORTERS.register("openvla")
def import_openvla(src: Path, unnorm_key: str | None = None, cameras: tuple[str, ...] = ("primary",),
                   dtype: str = "bfloat16") -> Imported:
    """An HF-format OpenVLA directory (``config.json`` with ``norm_stats``, sharded safetensors, tokenizer)."""
    src = Path(src)
    hf = read_json(src / "config.json", "OpenVLA config.json")
    arch, weights = _hf_parts(src, hf)
    stats, key, mask = _statistics(src, hf, unnorm_key)
    action_dim = len(stats[key][ACTION]["q01"])
    if len(cameras) != 1:
        raise LayoutError(f"--cameras: OpenVLA sees one image, got {list(cameras)}")
    cfg = PolicyConfig(backbone=openvla_backbone(arch, dtype, proprio="none", readout="last"),
                       head=HEADS.get("tokens")(binning="uniform_edges", n_bins=256, decode_over="vocab"),
                       chunk=1, exec_steps=1, normalization={ACTION: "q01_q99"}, normalize_skip=skip_dims(mask),
                       cameras=tuple(cameras), state_dim=0, action_dim=action_dim)
    robot = RobotSpec(cameras={c: (0, 0) for c in cameras}, state_dim=0, action_dim=action_dim)
    notes = ["# Imported OpenVLA checkpoint", "", f"source: {src}", f"unnorm_key: {key}",
             "exact: vision towers, projector, Llama, prompt, action-token ids and bins, un-normalisation",
             "approximate: dims whose q01 == q99 are shifted by q01 instead of set to it (vlaforge never divides "
             "by a zero range)"]
    return Imported(cfg, weights, load_source_tokenizer(src), stats, key, robot, notes)


# ---------------------------------------------------------------- OpenVLA-OFT
# Per-platform constants of OFT (``prismatic/vla/constants.py``), chosen by the statistics key:
# chunk, cameras, normalization (BOUNDS_Q99 -> q01_q99, BOUNDS -> min_max), centre crop at inference
OFT_PLATFORMS = {
    "libero": (8, ("primary", "wrist"), "q01_q99", 0.9),
    "aloha": (25, ("high", "left_wrist", "right_wrist"), "min_max", 1.0),
    "bridge": (5, ("primary",), "q01_q99", 1.0),
}


def _oft_platform(key: str, chunk: int | None) -> tuple[int, tuple[str, ...], str, float]:
    for name, spec in OFT_PLATFORMS.items():
        if name in key.lower():
            return (chunk or spec[0], *spec[1:])
    if chunk is None:
        raise LayoutError(f"unnorm_key {key!r} names no OFT platform ({sorted(OFT_PLATFORMS)}): pass --chunk")
    return chunk, ("primary",), "q01_q99", 1.0


def _oft_head(src: Path) -> tuple[dict[str, Tensor], int, int]:
    """The MLP-ResNet action head (``action_head--*_checkpoint.pt``, DDP's ``module.`` prefix) in vlaforge names,
    its hidden width and block count."""
    from vlaforge.weights.common import drop_module_prefix, find_one, load_pt

    f = find_one(src, "action_head--*checkpoint.pt", "action head")
    sd = strip_prefix(drop_module_prefix(load_pt(f)), "model.")
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("mlp_resnet_blocks.")})
    names = {"layer_norm1": "norm_in", "fc1": "fc_in", "layer_norm2": "norm_out", "fc2": "fc_out"}
    out = {}
    for k, v in sd.items():
        part, _, rest = k.partition(".")
        if part in names:
            out[f"head.mlp.{names[part]}.{rest}"] = v
        elif part == "mlp_resnet_blocks":  # blocks.i.ffn.{0: LayerNorm, 1: Linear}
            i, _, j, p = rest.split(".")
            out[f"head.mlp.blocks.{i}.{j}.{p}"] = v
        else:
            raise LayoutError(f"{f}: unexpected action-head weight {k!r}")
    if "head.mlp.fc_in.weight" not in out:
        raise LayoutError(f"{f}: no MLP-ResNet weights (model.fc1.weight missing; found {sorted(sd)[:4]})")
    return out, out["head.mlp.fc_in.weight"].shape[0], len(blocks)


@IMPORTERS.register("openvla_oft")
def import_openvla_oft(src: Path, unnorm_key: str | None = None, cameras: tuple[str, ...] | None = None,
                       dtype: str = "bfloat16", chunk: int | None = None) -> Imported:
    """An OpenVLA-OFT run directory: the merged HF-format shards + ``action_head--*_checkpoint.pt`` (+
    ``proprio_projector--*_checkpoint.pt``) + ``dataset_statistics.json``.

    OFT differs from OpenVLA in exactly these options: the Llama attends bidirectionally (its patched SDPA
    attention), chunk x action_dim zero-embedded placeholder tokens and EOS follow the prompt and an MLP-ResNet
    reads their hidden states (``mlp`` head, ``readout=placeholders``, ``mlp=resnet``, L1), the proprio projector
    (Linear-GELU-Linear) adds one token after the image patches, every camera's patches enter the sequence, the
    instruction is lower-cased, and LIBERO images are centre-cropped to 90 % of their area.
    """
    from vlaforge.weights.common import drop_module_prefix, find_one, load_pt

    src = Path(src)
    hf = read_json(src / "config.json", "OpenVLA-OFT config.json")
    arch, weights = _hf_parts(src, hf)
    stats, key, mask = _statistics(src, hf, unnorm_key)
    chunk, default_cams, norm, crop = _oft_platform(key, chunk)
    cameras = tuple(cameras or default_cams)
    head_w, width, blocks = _oft_head(src)
    weights.update(head_w)
    action_dim = len(stats[key][ACTION]["q01"])
    d = arch["configs"]["llm"].get("hidden_size", 4096)
    if head_w["head.mlp.fc_in.weight"].shape[1] != action_dim * d:
        raise LayoutError(f"{src}: the action head reads {head_w['head.mlp.fc_in.weight'].shape[1]} features, "
                          f"expected action_dim x hidden = {action_dim} x {d}")
    proprio = sorted(src.glob("proprio_projector--*checkpoint.pt"))
    state_dim = 0
    if proprio:
        p = drop_module_prefix(load_pt(find_one(src, "proprio_projector--*checkpoint.pt", "proprio projector")))
        state_dim = p["fc1.weight"].shape[1]
        weights.update({f"backbone.proprio.{i}.{n}": p[f"fc{j}.{n}"] for i, j in ((0, 1), (2, 2))
                        for n in ("weight", "bias")})
    if "observation.state" not in stats[key] and state_dim:
        raise LayoutError(f"{src}: a proprio projector but no 'proprio' statistics for {key!r}")
    backbone = openvla_backbone(arch, dtype, proprio="mlp" if state_dim else "none", readout="last",
                                attention="bidirectional", prompt_lowercase=True, image_crop=crop)
    head = HEADS.get("mlp")(readout="placeholders", mlp="resnet", hidden=width, layers=blocks, loss="l1")
    modes = {ACTION: norm, **({"observation.state": norm} if state_dim else {})}
    cfg = PolicyConfig(backbone=backbone, head=head, chunk=chunk, exec_steps=chunk, normalization=modes,
                       normalize_skip=skip_dims(mask), cameras=cameras, state_dim=state_dim, action_dim=action_dim)
    robot = RobotSpec(cameras={c: (0, 0) for c in cameras}, state_dim=state_dim, action_dim=action_dim)
    notes = ["# Imported OpenVLA-OFT checkpoint", "", f"source: {src}", f"unnorm_key: {key}",
             f"chunk {chunk}, cameras {list(cameras)}, normalization {norm}, centre crop {crop}",
             "exact: towers, projector, proprio token, bidirectional Llama, placeholder readout, MLP-ResNet, "
             "un-normalisation",
             "approximate: the instruction is lower-cased with whitespace tidied (OFT: str.lower only); the env "
             "must deliver OFT's LIBERO frames (rotated 180 deg, JPEG + lanczos to 224) and map the gripper "
             "(OFT: 2g - 1, sign, inverted) — vlaforge's output pipeline returns the raw gripper value"]
    return Imported(cfg, weights, load_source_tokenizer(src), stats, key, robot, notes)
