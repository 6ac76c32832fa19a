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
    return BACKBONES.get("prismatic")(
        arch=arch, dtype=dtype, prompt_template=PROMPT, prompt_lowercase=False, prompt_suffix="▁",
        max_prompt_tokens=96, image_resize="squash", image_interpolation="bicubic", action_tokens="count_down",
        num_action_tokens=256, **options)


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
