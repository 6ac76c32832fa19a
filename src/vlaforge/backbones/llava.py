"""LLaVA-1.5 and LLaVA-OneVision backbones (LLaVA-VLA's two VLMs).

Papers: LLaVA-1.5 (Liu et al., 2024), LLaVA-OneVision (Li et al., 2024); reference: ``transformers/models/llava``
and ``llava_onevision``. LLaVA-1.5: CLIP ViT features of the second-to-last layer without the CLS token, a
2-layer MLP projector, Llama. LLaVA-OneVision: SigLIP features, MLP projector, Qwen2, and the learned
``image_newline`` after each image. Difference: every camera view is one base-resolution image (OneVision's
multi-image format) — no anyres tiling — which keeps the token count fixed per view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
)

from vlaforge.backbones.base import BACKBONES, Backbone, BackboneConfig, Built, load_hf, with_token_ids
from vlaforge.backbones.sizes import LM_135M, VIT_B, VOCAB
from vlaforge.backbones.tokenizer import build_tokenizer

CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# LLaVA-VLA's prompt (flask_server.py): the Vicuna-v1 conversation (sep " ") with its robot system prompt; the image
# opens the user turn ("<image>\n{instruction}\n{state}"), each side of <image> tokenized alone
LLAVA_VLA_SYSTEM = ("A chat between a curious user and an artificial intelligence robot. The robot provides actions "
                    "to follow out the user's instructions.")
LLAVA_VLA_BEFORE_IMAGE = f"{LLAVA_VLA_SYSTEM} USER: "  # -> backbone.prompt_before_image
LLAVA_VLA_AFTER_IMAGE = "\n{task}\n{state} ASSISTANT:"  # -> backbone.prompt_template (the open assistant turn)
LLAVA_VLA_IMAGE_SIZE = 334  # TARGET_IMG_SIZE: the two views stacked at 334 x 334 -> backbone.stitch_view_size
_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
               patch_size=8)
_TEXT = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1024, max_position_embeddings=2048)


@dataclass(frozen=True)
class _LlavaConfig(BackboneConfig):
    model_classes: ClassVar[tuple[Any, Any]]
    sizes: ClassVar[dict[str, dict[str, Any]]]
    image_mean_std: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]]
    image_processor: ClassVar[str]

    @classmethod
    def backbone_class(cls) -> type[Backbone]:
        return LlavaBackbone


@BACKBONES.register("llava")
@dataclass(frozen=True)
class LlavaBackboneConfig(_LlavaConfig):
    """LLaVA-1.5 (CLIP ViT + MLP + Llama); sizes tiny | 256m, or pretrained=DIR."""

    model_classes: ClassVar[tuple[Any, Any]] = (LlavaForConditionalGeneration, LlavaConfig)
    model_types: ClassVar[tuple[str, ...]] = ("llava",)
    image_processor: ClassVar[str] = "CLIPImageProcessorPil"
    image_mean_std: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]] = CLIP_MEAN_STD
    sizes: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"vision": {"model_type": "clip_vision_model", **_VISION}, "text": {"model_type": "llama", **_TEXT},
                 "extra": {"vision_feature_layer": -2, "vision_feature_select_strategy": "default"}},
        "256m": {"vision": dict(VIT_B, model_type="clip_vision_model", image_size=224, patch_size=16),
                 "text": dict(LM_135M, model_type="llama", vocab_size=VOCAB),
                 "extra": {"vision_feature_layer": -2, "vision_feature_select_strategy": "default"}},
    }


@BACKBONES.register("llava_onevision")
@dataclass(frozen=True)
class LlavaOnevisionBackboneConfig(_LlavaConfig):
    """LLaVA-OneVision (SigLIP + MLP + Qwen2, image_newline); sizes tiny | 256m, or pretrained=DIR."""

    model_classes: ClassVar[tuple[Any, Any]] = (LlavaOnevisionForConditionalGeneration, LlavaOnevisionConfig)
    model_types: ClassVar[tuple[str, ...]] = ("llava_onevision",)
    image_processor: ClassVar[str] = "LlavaOnevisionImageProcessorPil"
    image_mean_std: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]] = ((0.5,) * 3, (0.5,) * 3)
    sizes: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"vision": {"model_type": "siglip_vision_model", **_VISION}, "text": {"model_type": "qwen2", **_TEXT},
                 "extra": {"vision_feature_layer": -1, "vision_feature_select_strategy": "full",
                           "image_grid_pinpoints": [[32, 32]]}},
        "256m": {"vision": dict(VIT_B, model_type="siglip_vision_model", image_size=224, patch_size=16),
                 "text": dict(LM_135M, model_type="qwen2", vocab_size=VOCAB),
                 "extra": {"vision_feature_layer": -1, "vision_feature_select_strategy": "full",
                           "image_grid_pinpoints": [[224, 224]]}},
    }


def _tiny(cfg: _LlavaConfig, tokenizer: Any) -> Any:
    size = cfg.sizes[cfg.size]
    vision = dict(size["vision"], image_size=cfg.image_size or size["vision"]["image_size"])
    text = with_token_ids(size["text"], tokenizer)
    return cfg.model_classes[1](vision_config=vision, text_config=text, projector_hidden_act="gelu",
                                image_token_id=tokenizer.convert_tokens_to_ids("<image>"), **size["extra"])


class LlavaBackbone(Backbone):
    def _load(self, cfg: _LlavaConfig, assets: Path | None) -> Built:
        model_cls, config_cls = cfg.model_classes
        return load_hf(cfg, assets, model_cls, config_cls, _tiny, cfg.image_mean_std,
                       lambda: build_tokenizer(extra_special=("<image>", "<video>")))

    def _init_family(self) -> None:
        hf = self.model.config
        self.image_processor_class = self.cfg.image_processor
        self.hidden_size = hf.text_config.hidden_size
        self.image_size = hf.vision_config.image_size
        self._layer = hf.vision_feature_layer
        self._drop_cls = hf.vision_feature_select_strategy == "default"
        self._newline = getattr(self.model.model, "image_newline", None)  # OneVision only
        self._set_layout(self.model.model.language_model, self.model.lm_head, start=[self.tokenizer.bos_token_id],
                         view_prefix=[], view_suffix=[])

    def embed_images(self, pixel_values: Tensor) -> Tensor:
        m = self.model.model
        out = m.vision_tower(pixel_values, output_hidden_states=True)
        layers = self._layer if isinstance(self._layer, list) else [self._layer]
        feats = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
        if self._drop_cls:
            feats = feats[:, 1:]
        feats = m.multi_modal_projector(feats)
        if self._newline is not None:
            feats = torch.cat([feats, self._newline.to(feats.dtype).expand(feats.shape[0], 1, -1)], 1)
        return feats

    def components(self) -> dict[str, nn.Module]:
        m = self.model.model
        return {"vision": m.vision_tower, "projector": m.multi_modal_projector, "lm": m.language_model}
