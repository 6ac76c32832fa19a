"""SmolVLM / SmolVLM2 and Idefics3 backbones (SmolVLA's VLM) over ``transformers``.

Paper: SmolVLM (Marafioti et al., 2025); reference: ``transformers/models/smolvlm`` and ``idefics3``.
Differences from the HF processor path: each camera view is one un-split image
(``<fake_token_around_image><global-img> image tokens <fake_token_around_image>``, SmolVLM's single-image
format), pixels are normalized here in torch, and image features go straight into the prefix instead of
through ``<image>`` placeholder scatter — which also avoids HF treating an all-black camera frame as padding.

SmolVLA's VLM (Shukor et al., 2025; LeRobot ``policies/smolvla``) is this family with four options:
``lm_layers`` keeps the first N text layers (SmolVLA: 16 of SmolVLM2-500M's 32), ``embed_scale`` multiplies image
and prompt embeddings by √hidden, ``image_special_tokens=False`` puts each view's image tokens in the prefix bare
(no BOS, no ``<fake_token_around_image>`` wrappers: SmolVLA's ``add_image_special_tokens=False``), and
``rope_theta`` overrides the VLM config's RoPE base (SmolVLA's own RoPE uses 10000 whatever SmolVLM2's config says).

The CPU quick start uses it: it spends the fewest tokens per image (pixel shuffle) and had the lowest CPU
forward time of the families measured (``shared/reference/environment.md`` §2, ``bench/backbones.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from vlaforge.backbones.base import BACKBONES, Backbone, BackboneConfig, Built, load_hf, with_token_ids
from vlaforge.backbones.sizes import LM_135M, LM_360M, VIT_B, VOCAB
from vlaforge.backbones.tokenizer import build_tokenizer
from vlaforge.config import ConfigError

SPECIAL = ("<fake_token_around_image>", "<global-img>", "<image>", "<end_of_utterance>")
# Random-init sizes: "tiny" for CPU tests and the quick start; "256m" has SmolVLM-256M's shapes (SigLIP-B/16 at
# 512 px + SmolLM2-135M) for realistic benchmarks without downloading weights.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"vision": dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=6,
                            image_size=96, patch_size=16),
             "text": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=1024),
             "scale_factor": 2},
    "256m": {"vision": dict(VIT_B, image_size=512, patch_size=16), "text": dict(LM_135M, vocab_size=VOCAB),
             "scale_factor": 4},
    # SmolVLM2-500M's shapes (SigLIP-B/16 at 512 px, SmolLM2-360M's decoder: 32 layers of width 960)
    "500m": {"vision": dict(VIT_B, image_size=512, patch_size=16), "text": dict(LM_360M, vocab_size=VOCAB),
             "scale_factor": 4},
}


@BACKBONES.register("smolvlm")
@dataclass(frozen=True)
class SmolVLMBackboneConfig(BackboneConfig):
    """SmolVLM / SmolVLM2 (SigLIP + pixel shuffle + SmolLM2); sizes tiny | 256m, or pretrained=DIR."""

    sizes: ClassVar[dict[str, Any]] = SIZES
    model_types: ClassVar[tuple[str, ...]] = ("smolvlm",)

    model_classes: ClassVar[tuple[Any, Any]] = (SmolVLMForConditionalGeneration, SmolVLMConfig)

    # How the vision tower keeps spatial detail (random-init sizes only; a pretrained tower has its own):
    patch_size: int | None = None  # ViT patch side in pixels (default: the size's, 16)
    pixel_shuffle: int | None = None  # tokens merged per side by the connector (default: the size's; 1 = none)
    # "patch": one strided convolution per patch (SigLIP) | "conv": a stack of 3x3 stride-2 convolutions down to
    # the patch grid (Xiao et al. 2021, "Early convolutions help transformers see better"); patch_size a power of 2
    vision_stem: str = "patch"
    stem_width: int = 0  # vision_stem=conv: channels of its first convolution, doubling per layer (0: the ViT width
    #                      halved per layer back from the last, as Xiao et al.); narrower is cheaper on a CPU
    lm_layers: int = 0  # > 0: keep only the first N decoder layers (SmolVLA's num_vlm_layers)
    vision_layers: int = 0  # > 0: keep only the first N vision-encoder layers (0: all)
    # keypoints read the conv stem's feature map at this stride in pixels, finer than the patch grid (a power of 2
    # below patch_size; vision_stem=conv): the 12 x 12 map of a CNN policy's spatial softmax at 96 px and stride 8.
    # 0: the ViT's patch grid
    keypoints_stride: int = 0
    embed_scale: bool = False  # image and prompt embeddings x sqrt(hidden) (SmolVLA)
    image_special_tokens: bool = True  # False: bare image tokens, no BOS / wrappers (SmolVLA)
    rope_theta: float = 0.0  # > 0: the decoder's RoPE base instead of the config's (SmolVLA: 10000)

    def validate(self) -> None:
        super().validate()
        for name in ("patch_size", "pixel_shuffle"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"backbone.{name}", ">= 1 or null", value)
        if self.vision_stem not in STEMS:
            raise ConfigError("backbone.vision_stem", f"one of {STEMS}", self.vision_stem)
        if self.pretrained is not None:
            for name, default in (("patch_size", None), ("pixel_shuffle", None), ("vision_stem", "patch")):
                if getattr(self, name) != default:
                    raise ConfigError(f"backbone.{name}", f"{default} with pretrained weights (they fix the "
                                      "vision tower)", getattr(self, name))
        self.check(self.lm_layers >= 0, "lm_layers", ">= 0 (0: all)")
        self.check(self.vision_layers >= 0, "backbone.vision_layers", ">= 0 (0: all)")
        self.check(self.stem_width >= 0, "backbone.stem_width", ">= 0 (0: from the ViT width)")
        self.check(self.vision_stem == "conv" or not self.stem_width, "backbone.stem_width",
                   "0 unless vision_stem=conv")
        self.check(self.rope_theta >= 0, "rope_theta", ">= 0 (0: the config's)")
        if self.keypoints_stride:
            self.check(self.vision_stem == "conv" and self.keypoints > 0, "backbone.keypoints_stride",
                       "0 unless vision_stem=conv and keypoints > 0 (it reads the conv stem)")
            stride, patch = self.keypoints_stride, self.patch_size or self.sizes[self.size]["vision"]["patch_size"]
            self.check(stride >= 2 and not stride & (stride - 1) and stride < patch, "backbone.keypoints_stride",
                       f"a power of 2 from 2 to below the patch size {patch}")

    @classmethod
    def backbone_class(cls) -> type[Backbone]:
        return SmolVLMBackbone


@BACKBONES.register("idefics3")
@dataclass(frozen=True)
class Idefics3BackboneConfig(SmolVLMBackboneConfig):
    """Idefics3 (SmolVLM's parent architecture); same sizes and layout."""

    model_classes: ClassVar[tuple[Any, Any]] = (Idefics3ForConditionalGeneration, Idefics3Config)
    model_types: ClassVar[tuple[str, ...]] = ("idefics3",)


STEMS = ("patch", "conv")


def _tiny(cfg: SmolVLMBackboneConfig, tokenizer: Any) -> Any:
    size = cfg.sizes[cfg.size]
    vision = dict(size["vision"], patch_size=cfg.patch_size or size["vision"]["patch_size"],
                  image_size=cfg.image_size or size["vision"]["image_size"])
    shuffle = cfg.pixel_shuffle or size["scale_factor"]
    if cfg.vision_stem == "conv" and vision["patch_size"] & (vision["patch_size"] - 1):
        raise ConfigError("backbone.patch_size", "a power of 2 with vision_stem=conv", vision["patch_size"])
    step = vision["patch_size"] * shuffle
    if vision["image_size"] % step:
        field = next(f for f in ("patch_size", "pixel_shuffle", "image_size") if getattr(cfg, f) is not None)
        raise ConfigError(f"backbone.{field}", f"patch_size x pixel_shuffle = {step} dividing the image size "
                          f"{vision['image_size']}", getattr(cfg, field))
    text = with_token_ids({"model_type": "llama", **size["text"]}, tokenizer, max_position_embeddings=2048,
                          tie_word_embeddings=True)
    if cfg.lm_layers:  # build only the layers that are kept
        text["num_hidden_layers"] = min(cfg.lm_layers, text["num_hidden_layers"])
    if cfg.vision_layers:
        vision["num_hidden_layers"] = min(cfg.vision_layers, vision["num_hidden_layers"])
    return cfg.model_classes[1](vision_config=vision, text_config=text, scale_factor=shuffle,
                                image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=True)


class SmolVLMBackbone(Backbone):
    image_processor_class = "SmolVLMImageProcessorPil"

    def _load(self, cfg: SmolVLMBackboneConfig, assets: Path | None) -> Built:
        model_cls, config_cls = cfg.model_classes
        return load_hf(cfg, assets, model_cls, config_cls, _tiny, ((0.5,) * 3, (0.5,) * 3),
                       lambda: build_tokenizer(extra_special=SPECIAL))

    def _init_family(self) -> None:
        hf, ids, cfg = self.model.config, self.tokenizer.convert_tokens_to_ids, self.cfg
        text = self.model.model.text_model
        if cfg.lm_layers and cfg.lm_layers < len(text.layers):  # a pretrained VLM: drop the layers above N
            text.layers = text.layers[:cfg.lm_layers]
            hf.text_config.num_hidden_layers = text.config.num_hidden_layers = cfg.lm_layers
        encoder = self.model.model.vision_model.encoder
        if cfg.vision_layers and cfg.vision_layers < len(encoder.layers):  # likewise the vision encoder's
            encoder.layers = encoder.layers[:cfg.vision_layers]
            hf.vision_config.num_hidden_layers = cfg.vision_layers
        if cfg.rope_theta and text.config.rope_parameters.get("rope_theta") != cfg.rope_theta:
            from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

            text.config.rope_parameters = {**text.config.rope_parameters, "rope_theta": cfg.rope_theta}
            hf.text_config.rope_parameters = text.config.rope_parameters
            text.rotary_emb = LlamaRotaryEmbedding(text.config).to(text.rotary_emb.inv_freq.device)
        self.hidden_size = hf.text_config.hidden_size
        self.image_size = hf.vision_config.image_size
        self._patch = hf.vision_config.patch_size
        self._grid_dim = hf.vision_config.hidden_size  # keypoints read the patch grid before the pixel shuffle
        if getattr(self.cfg, "vision_stem", "patch") == "conv":
            embeddings = self.model.model.vision_model.embeddings
            embeddings.patch_embedding = ConvStem(hf.vision_config.hidden_size, self._patch, cfg.stem_width,
                                                  tap=cfg.keypoints_stride)
            if cfg.keypoints_stride:
                self._grid_dim = embeddings.patch_embedding.tap_channels
        self._scale = float(self.hidden_size) ** 0.5 if cfg.embed_scale else 1.0
        wrap = cfg.image_special_tokens
        self._set_layout(text, self.model.lm_head, start=[self.tokenizer.bos_token_id] if wrap else [],
                         view_prefix=[ids("<fake_token_around_image>"), ids("<global-img>")] if wrap else [],
                         view_suffix=[ids("<fake_token_around_image>")] if wrap else [])

    def embed_images(self, pixel_values: Tensor) -> Tensor:
        n, _, h, w = pixel_values.shape
        patch_mask = pixel_values.new_ones(n, h // self._patch, w // self._patch, dtype=bool)
        vision = self.model.model.vision_model(pixel_values=pixel_values, patch_attention_mask=patch_mask)
        feats = self.model.model.connector(vision.last_hidden_state)
        if self._scale != 1.0:
            feats = feats * torch.tensor(self._scale, dtype=feats.dtype)  # SmolVLA rounds the image scale to the dtype
        if not self.cfg.keypoints:
            return feats
        grid = vision.last_hidden_state
        if self.cfg.keypoints_stride:  # the stem's finer map, kept by its last forward: (N, C, g, g) -> (N, g*g, C)
            grid = self.model.model.vision_model.embeddings.patch_embedding.take_tapped().flatten(2).transpose(1, 2)
        return feats, {"patch_grid": grid}

    def embed_tokens(self, ids: Tensor) -> Tensor:
        emb = super().embed_tokens(ids)
        return emb * self._scale if self._scale != 1.0 else emb

    def components(self) -> dict[str, nn.Module]:
        m = self.model.model
        return {"vision": m.vision_model, "projector": m.connector, "lm": m.text_model}


class ConvStem(nn.Module):
    """(N, 3, S, S) -> (N, dim, S/patch, S/patch) through log2(patch) 3x3 stride-2 convolutions (GroupNorm + GELU)
    and a 1x1 projection; a drop-in for a ViT's patch-embedding convolution. The convolutions have ``width``
    channels doubling per layer, or (``width`` 0) the ViT's ``dim`` halved per layer back from the last.

    ``tap`` (a stride in pixels, 0: none): the forward also keeps the feature map at that stride, which the owner
    takes with :meth:`take_tapped` (the ViT's embedding layer calls the stem, so it cannot return it)."""

    def __init__(self, dim: int, patch: int, width: int = 0, tap: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        depth = patch.bit_length() - 1
        c_in, self.tap_channels = 3, 0
        self._tap_end = 3 * (tap.bit_length() - 1) if tap else 0  # conv, norm, act per stride-2 block
        for i in range(depth):
            c_out = width << i if width else max(8, dim >> (depth - 1 - i))
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.GroupNorm(min(8, c_out), c_out), nn.GELU()]
            if tap and 2 << i == tap:
                self.tap_channels = c_out
            c_in = c_out
        layers.append(nn.Conv2d(c_in, dim, 1))
        self.layers = nn.Sequential(*layers)
        self._tapped: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self._tap_end:
            return self.layers(x)
        self._tapped = self.layers[:self._tap_end](x)
        return self.layers[self._tap_end:](self._tapped)

    def take_tapped(self) -> Tensor:
        out, self._tapped = self._tapped, None
        if out is None:
            raise RuntimeError("ConvStem.take_tapped: no forward has run since the last take")
        return out
