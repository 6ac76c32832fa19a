"""PaliGemma 1 and 2 backbones (pi0's VLM): SigLIP + linear projector + Gemma / Gemma 2.

Paper: PaliGemma (Beyer et al., 2024), PaliGemma 2 (Steiner et al., 2024); reference:
``transformers/models/paligemma``. As in PaliGemma, the whole prefix (images, proprio, prompt) attends
bidirectionally and the suffix (action tokens) causally — a prefix-LM mask built with transformers'
``create_causal_mask(block_sequence_ids=...)``. The sequence is ``[image tokens] [bos] [prompt]``; the PIL
processor's ``<image>`` placeholders are replaced by the features directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from vlaforge.backbones.base import BACKBONES, Backbone, BackboneConfig, Built, load_hf, with_token_ids
from vlaforge.backbones.sizes import LM_135M, VIT_B, VOCAB
from vlaforge.backbones.tokenizer import build_tokenizer

_TEXT = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=1, head_dim=32, vocab_size=1024, max_position_embeddings=1024)
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"vision": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                            image_size=32, patch_size=8), "text": {"model_type": "gemma", **_TEXT}},
    "tiny2": {"vision": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8),
              "text": {"model_type": "gemma2", **_TEXT, "sliding_window": 64, "query_pre_attn_scalar": 32}},
    "256m": {"vision": dict(VIT_B, image_size=224, patch_size=16),
             "text": dict(LM_135M, model_type="gemma", head_dim=64, vocab_size=VOCAB)},
    # PaliGemma-3B at 224 px as pi0 / pi0.5 use it (openpi ``gemma_2b`` + SigLIP So400m/14, no pooling head)
    "3b": {"vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                          image_size=224, patch_size=14, vision_use_head=False),
           "text": dict(model_type="gemma", hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                        num_attention_heads=8, num_key_value_heads=1, head_dim=256, vocab_size=257152,
                        max_position_embeddings=8192)},
}


@BACKBONES.register("paligemma")
@dataclass(frozen=True)
class PaliGemmaBackboneConfig(BackboneConfig):
    """PaliGemma 1/2 (SigLIP + Gemma); sizes tiny | tiny2 (Gemma 2 text) | 256m | 3b, or pretrained=DIR."""

    sizes: ClassVar[dict[str, Any]] = SIZES
    model_types: ClassVar[tuple[str, ...]] = ("paligemma",)

    prompt_template: str = "{task}\n"

    @classmethod
    def backbone_class(cls) -> type[Backbone]:
        return PaliGemmaBackbone


def _tiny(cfg: PaliGemmaBackboneConfig, tokenizer: Any) -> PaliGemmaConfig:
    size = cfg.sizes[cfg.size]
    vision = dict(size["vision"], image_size=cfg.image_size or size["vision"]["image_size"])
    text = with_token_ids(size["text"], tokenizer)
    return PaliGemmaConfig(vision_config={"model_type": "siglip_vision_model", **vision,
                                          "projection_dim": text["hidden_size"]},
                           text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                           projection_dim=text["hidden_size"])


class PaliGemmaBackbone(Backbone):
    bidirectional_prefix = True
    image_processor_class = "SiglipImageProcessorPil"
    default_lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def _load(self, cfg: PaliGemmaBackboneConfig, assets: Path | None) -> Built:
        return load_hf(cfg, assets, PaliGemmaForConditionalGeneration, PaliGemmaConfig, _tiny,
                       ((0.5,) * 3, (0.5,) * 3), lambda: build_tokenizer(extra_special=("<image>",)))

    def _init_family(self) -> None:
        hf = self.model.config
        self.hidden_size = hf.text_config.hidden_size
        self.image_size = hf.vision_config.image_size
        self._text_config = hf.get_text_config()
        self._set_layout(self.model.model.language_model, self.model.lm_head, start=[], view_prefix=[],
                         view_suffix=[], prompt_prefix=[self.tokenizer.bos_token_id])

    def embed_images(self, pixel_values: Tensor) -> Tensor:
        m = self.model.model
        return m.multi_modal_projector(m.vision_tower(pixel_values).last_hidden_state)

    def components(self) -> dict[str, nn.Module]:
        m = self.model.model
        return {"vision": m.vision_tower, "projector": m.multi_modal_projector, "lm": m.language_model}

    def lm_forward(self, embeds: Tensor, mask: Tensor, positions: Tensor, cache: Any, prefix: Any) -> Tensor:
        kwargs = {"config": self._text_config, "inputs_embeds": embeds, "attention_mask": mask,
                  "cache": cache, "position_ids": positions}
        if prefix is not None:  # one bidirectional block over the prefix (pads are masked by attention_mask)
            kwargs["block_sequence_ids"] = torch.zeros_like(mask)
        attn: Any = create_causal_mask(**kwargs)
        if getattr(self._text_config, "sliding_window", None) is not None:
            attn = {"full_attention": attn, "sliding_attention": create_sliding_window_causal_mask(**kwargs)}
        out = self._lm[0](inputs_embeds=embeds, attention_mask=attn, position_ids=positions, cache=cache,
                          use_cache=cache is not None)
        return out.last_hidden_state
