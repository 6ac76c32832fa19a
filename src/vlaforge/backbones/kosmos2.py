"""Kosmos-2 backbone (RoboVLMs' best-performing VLM).

Paper: Kosmos-2 (Peng et al., 2023); reference: ``transformers/models/kosmos2``. The ViT's last layer goes
through ``post_layernorm``, L2 normalization and the latent-query resampler (64 tokens by default) into the
text decoder, between ``<image>`` and ``</image>`` as in Kosmos-2's prompts (``image_markers=False``: right after
BOS with no markers, as RoboVLMs' RoboKosMos inserts them). Differences: none in the model; RoboVLMs needed a
patched modeling file to pass ``inputs_embeds``, which current transformers accepts.
The decoder's sinusoidal positions start at ``padding_idx + 1``, so position ids are offset accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn
from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

from vlaforge.backbones.base import BACKBONES, Backbone, BackboneConfig, Built, PrefixInfo, load_hf, with_token_ids
from vlaforge.backbones.sizes import VIT_B, VOCAB
from vlaforge.backbones.tokenizer import build_tokenizer

CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            image_size=32, patch_size=8),
             "text": dict(embed_dim=128, ffn_dim=512, layers=2, attention_heads=4, vocab_size=1024,
                          max_position_embeddings=2048),
             "latent_query_num": 16},
    "256m": {"vision": dict(VIT_B, image_size=224, patch_size=16),
             "text": dict(embed_dim=576, ffn_dim=1536, layers=30, attention_heads=9, vocab_size=VOCAB,
                          max_position_embeddings=4096),
             "latent_query_num": 64},
}


@BACKBONES.register("kosmos2")
@dataclass(frozen=True)
class Kosmos2BackboneConfig(BackboneConfig):
    """Kosmos-2 (CLIP ViT + latent-query resampler + Magneto decoder); sizes tiny | 256m, or pretrained=DIR."""

    sizes: ClassVar[dict[str, Any]] = SIZES
    model_types: ClassVar[tuple[str, ...]] = ("kosmos-2",)

    image_markers: bool = True  # <image> ... </image> around each view's tokens (False: RoboVLMs' layout)

    @classmethod
    def backbone_class(cls) -> type[Backbone]:
        return Kosmos2Backbone


def _tiny(cfg: Kosmos2BackboneConfig, tokenizer: Any) -> Kosmos2Config:
    size = cfg.sizes[cfg.size]
    vision = dict(size["vision"], image_size=cfg.image_size or size["vision"]["image_size"])
    text = with_token_ids(size["text"], tokenizer)
    return Kosmos2Config(vision_config=vision, text_config=text, latent_query_num=size["latent_query_num"])


class Kosmos2Backbone(Backbone):
    image_processor_class = "CLIPImageProcessorPil"
    default_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")

    def _load(self, cfg: Kosmos2BackboneConfig, assets: Path | None) -> Built:
        return load_hf(cfg, assets, Kosmos2ForConditionalGeneration, Kosmos2Config, _tiny, CLIP_MEAN_STD,
                       lambda: build_tokenizer(extra_special=("<image>", "</image>", "<grounding>")))

    def _init_family(self) -> None:
        hf, ids = self.model.config, self.tokenizer.convert_tokens_to_ids
        self.hidden_size = hf.text_config.embed_dim
        self.image_size = hf.vision_config.image_size
        self._offset = hf.text_config.pad_token_id + 1  # sinusoidal table rows start after padding_idx
        markers = self.cfg.image_markers
        self._set_layout(self.model.text_model.model, self.model.text_model.lm_head,
                         start=[self.tokenizer.bos_token_id], view_prefix=[ids("<image>")] if markers else [],
                         view_suffix=[ids("</image>")] if markers else [])

    def embed_images(self, pixel_values: Tensor) -> Tensor:
        vision = self.model.vision_model  # as Kosmos2Model.get_image_features: whole last layer, normalized
        x = vision.model.post_layernorm(vision(pixel_values=pixel_values).last_hidden_state)
        x, _ = self.model.image_to_text_projection(nn.functional.normalize(x, dim=-1))
        return x

    def components(self) -> dict[str, nn.Module]:
        return {"vision": self.model.vision_model, "projector": self.model.image_to_text_projection,
                "lm": self.model.text_model}

    def lm_forward(self, embeds: Tensor, mask: Tensor, positions: Tensor, cache: Any,
                   prefix: PrefixInfo | None) -> Tensor:
        out = self._lm[0](inputs_embeds=embeds, attention_mask=mask, position_ids=positions + self._offset,
                          cache=cache, use_cache=cache is not None)
        return out.last_hidden_state
