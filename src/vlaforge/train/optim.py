"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine schedule."""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vlaforge.train.config import OptimConfig


def make_optimizer(model: nn.Module, cfg: OptimConfig, steps: int) -> tuple[torch.optim.Optimizer, object]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=min(cfg.warmup_steps, steps),
                                                        num_training_steps=steps, min_lr_rate=cfg.min_lr_ratio)
    return opt, sched
