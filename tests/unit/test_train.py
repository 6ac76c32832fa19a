"""Training loop: exact resume, atomic checkpoints, logs and plots."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from helpers import tiny_policy_config
from vlaforge.config import Paths
from vlaforge.train.config import DataConfig, TrainConfig
from vlaforge.train.trainer import train


def _cfg(root: Path, out: Path, head: str, steps: int, **kw) -> TrainConfig:
    return TrainConfig(policy=tiny_policy_config(head), data=DataConfig(path=str(root), shift_pad=2),
                       out=str(out), steps=steps, batch_size=4, save_every=5, log_every=1, **kw)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("head", ["tokens", "dit"])
def test_resume_continues_with_the_same_losses(dataset, tmp_path, head):
    root, _ = dataset
    straight = tmp_path / "straight"
    train(_cfg(root, straight, head, 10), show_progress=False)
    split = tmp_path / "split"
    train(_cfg(root, split, head, 10, stop_at=5), show_progress=False)  # stops at 5 with a checkpoint ...
    train(_cfg(root, split, head, 10, resume=True), show_progress=False)  # ... and continues to 10
    a, b = _losses(straight), _losses(split)
    assert len(a) == len(b) == 10
    assert a == b  # bit-identical: same data order, augmentation, noise, optimizer and schedule state
    assert a[-1] != a[0]


def test_checkpoints_are_atomic_and_pruned_with_logs_and_plot(dataset, tmp_path):
    root, _ = dataset
    run = tmp_path / "run"
    final = train(_cfg(root, run, "tokens", 12, keep_last=1), show_progress=False)
    ckpts = Paths.checkpoints(run)
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["0000012", "last"]  # step 5 and 10 pruned, no temporary directories left behind
    assert os.readlink(ckpts / "last") == "0000012" and final.name == "0000012"
    for f in ("config.json", "model.safetensors", "processors/inputs.json", "processors/outputs.json",
              "tokenizer/tokenizer.json", "train_state/optimizer.safetensors", "train_state/state.json",
              "train_state/rng.safetensors"):
        assert (final / f).is_file(), f
    assert json.loads((final / "train_state/state.json").read_text())["step"] == 12
    assert (run / "loss.png").stat().st_size > 1000
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 12
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(root, run, "tokens", 12), show_progress=False)


def test_missing_data_or_stats_fail_clearly(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(ValueError, match="--data"):
        train(TrainConfig(policy=tiny_policy_config(), out=str(tmp_path / "x"), steps=1), show_progress=False)
    import shutil

    copy = tmp_path / "nostats"
    shutil.copytree(root, copy)
    (copy / "meta/stats.json").unlink()
    with pytest.raises(Exception, match="vlaforge stats"):
        train(_cfg(copy, tmp_path / "y", "tokens", 1), show_progress=False)


def test_weights_that_do_not_match_the_model_fail_clearly(tmp_path):
    """Checkpoint and resume loading share one check; it names the missing and unexpected tensors."""
    import torch
    from safetensors.torch import save_file

    from vlaforge.policy import load_weights

    save_file({"weight": torch.zeros(2, 3), "extra": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"does not match the model: missing \['bias'\], unexpected \['extra'\]"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "w.safetensors")


def test_budget_fit_lays_the_schedule_out_to_end_at_the_budget(dataset, tmp_path, monkeypatch):
    """A 2000-step recipe on a machine taking 2 s a step with a 0.5-minute budget: the step time is measured (steps
    3-12), the warmup + cosine laid out over the steps that fit (14), and the run ends with its schedule decayed,
    inside the budget, its config recording the fitted length (a --resume continues that schedule)."""
    import vlaforge.train.trainer as trainer

    now = [0.0]

    def clock() -> float:  # two simulated seconds per training step (trainer reads the clock a few times a step)
        return now[0]

    real_step = trainer.train_step

    def step_and_tick(*a, **kw):
        now[0] += 2.0
        return real_step(*a, **kw)

    monkeypatch.setattr(trainer, "_clock", clock)
    monkeypatch.setattr(trainer, "train_step", step_and_tick)
    root, _ = dataset
    out = tmp_path / "fit"
    cfg = _cfg(root, out, "mlp", 2000, max_minutes=0.5, budget="fit").replace(
        save_every=1000, optim=TrainConfig().optim.replace(lr=1e-3, warmup_steps=5, min_lr_ratio=0.0))
    train(cfg, show_progress=False)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["complete"] and not summary["stopped_early"], summary
    assert summary["fitted_steps"] == summary["steps"] == 14 and summary["minutes"] <= 0.5
    assert json.loads((out / "config.json").read_text())["steps"] == summary["steps"]
    from vlaforge.eval.report import budget_line

    assert budget_line(summary).startswith("The budget fitted the schedule (warmup + cosine) to 14 of the recipe")
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] < 0.01 * max(lrs)  # the cosine reached its end; a cut 2000-step schedule would be near its peak

    with pytest.raises(ValueError, match="budget"):
        _cfg(root, out, "mlp", 10, budget="fit")  # fit needs a budget


def _run_planner(planner, step_s, max_steps: int = 200) -> tuple[list[tuple[int, int]], float]:
    """Steps of ``step_s(step)`` seconds on a simulated clock until the latest plan's last step: (the (step, plan)
    pairs, the clock at the end)."""
    t, plans = 0.0, []
    for step in range(1, max_steps):
        t += step_s(step)
        if (plan := planner.update(step, t)) is not None:
            plans.append((step, plan))
        if plans and step >= plans[-1][1]:
            break
    return plans, t


def test_budget_planner_replans_as_the_machine_slows():
    from vlaforge.train.optim import BudgetPlanner

    planner = BudgetPlanner(budget_s=100.0, start=0, steps=1000, margin=1.0, skip=2, window=4, every=10)
    plans, t = _run_planner(planner, lambda step: 0.5 if step < 20 else 1.0)  # twice as slow after step 20
    assert plans[0] == (6, 6 + int((100 - 3.0) / 0.5))  # first plan after 2 skipped + 4 timed steps
    assert plans[-1][1] < plans[0][1] and t <= 100.0 + 1.0  # re-planned down; ends within a step of the budget


def test_budget_planner_replans_every_tenth_of_the_fitted_plan():
    """A budget that fits far fewer steps than configured re-plans at a tenth of that plan (it used to wait a tenth of
    the configured steps, so a run fitted to 85 of 2000 steps never re-planned and the budget cut it at 70)."""
    from vlaforge.train.optim import BudgetPlanner

    planner = BudgetPlanner(budget_s=30.0, start=0, steps=2000, margin=1.0, skip=2, window=4)
    plans, t = _run_planner(planner, lambda step: 0.25 if step < 15 else 0.5)  # twice as slow after step 15
    first = plans[0][1]
    assert first == 6 + int((30 - 1.5) / 0.25) and first < 200  # 120 of the 2000 configured steps fit
    assert len(plans) > 3 and all(b - a <= max(1, first // 10) for (a, _), (b, _) in itertools.pairwise(plans))
    assert plans[-1][1] < first and t <= 30.0 + 0.5  # re-planned down in time; the schedule ends within the budget


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_bf16_training_runs_attention_on_the_math_kernel(precision):
    """Under bf16 on a CPU the training forward's attention avoids torch's CPU flash kernel (its bf16 backward was
    ~10x slower than fp32's, which cancelled bf16's gain); fp32 keeps torch's choice. Gradients stay close to fp32."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from vlaforge.train.runtime import SingleProcess

    runtime = SingleProcess(precision)
    q, k, v = (torch.randn(2, 4, 16, 32, generator=torch.Generator().manual_seed(i), requires_grad=True)
               for i in range(3))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with runtime.autocast():
            out = F.scaled_dot_product_attention(q, k, v)
        out.float().square().sum().backward()
    ops = {e.key for e in prof.key_averages()}
    flash = any("flash_attention" in op for op in ops)
    assert flash == (precision == "fp32"), sorted(op for op in ops if "attention" in op)
    if precision == "bf16":
        assert out.dtype == torch.bfloat16
        ref = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        F.scaled_dot_product_attention(*ref).square().sum().backward()
        for a, b in zip((q, k, v), ref, strict=True):
            torch.testing.assert_close(a.grad, b.grad, atol=0.1, rtol=0.05)


def test_precision_auto_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch):
    import torch

    import vlaforge.utils
    from vlaforge.train.runtime import make_runtime, resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(vlaforge.utils, "cpu_bf16_units", lambda: ["amx_bf16", "amx_tile"])
    assert resolve_precision("auto", cpu) == "bf16" and make_runtime("none", "auto").bf16 == (
        not torch.cuda.is_available() or torch.cuda.is_bf16_supported())
    monkeypatch.setattr(vlaforge.utils, "cpu_bf16_units", lambda: [])
    assert resolve_precision("auto", cpu) == "fp32"
    assert (resolve_precision("bf16", cpu), resolve_precision("fp32", cpu)) == ("bf16", "fp32")  # as asked
    TrainConfig(precision="auto").validate()
    with pytest.raises(ValueError, match="precision.*fp32 \\| bf16 \\| auto.*fp16"):
        TrainConfig(precision="fp16").validate()
