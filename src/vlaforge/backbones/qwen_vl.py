"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL backbones (DexVLA / DiVLA use Qwen2-VL-2B).

Papers: Qwen2-VL (Wang et al., 2024), Qwen2.5-VL (Bai et al., 2025), Qwen3-VL (2025); reference:
``transformers/models/qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``. Differences from the HF processor path, which
cannot be built without torchvision (it declares a video processor): we patchify in torch exactly as
``Qwen2VLImageProcessor`` does (each image repeated over the 2-frame temporal patch, patches ordered by
``spatial_merge_size`` blocks), every camera view is one fixed-size image between ``<|vision_start|>`` and
``<|vision_end|>``, and the 3-D multimodal RoPE ids come from the model's own ``get_rope_index``. Qwen3-VL's
deepstack features are injected into the first decoder layers as the HF model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from vlaforge.backbones.base import (
    BACKBONES,
    Backbone,
    BackboneConfig,
    Built,
    PrefixInfo,
    load_hf,
    log,
    read_processor,
    with_token_ids,
)
from vlaforge.backbones.sizes import LM_135M, VOCAB
from vlaforge.backbones.tokenizer import build_tokenizer
from vlaforge.config import ConfigError
from vlaforge.types import Context

SPECIAL = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_TEXT = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1024, max_position_embeddings=2048)
_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}  # sums to head_dim / 2
DEFAULT_IMAGE_SIZE = 224  # a real checkpoint's square view size unless backbone.image_size says otherwise
_ROPE_256M = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}  # head_dim 64


@dataclass(frozen=True)
class _QwenConfig(BackboneConfig):
    model_classes: ClassVar[tuple[Any, Any]]
    sizes: ClassVar[dict[str, dict[str, Any]]]
    image_mean_std: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]] = CLIP_MEAN_STD

    @classmethod
    def backbone_class(cls) -> type[Backbone]:
        return QwenVLBackbone


@BACKBONES.register("qwen2_vl")
@dataclass(frozen=True)
class Qwen2VLBackboneConfig(_QwenConfig):
    """Qwen2-VL (DexVLA's backbone); sizes tiny | 256m, or pretrained=DIR."""

    model_classes: ClassVar[tuple[Any, Any]] = (Qwen2VLForConditionalGeneration, Qwen2VLConfig)
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl",)
    sizes: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image_size": 56, "vision": dict(depth=2, embed_dim=64, num_heads=4, mlp_ratio=4),
                 "text": dict(_TEXT, rope_parameters=_ROPE)},
        "256m": {"image_size": 224, "vision": dict(depth=12, embed_dim=768, num_heads=12, mlp_ratio=4),
                 "text": dict(LM_135M, vocab_size=VOCAB, rope_parameters=_ROPE_256M)},
    }


@BACKBONES.register("qwen2_5_vl")
@dataclass(frozen=True)
class Qwen25VLBackboneConfig(_QwenConfig):
    """Qwen2.5-VL (window-attention ViT); sizes tiny | 256m, or pretrained=DIR."""

    model_classes: ClassVar[tuple[Any, Any]] = (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig)
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_5_vl",)
    sizes: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image_size": 56, "vision": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                                                  window_size=56, fullatt_block_indexes=[1]),
                 "text": dict(_TEXT, rope_parameters=_ROPE)},
        "256m": {"image_size": 224, "vision": dict(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12,
                                                   fullatt_block_indexes=[3, 7, 11]),
                 "text": dict(LM_135M, vocab_size=VOCAB, rope_parameters=_ROPE_256M)},
    }


@BACKBONES.register("qwen3_vl")
@dataclass(frozen=True)
class Qwen3VLBackboneConfig(_QwenConfig):
    """Qwen3-VL (deepstack ViT features, interleaved multimodal RoPE); sizes tiny | 256m, or pretrained=DIR."""

    model_classes: ClassVar[tuple[Any, Any]] = (Qwen3VLForConditionalGeneration, Qwen3VLConfig)
    model_types: ClassVar[tuple[str, ...]] = ("qwen3_vl",)
    image_mean_std: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]] = ((0.5,) * 3, (0.5,) * 3)
    sizes: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image_size": 64, "vision": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                                                  patch_size=16, num_position_embeddings=64,
                                                  deepstack_visual_indexes=[0]),
                 "text": dict(_TEXT, head_dim=32, rope_parameters={**_ROPE, "mrope_interleaved": True})},
        "256m": {"image_size": 224, "vision": dict(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12,
                                                   patch_size=16, num_position_embeddings=196,
                                                   deepstack_visual_indexes=[3, 7, 11]),
                 "text": dict(LM_135M, head_dim=64, vocab_size=VOCAB,
                              rope_parameters={**_ROPE_256M, "mrope_interleaved": True})},
    }


def _tiny(cfg: _QwenConfig, tokenizer: Any) -> Any:
    size = cfg.sizes[cfg.size]
    text = with_token_ids(size["text"], tokenizer)
    vision = dict(size["vision"])
    vision["hidden_size" if "embed_dim" in vision else "out_hidden_size"] = text["hidden_size"]  # ViT output dim
    ids = tokenizer.convert_tokens_to_ids
    return cfg.model_classes[1](vision_config=vision, text_config=text, image_token_id=ids("<|image_pad|>"),
                                video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                                vision_end_token_id=ids("<|vision_end|>"))


def patchify(pixels: Tensor, patch: int, merge: int, temporal: int) -> tuple[Tensor, Tensor]:
    """(N, C, H, W) -> Qwen-VL's flattened patches (N*gh*gw, C*temporal*patch*patch) and grid_thw (N, 3).

    Mirrors ``Qwen2VLImageProcessor._preprocess`` for one still image: the frame is repeated over the temporal
    patch, and patches are ordered in ``merge x merge`` blocks so the ViT's patch merger sees neighbours.
    """
    n, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    x = pixels.unsqueeze(1).expand(n, temporal, c, h, w)
    x = x.reshape(n, 1, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    grid = torch.tensor([[1, gh, gw]], device=pixels.device).expand(n, 3)
    return x.reshape(n * gh * gw, c * temporal * patch * patch), grid


class QwenVLBackbone(Backbone):
    image_processor_class = "Qwen2VLImageProcessorPil"

    def _load(self, cfg: _QwenConfig, assets: Path | None) -> Built:
        model_cls, config_cls = cfg.model_classes
        return load_hf(cfg, assets, model_cls, config_cls, _tiny, cfg.image_mean_std,
                       lambda: build_tokenizer(extra_special=SPECIAL))

    def _init_family(self) -> None:
        hf, ids = self.model.config, self.tokenizer.convert_tokens_to_ids
        v = hf.vision_config
        self.hidden_size = hf.text_config.hidden_size
        self._patch, self._merge, self._temporal = v.patch_size, v.spatial_merge_size, v.temporal_patch_size
        step = self._patch * self._merge
        if self.cfg.arch is not None:
            self.image_size = self.cfg.arch["image_size"]
        elif self.cfg.pretrained is not None:
            self.image_size = self._pretrained_image_size(Path(self.cfg.pretrained), step)
        else:
            self.image_size = self.cfg.image_size or self.cfg.sizes[self.cfg.size]["image_size"]
        if self.image_size % step:
            raise ConfigError("backbone.image_size", f"a multiple of {step} (patch x merge)", self.image_size)
        self._set_layout(self.model.model.language_model, self.model.lm_head, start=[self.tokenizer.bos_token_id],
                         view_prefix=[ids("<|vision_start|>")], view_suffix=[ids("<|vision_end|>")])

    def arch(self) -> dict[str, Any]:
        return {"hf_config": self.model.config.to_dict(), "image_size": self.image_size}

    def _pretrained_image_size(self, path: Path, step: int) -> int:
        """The square input size of a real checkpoint, from its processor files: the processor's patch, merge
        and temporal sizes must be the model's; a fixed ``size`` is used as is, else ``backbone.image_size`` (or
        DEFAULT_IMAGE_SIZE) rounded to a multiple of patch x merge inside the processor's pixel bounds."""
        proc = read_processor(path)
        for key, ours in (("patch_size", self._patch), ("merge_size", self._merge),
                          ("temporal_patch_size", self._temporal)):
            if key in proc and proc[key] != ours:
                raise ValueError(f"backbone.pretrained: {path}'s processor has {key}={proc[key]}, its model "
                                 f"config {ours}")
        size = proc.get("size") or {}
        if "height" in size and self.cfg.image_size is None:
            if size["height"] != size.get("width"):
                raise ValueError(f"backbone.pretrained: {path}'s processor size {size} is not square; set "
                                 f"--backbone.image_size")
            return int(size["height"])
        lo = proc.get("min_pixels") or size.get("shortest_edge") or step * step
        hi = proc.get("max_pixels") or size.get("longest_edge") or 10**9
        want = self.cfg.image_size or DEFAULT_IMAGE_SIZE
        side = max(step, round(want / step) * step)
        while side * side < lo:
            side += step
        while side * side > hi and side > step:
            side -= step
        if self.cfg.image_size is not None and side != self.cfg.image_size:
            raise ConfigError("backbone.image_size", f"a multiple of {step} with {lo} <= size^2 <= {hi} "
                              f"(the processor's bounds)", self.cfg.image_size)
        tokens = (side // step) ** 2
        log.info("%s: %d px per view -> %d visual tokens (patch %d, merge %d; processor bounds %d..%d pixels)",
                 path, side, tokens, self._patch, self._merge, lo, hi)
        return side

    def embed_images(self, pixel_values: Tensor) -> Tensor | tuple[Tensor, dict[str, Any]]:
        n = pixel_values.shape[0]
        flat, grid = patchify(pixel_values, self._patch, self._merge, self._temporal)
        out = self.model.model.visual(flat, grid_thw=grid)
        feats = out.pooler_output.view(n, -1, self.hidden_size)
        deep = getattr(out, "deepstack_features", None)
        return (feats, {"deepstack": deep, "grid": grid}) if deep is not None else (feats, {"grid": grid})

    def components(self) -> dict[str, nn.Module]:
        m = self.model.model
        return {"vision": m.visual, "projector": m.visual.merger, "lm": m.language_model}

    def positions(self, mask: Tensor, image_spans: list[tuple[int, int]]) -> Tensor:
        b, length = mask.shape
        types = torch.zeros(b, length, dtype=torch.int, device=mask.device)
        for start, n in image_spans:
            types[:, start : start + n] = 1
        grid = torch.tensor([[1, self.image_size // self._patch, self.image_size // self._patch]],
                            device=mask.device).expand(b * len(image_spans), 3)
        ids = torch.zeros(b, length, dtype=torch.long, device=mask.device)
        pos, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grid,
                                                 attention_mask=mask)
        return pos  # (3, B, L)

    def suffix_positions(self, ctx: Context, mask: Tensor) -> Tensor:
        return super().suffix_positions(ctx, mask).unsqueeze(0).expand(3, -1, -1)

    def lm_forward(self, embeds: Tensor, mask: Tensor, positions: Tensor, cache: Any,
                   prefix: PrefixInfo | None) -> Tensor:
        kwargs: dict[str, Any] = {}
        deep = prefix.image_extra.get("deepstack") if prefix is not None else None
        if deep is not None:  # Qwen3-VL: add multi-level ViT features to the image positions of the first layers
            visual = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
            for start, n in prefix.spans:
                visual[:, start : start + n] = True
            kwargs = {"visual_pos_masks": visual, "deepstack_visual_embeds": list(deep)}
        out = self._lm[0](inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                          use_cache=cache is not None, **kwargs)
        return out.last_hidden_state
