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
    trainable = [p for group in param_groups for p in group["params"]]
    fused = can_fuse(trainable) if cfg.fused is None else cfg.fused
    opt = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)
    return opt, _schedule(opt, cfg, steps)


def can_fuse(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW takes these parameters: plain floating tensors on CPU or CUDA."""
    return bool(params) and all(type(p) is nn.Parameter and p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                for p in params)


def _schedule(opt: torch.optim.Optimizer, cfg: OptimConfig, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=min(cfg.warmup_steps, steps),
                                                       num_training_steps=steps, min_lr_rate=cfg.min_lr_ratio)


def relay_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: OptimConfig, steps: int) -> None:
    """Lay ``scheduler``'s warmup + cosine out over ``steps`` instead, keeping its position (the caller sets the
    learning rates for that position); the step functions are the ones :func:`make_optimizer` builds."""
    fn = _schedule(torch.optim.SGD([torch.zeros(1)], lr=1.0), cfg, steps).lr_lambdas[0]
    scheduler.lr_lambdas = [fn] * len(scheduler.lr_lambdas)


class BudgetPlanner:
    """How many steps fit a wall-clock budget: the first ``skip`` steps (start-up) are not timed, then the step
    time over the last ``window`` steps gives the steps left; re-planned every ``every`` steps (default: a tenth of
    the latest plan) because a shared machine's speed drifts. Plans never exceed ``steps`` nor go below the current
    step + 1."""

    def __init__(self, budget_s: float, start: int, steps: int, margin: float = 0.98, skip: int = 2,
                 window: int = 10, every: int | None = None) -> None:
        self.budget_s, self.start, self.steps, self.margin = budget_s, start, steps, margin
        self.skip, self.window = skip, window
        self.every = every  # None: a tenth of the latest plan (a budget that fits far fewer steps re-plans as often)
        self.times: list[tuple[int, float]] = []
        self.plans: list[tuple[int, int]] = []

    def update(self, step: int, elapsed_s: float) -> int | None:
        """Record that ``step`` ended ``elapsed_s`` after the start; a new total when it is time to (re)plan."""
        if step - self.start < self.skip or (self.plans and step >= self.plans[-1][1]):
            return None  # start-up, or the planned schedule is done: it ends here, not one step later
        self.times.append((step, elapsed_s))
        self.times = self.times[-(self.window + 1):]
        first = not self.plans and len(self.times) > self.window
        if not first and not (self.plans and step - self.plans[-1][0] >= self._every()):
            return None
        (s0, t0), (s1, t1) = self.times[0], self.times[-1]
        per_step = (t1 - t0) / max(s1 - s0, 1)
        left = self.margin * self.budget_s - elapsed_s
        total = int(min(self.steps, max(step + 1, step + left // max(per_step, 1e-9))))
        self.plans.append((step, total))
        return total

    def _every(self) -> int:
        return self.every or max(1, (self.plans[-1][1] - self.start) // 10)
