"""Prismatic backbone (HybridVLA / OpenVLA): DINOv2 + SigLIP fused patch features, an MLP projector, a Llama LM.

Paper: Prismatic VLMs (Karamcheti et al., 2024), OpenVLA (Kim et al., 2024); reference: ``prismatic/models/
backbones/vision/dinosiglip_vit.py`` and ``util/nn_utils.py`` (``FusedMLPProjector``). Assembled here from
transformers' own ``Dinov2Model`` / ``Dinov2WithRegistersModel``, ``SiglipVisionModel`` and a causal LM:
both ViTs see the same image (each with its own normalization), the second-to-last layer's patch tokens
(prefix and register tokens dropped) are concatenated channel-wise and projected by
``Linear(d, 4d) - GELU - Linear(4d, D) - GELU - Linear(D, D)``.

``pretrained=DIR`` expects sub-directories written by ``save_pretrained``: ``dino/``, ``siglip/``, ``llm/`` (with
its tokenizer) and optionally ``projector.safetensors``. OpenVLA's released weights are timm/Prismatic
checkpoints, not in this layout; converting them is a separate step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_model
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, SiglipVisionModel

from vlaforge.backbones.base import (
    BACKBONES,
    DTYPES,
    Backbone,
    BackboneConfig,
    Built,
    from_pretrained_checked,
    load_tokenizer,
    read_hf_config,
    report_dtype,
    stored_dtype,
    with_token_ids,
)
from vlaforge.backbones.sizes import LM_135M, VIT_B, VOCAB
from vlaforge.backbones.tokenizer import build_tokenizer

DINO_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SIGLIP_MEAN_STD = ((0.5,) * 3, (0.5,) * 3)
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "dino": dict(model_type="dinov2_with_registers", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                     num_attention_heads=4, image_size=32, patch_size=8, num_register_tokens=4),
        "siglip": dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=4, image_size=32, patch_size=8),
        "llm": dict(model_type="llama", hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=1024, max_position_embeddings=2048),
    },
    "256m": {
        "dino": dict(VIT_B, model_type="dinov2_with_registers", image_size=224, patch_size=14, num_register_tokens=4),
        "siglip": dict(VIT_B, model_type="siglip_vision_model", image_size=224, patch_size=14),
        "llm": dict(LM_135M, model_type="llama", vocab_size=VOCAB),
    },
}


@BACKBONES.register("prismatic")
@dataclass(frozen=True)
class PrismaticBackboneConfig(BackboneConfig):
    """Prismatic DINOv2 + SigLIP + Llama (HybridVLA, OpenVLA); sizes tiny | 256m, or pretrained=DIR."""

    sizes: ClassVar[dict[str, Any]] = SIZES

    prompt_template: str = "In: What action should the robot take to {task}?\nOut:"

    @classmethod
    def backbone_class(cls) -> type[Backbone]:
        return PrismaticBackbone


def _config(d: dict[str, Any]) -> Any:
    d = dict(d)
    return AutoConfig.for_model(d.pop("model_type"), **d)


class PrismaticModel(nn.Module):
    """The three transformers models plus the fused projector, as one module."""

    def __init__(self, dino: nn.Module, siglip: nn.Module, llm: nn.Module) -> None:
        super().__init__()
        self.dino, self.siglip, self.llm = dino, siglip, llm
        vis = dino.config.hidden_size + siglip.config.hidden_size
        d = llm.config.hidden_size
        self.projector = nn.Sequential(nn.Linear(vis, 4 * vis), nn.GELU(), nn.Linear(4 * vis, d), nn.GELU(),
                                       nn.Linear(d, d))

    @classmethod
    def from_configs(cls, dino: dict, siglip: dict, llm: dict) -> PrismaticModel:
        return cls(AutoModel.from_config(_config(dino)), SiglipVisionModel(_config(siglip)),
                   AutoModelForCausalLM.from_config(_config(llm)))

    def configs(self) -> dict[str, dict]:
        out = {}
        for name in ("dino", "siglip", "llm"):
            c = getattr(self, name).config
            out[name] = {"model_type": c.model_type, **c.to_diff_dict()}
        return out

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        for m in (self.dino, self.siglip, self.llm):
            m.activation_checkpointing_enable(**kwargs)

    def activation_checkpointing_disable(self) -> None:
        for m in (self.dino, self.siglip, self.llm):
            m.activation_checkpointing_disable()

    def resize_token_embeddings(self, n: int) -> Any:
        return self.llm.resize_token_embeddings(n)

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()


class PrismaticBackbone(Backbone):
    def _load(self, cfg: PrismaticBackboneConfig, assets: Path | None) -> Built:
        dtype = DTYPES[cfg.dtype]
        identity = ((0.0,) * 3, (1.0,) * 3)  # each ViT normalizes its own input in embed_images
        if assets is not None:
            if cfg.arch is None:
                raise ValueError("backbone config has no 'arch'; cannot rebuild from a checkpoint")
            model = PrismaticModel.from_configs(**cfg.arch["configs"])
            return Built(model.to(dtype), load_tokenizer(assets), *identity)
        if cfg.pretrained is not None:
            path = Path(cfg.pretrained)
            missing = [d for d in ("dino", "siglip", "llm") if not (path / d / "config.json").is_file()]
            if missing:
                hint = (" (a released OpenVLA / Prismatic checkpoint: convert it with `vlaforge import openvla`)"
                        if (path / "config.json").is_file() else "")
                raise FileNotFoundError(f"backbone.pretrained: {path} lacks {missing} (sub-directories written by "
                                        f"save_pretrained){hint}")
            hf = read_hf_config(path / "dino", ("dinov2", "dinov2_with_registers"), "prismatic (dino/)")
            read_hf_config(path / "siglip", ("siglip_vision_model",), "prismatic (siglip/)")
            llm_cfg = json.loads((path / "llm" / "config.json").read_text())
            model = PrismaticModel(from_pretrained_checked(AutoModel, path / "dino", dtype),
                                   from_pretrained_checked(SiglipVisionModel, path / "siglip", dtype),
                                   from_pretrained_checked(AutoModelForCausalLM, path / "llm", dtype))
            report_dtype(path, stored_dtype(llm_cfg) or stored_dtype(hf), cfg)
            if (path / "projector.safetensors").is_file():
                missing, unexpected = load_model(model.projector, str(path / "projector.safetensors"), strict=False)
                if missing or unexpected:
                    raise ValueError(f"backbone.pretrained: {path / 'projector.safetensors'} does not match the "
                                     f"projector: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
            return Built(model.to(dtype), load_tokenizer(path / "llm"), *identity)
        size = cfg.sizes[cfg.size]
        tokenizer = build_tokenizer()
        image = {"image_size": cfg.image_size} if cfg.image_size else {}
        llm = with_token_ids(size["llm"], tokenizer, tie_word_embeddings=True)
        model = PrismaticModel.from_configs({**size["dino"], **image}, {**size["siglip"], **image}, llm)
        return Built(model.to(dtype), tokenizer, *identity)

    def _init_family(self) -> None:
        m: PrismaticModel = self.model
        if m.dino.config.patch_size != m.siglip.config.patch_size or \
                m.dino.config.image_size != m.siglip.config.image_size:
            raise ValueError("prismatic: DINOv2 and SigLIP must share image and patch size to fuse patch features")
        self.hidden_size = m.llm.config.hidden_size
        self.image_size = m.siglip.config.image_size
        self._dino_prefix = 1 + getattr(m.dino.config, "num_register_tokens", 0)
        for name, (mean, std) in (("dino", DINO_MEAN_STD), ("siglip", SIGLIP_MEAN_STD)):
            self.register_buffer(f"_{name}_mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
            self.register_buffer(f"_{name}_std", torch.tensor(std).view(3, 1, 1), persistent=False)
        self._set_layout(m.llm.model, m.llm.lm_head, start=[self.tokenizer.bos_token_id], view_prefix=[],
                         view_suffix=[])

    def arch(self) -> dict[str, Any]:
        return {"configs": self.model.configs()}

    def export_pretrained(self, directory: str | Path) -> Path:
        """``dino/``, ``siglip/``, ``llm/`` (+ tokenizer) via save_pretrained, and ``projector.safetensors``."""
        from safetensors.torch import save_model
        from transformers import BitImageProcessorPil, SiglipImageProcessorPil

        directory = Path(directory)
        m: PrismaticModel = self.model
        m.dino.save_pretrained(str(directory / "dino"))
        BitImageProcessorPil(image_mean=list(DINO_MEAN_STD[0]), image_std=list(DINO_MEAN_STD[1])).save_pretrained(
            str(directory / "dino"))
        m.siglip.save_pretrained(str(directory / "siglip"))
        SiglipImageProcessorPil().save_pretrained(str(directory / "siglip"))
        m.llm.save_pretrained(str(directory / "llm"))
        self.tokenizer.save_pretrained(str(directory / "llm"))
        save_model(m.projector, str(directory / "projector.safetensors"))
        return directory

    def embed_images(self, pixel_values: Tensor) -> Tensor:
        m: PrismaticModel = self.model
        dino_in = (pixel_values - self._dino_mean) / self._dino_std
        sig_in = (pixel_values - self._siglip_mean) / self._siglip_std
        dino = m.dino(pixel_values=dino_in, output_hidden_states=True).hidden_states[-2][:, self._dino_prefix:]
        sig = m.siglip(pixel_values=sig_in, output_hidden_states=True).hidden_states[-2]
        return m.projector(torch.cat([dino, sig], dim=-1))

    def components(self) -> dict[str, nn.Module]:
        m: PrismaticModel = self.model
        return {"vision": nn.ModuleList([m.dino, m.siglip]), "projector": m.projector, "lm": m.llm}
