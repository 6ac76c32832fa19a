"""SmolVLM / Idefics3 backbone (SmolVLA's VLM) over ``transformers.SmolVLMForConditionalGeneration``.

Paper: SmolVLM (Marafioti et al., 2025); reference: ``transformers/models/smolvlm``. Differences from the HF
processor path: each camera view is one un-split image (``<fake_token_around_image><global-img> image tokens
<fake_token_around_image>``, SmolVLM's single-image format), pixels are normalized here in torch, and image
features go straight into the prefix instead of through ``<image>`` placeholder scatter — which also avoids
the HF code treating an all-black camera frame as a padding image.

Chosen for the CPU quick start because it spends the fewest tokens per image (pixel shuffle) and had the lowest
CPU forward time among the families measured (``shared/reference/environment.md`` §2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers import AutoTokenizer, SmolVLMForConditionalGeneration
from transformers import SmolVLMConfig as HFSmolVLMConfig

from vlaforge.backbones.base import BACKBONES, DTYPES, Backbone, BackboneConfig
from vlaforge.backbones.tokenizer import build_tokenizer
from vlaforge.config import ConfigError

IMAGE_WRAP = "<fake_token_around_image>"
GLOBAL_IMG = "<global-img>"
IMAGE_TOKEN = "<image>"
END_OF_UTTERANCE = "<end_of_utterance>"

# Random-init architectures. "tiny" is the CPU test / quick-start size; "256m" has SmolVLM-256M's shapes
# (SigLIP-B/16 at 512 px + SmolLM2-135M) for realistic-size benchmarks without downloading weights.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {"hidden_size": 192, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 6,
                   "image_size": 96, "patch_size": 16},
        "text": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "num_key_value_heads": 2},
        "scale_factor": 2, "vocab_size": 1024,
    },
    "256m": {
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "image_size": 512, "patch_size": 16},
        "text": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3},
        "scale_factor": 4, "vocab_size": 49280,
    },
}
_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # SmolVLM's image processor defaults


@BACKBONES.register("smolvlm")
@dataclass(frozen=True)
class SmolVLMBackboneConfig(BackboneConfig):
    """SmolVLM / SmolVLM2 / Idefics3 checkpoints (``size`` = tiny | 256m when ``pretrained`` is not set)."""

    def validate(self) -> None:
        super().validate()
        if self.pretrained is None and self.arch is None:
            self.check(self.size in SIZES, "size", f"one of {sorted(SIZES)} (or set pretrained=DIR)")

    def build(self, assets: Path | None = None) -> SmolVLMBackbone:
        return SmolVLMBackbone(self, assets)


def _hf_config(cfg: SmolVLMBackboneConfig, tokenizer: Any) -> HFSmolVLMConfig:
    size = SIZES[cfg.size]
    vision = dict(size["vision"])
    if cfg.image_size is not None:
        if cfg.image_size % (vision["patch_size"] * size["scale_factor"]):
            raise ConfigError("backbone.image_size", f"a multiple of {vision['patch_size'] * size['scale_factor']}",
                              cfg.image_size)
        vision["image_size"] = cfg.image_size
    text = {"model_type": "llama", **size["text"], "vocab_size": size["vocab_size"], "max_position_embeddings": 1024,
            "tie_word_embeddings": True, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    return HFSmolVLMConfig(vision_config=vision, text_config=text, scale_factor=size["scale_factor"],
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tie_word_embeddings=True)


class SmolVLMBackbone(Backbone):
    def __init__(self, cfg: SmolVLMBackboneConfig, assets: Path | None = None) -> None:
        dtype = DTYPES[cfg.dtype]
        mean, std = _MEAN_STD
        if assets is not None:  # rebuilding from a checkpoint: architecture from cfg.arch, weights loaded later
            if cfg.arch is None:
                raise ValueError("backbone config has no 'arch'; cannot rebuild from a checkpoint")
            tokenizer = AutoTokenizer.from_pretrained(str(assets))
            model = SmolVLMForConditionalGeneration(HFSmolVLMConfig.from_dict(cfg.arch["hf_config"])).to(dtype)
            mean, std = tuple(cfg.arch["image_mean"]), tuple(cfg.arch["image_std"])
        elif cfg.pretrained is not None:
            path = Path(cfg.pretrained)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"backbone.pretrained: {path} has no config.json (expected a directory "
                                        f"written by save_pretrained)")
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = SmolVLMForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
            proc = path / "preprocessor_config.json"
            if proc.is_file():
                p = json.loads(proc.read_text())
                mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
        else:
            tokenizer = build_tokenizer(extra_special=(IMAGE_WRAP, GLOBAL_IMG, IMAGE_TOKEN, END_OF_UTTERANCE))
            model = SmolVLMForConditionalGeneration(_hf_config(cfg, tokenizer)).to(dtype)
        hf = model.config
        ids = tokenizer.convert_tokens_to_ids
        super().__init__(cfg, model, model.model.text_model, model.lm_head, tokenizer,
                         view_prefix=[ids(IMAGE_WRAP), ids(GLOBAL_IMG)], view_suffix=[ids(IMAGE_WRAP)])
        self.hidden_size = hf.text_config.hidden_size
        self.vocab_size = hf.text_config.vocab_size
        self.image_size = hf.vision_config.image_size
        self.image_mean, self.image_std = mean, std
        if len(tokenizer) > self.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} ids but the model vocabulary is {self.vocab_size}")
        self._patch = hf.vision_config.patch_size

    def embed_images(self, pixel_values: Tensor) -> Tensor:
        n, _, h, w = pixel_values.shape
        patch_mask = pixel_values.new_ones(n, h // self._patch, w // self._patch, dtype=bool)
        vision = self.model.model.vision_model(pixel_values=pixel_values, patch_attention_mask=patch_mask)
        return self.model.model.connector(vision.last_hidden_state)

    def resolved_config(self) -> SmolVLMBackboneConfig:
        arch = {"hf_config": self.model.config.to_dict(), "image_mean": list(self.image_mean),
                "image_std": list(self.image_std)}
        return self.cfg.replace(arch=arch)
