"""LoRA adapters: list them and fold them into the base weights (merge-and-export to a plain checkpoint).

A policy built with ``backbone.lora`` carries peft LoRA layers inside its language model (injected with
``peft.inject_adapter_in_model``, so there is no ``PeftModel`` wrapper to call ``merge_and_unload`` on).
:func:`merge_lora` does what ``merge_and_unload`` does, on the policy: every peft tuner layer merges its adapters
into its base layer with peft's own ``merge`` (``W += B @ A * scaling``, ``safe_merge`` checks for NaNs), then
the tuner layer is replaced by that base layer. The result has the state-dict keys of a policy built without
LoRA, and its config has ``backbone.lora = None``, so ``save_pretrained`` writes a checkpoint that
``VLAPolicy.from_pretrained`` loads without peft.

A QLoRA policy (``lora.quantize`` = nf4/fp4) merges into float: each 4-bit base is dequantized, the adapters'
``B @ A * scaling`` added, and a plain ``nn.Linear`` put in its place (peft's own bnb merge would re-quantize the
sum to 4 bits, losing the adapters' small update in the rounding); the LM's other 4-bit layers are dequantized too.
The merged policy has ``lora = None`` and needs neither peft nor bitsandbytes.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from vlaforge.policy import VLAPolicy


def _tuner_layers(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost peft tuner layers under ``root`` (not those nested inside another tuner layer)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: list[tuple[str, nn.Module]] = []
    for name, module in root.named_modules():
        if isinstance(module, BaseTunerLayer) and not any(name.startswith(f"{n}.") for n, _ in found):
            found.append((name, module))
    return found


def lora_parameter_names(module: nn.Module) -> list[str]:
    """Names of the LoRA adapter parameters (``lora_A`` / ``lora_B`` / ...) in ``module``."""
    return [n for n, _ in module.named_parameters() if "lora_" in n]


def merge_lora(policy: VLAPolicy, inplace: bool = False) -> VLAPolicy:
    """Fold the LoRA adapters into the base weights and remove them; the returned policy has ``lora = None``.

    With ``inplace=False`` (the default) ``policy`` is left untouched and a merged copy is returned. The merged
    policy computes the same function (up to float rounding); its VLM parameters train as in a policy built
    without LoRA (everything except ``backbone.freeze``).
    """
    if policy.cfg.backbone.lora is None:
        raise ValueError("merge_lora: the policy has no LoRA adapters (backbone.lora is not set)")
    if not inplace:
        policy = copy.deepcopy(policy)
    layers = _tuner_layers(policy.backbone.model)
    if not layers:
        raise ValueError("merge_lora: backbone.lora is set but the model holds no peft LoRA layers")
    from vlaforge.quantize import dequantize_all, dequantize_weight, dequantized_linear, is_4bit

    for name, layer in layers:
        parent_name, _, child = name.rpartition(".")
        parent = policy.backbone.model.get_submodule(parent_name)
        base = layer.get_base_layer()
        if is_4bit(base):
            w = dequantize_weight(base)
            delta = sum(layer.get_delta_weight(a).to(w.dtype) for a in layer.active_adapters)
            merged_w = w + delta
            if not torch.isfinite(merged_w).all():
                raise ValueError(f"merge_lora: NaN/inf in the merged weight of {name}")
            setattr(parent, child, dequantized_linear(base, merged_w))
        else:
            layer.merge(safe_merge=True)
            setattr(parent, child, base)
    dequantize_all(policy.backbone.model)  # 4-bit layers without an adapter
    for mod in policy.backbone.model.modules():
        if hasattr(mod, "peft_config"):
            del mod.peft_config
    left = lora_parameter_names(policy)
    if left:
        raise RuntimeError(f"merge_lora: adapter parameters left after merging: {left[:5]}")
    backbone_cfg = policy.cfg.backbone.replace(lora=None)
    policy.cfg = policy.cfg.replace(backbone=backbone_cfg)
    policy.backbone.cfg = backbone_cfg
    policy.backbone.model.requires_grad_(True)  # what LoRA froze
    parts = policy.backbone.components()
    for part in backbone_cfg.freeze:
        parts[part].requires_grad_(False)
    return policy
