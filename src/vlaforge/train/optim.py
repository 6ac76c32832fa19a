"""AdamW with decoupled weight decay on matrices only, per-part learning rates, and warmup + cosine.

Parts: ``backbone`` (vision tower + language model, LoRA adapters included), ``projector`` (the vision->LM
projector, the proprio encoder and the backbone's own extra tokens) and ``head`` (the action head and DexVLA's
reasoning FiLM). ``OptimConfig.lr_<part>`` overrides ``lr`` for that part (0 freezes it in effect, but prefer
``backbone.freeze``, which also skips its gradients).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vlaforge.train.config import OptimConfig


def parameter_parts(model: nn.Module) -> dict[str, str]:
    """Parameter name -> ``backbone`` | ``projector`` | ``head`` for a :class:`~vlaforge.policy.VLAPolicy`."""
    backbone = getattr(model, "backbone", None)
    parts: dict[str, str] = {}
    comp_ids: dict[int, str] = {}
    if backbone is not None:
        for comp, module in backbone.components().items():
            for p in module.parameters():
                comp_ids.setdefault(id(p), "projector" if comp == "projector" else "backbone")
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            parts[name] = comp_ids.get(id(p), "projector")  # proprio MLP, [ACT] token, added embeddings
        else:
            parts[name] = "head"
    return parts


def make_optimizer(model: nn.Module, cfg: OptimConfig, steps: int) -> tuple[torch.optim.Optimizer, object]:
    parts = parameter_parts(model)
    lrs = {"backbone": cfg.lr_backbone, "projector": cfg.lr_projector, "head": cfg.lr_head}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((parts[name], p.dim() >= 2), []).append(p)
    param_groups = [
        {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0,
         "lr": lrs[part] if lrs[part] is not None else cfg.lr, "name": f"{part}{'' if decay else '_no_decay'}"}
        for (part, decay), ps in sorted(groups.items())]
    opt = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=min(cfg.warmup_steps, steps),
                                                        num_training_steps=steps, min_lr_rate=cfg.min_lr_ratio)
    return opt, sched
