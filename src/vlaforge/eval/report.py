"""Run reports: a Markdown page and a JSON file with the numbers, plus a success bar chart."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_success(summary: dict[str, Any], reference: dict[str, Any] | None, png: Path) -> Path:
    """Per-task success of the policy (with 95 % intervals) next to the scripted experts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(summary["tasks"])
    x = np.arange(len(tasks))
    pol = np.array([summary["tasks"][t]["success_rate"] for t in tasks])
    ci = np.array([summary["tasks"][t]["ci95"] for t in tasks])
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks)), 3.8), dpi=110)
    width = 0.38 if reference else 0.6
    ax.bar(x - (width / 2 if reference else 0), pol, width, label="policy", color="tab:blue",
           yerr=[pol - ci[:, 0], ci[:, 1] - pol], capsize=3)
    if reference:
        ref = np.array([reference["tasks"].get(t, {}).get("success_rate", 0.0) for t in tasks])
        ax.bar(x + width / 2, ref, width, label="scripted expert", color="tab:gray", alpha=0.7)
    mean = summary["mean_success"]
    ax.axhline(mean, color="tab:blue", ls="--", lw=1, label=f"policy mean {mean:.0%}")
    ax.set_xticks(x, [t.removesuffix("-v3") for t in tasks], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title("success per task on unseen seeds (95 % intervals)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def eval_markdown(summary: dict[str, Any], reference: dict[str, Any] | None, title: str,
                  task_groups: dict[str, Sequence[str]] | None = None) -> str:
    """Per-task table (by group where the env has groups) and the means, policy beside the scripted experts."""
    def expert(task: str) -> str:
        r = reference["tasks"].get(task) if reference else None
        return f"{r['successes']}/{r['episodes']} ({r['success_rate']:.0%})" if r else "-"

    groups = summary.get("groups") or {}
    group_of = {t: g for g, members in (task_groups or {}).items() for t in members}
    lines = [f"# {title}", "", "| task | group | policy | 95 % CI | mean steps | scripted expert (same seeds) |",
             "|---|---|---|---|---|---|"]
    for task, t in summary["tasks"].items():
        lines.append(f"| {task} | {group_of.get(task, '')} | {t['successes']}/{t['episodes']} "
                     f"({t['success_rate']:.0%}) | {t['ci95'][0]:.0%}–{t['ci95'][1]:.0%} | {t['mean_steps']:.0f} | "
                     f"{expert(task)} |")
    ref_pct = lambda v: f"{v:.0%}" if v is not None else "-"  # noqa: E731
    lines += ["", "| mean | tasks | policy | scripted expert |", "|---|---|---|---|",
              f"| plain mean over tasks | {len(summary['tasks'])} | {summary['mean_success']:.0%} | "
              f"{ref_pct(reference['mean_success'] if reference else None)} |"]
    for name, g in groups.items():
        ref = ((reference or {}).get("groups") or {}).get(name, {}).get("success_rate")
        lines.append(f"| {name} | {g['tasks']}/{g['of']} | {g['success_rate']:.0%} | {ref_pct(ref)} |")
    if groups:
        lines.append(f"| **mean of group means** | | **{summary['group_mean']:.0%}** | "
                     f"{ref_pct((reference or {}).get('group_mean'))} |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    """Where a result was measured: the CPU model and its bf16 units (AMX / AVX512-BF16 decide whether bf16
    autocast pays; from /proc/cpuinfo where there is one), cores, threads, versions."""
    import torch

    from vlaforge.utils import cpu_bf16_units, cpu_info

    return {"cpu": cpu_info().get("model name") or platform.processor() or platform.machine(),
            "bf16_units": cpu_bf16_units(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


def budget_line(train: dict[str, Any]) -> str:
    """What the time budget did to a training run (from its train_summary.json)."""
    steps, planned, fitted = train["steps"], train.get("planned_steps", train["steps"]), train.get("fitted_steps")
    if train.get("stopped_early"):
        return f"The time budget stopped it at step {steps} of {planned}, before its schedule ended."
    if fitted is not None and fitted < planned:
        return (f"The budget fitted the schedule (warmup + cosine) to {fitted} of the recipe's {planned} steps "
                f"(step time measured at the start); it ran to its end.")
    return f"All {planned} steps of the schedule ran within the budget."


def write_report(out: Path, data: dict[str, Any]) -> Path:
    """``out/report.md`` + ``out/report.json`` from the quick start's collected numbers."""
    s, ref = data["eval"], data.get("expert")
    rel = lambda p: os.path.relpath(p, out) if p else None  # noqa: E731
    lines = [
        "# vlaforge quick start report", "",
        f"Policy: `{data['preset']}` ({data['params'] / 1e6:.1f} M parameters, random init, trained from scratch) "
        f"on {data['dataset']['episodes']} scripted demos ({data['dataset']['frames']} frames) of "
        f"{len(s['tasks'])} Meta-World tasks. The policy acts from the two camera images, the instruction and the "
        "proprio state (hand position + gripper) only.", "",
        f"**Mean success: {s['mean_success']:.0%}** over {data['eval_episodes']} evaluation episodes per task "
        f"(seeds {data['seed_start']}+, disjoint from the demo seeds); target 50 %.", "",
        "| task | instruction | policy | 95 % CI | scripted expert (same seeds) |", "|---|---|---|---|---|",
    ]
    for task, t in s["tasks"].items():
        r = ref["tasks"].get(task) if ref else None
        expert = f"{r['successes']}/{r['episodes']}" if r else "-"
        lines.append(f"| {task} | {data['instructions'].get(task, '')} | {t['successes']}/{t['episodes']} | "
                     f"{t['ci95'][0]:.0%}–{t['ci95'][1]:.0%} | {expert} |")
    mean_ref = f"{ref['mean_success']:.0%}" if ref else "-"
    lines += [f"| **mean** | | **{s['mean_success']:.0%}** | | {mean_ref} |", ""]
    lines += ["![success per task](" + rel(data["success_png"]) + ")", "",
              "## Training", "", f"{data['train']['steps']} steps (batch {data['batch_size']}"
              f"{', bf16 autocast' if data['train'].get('precision') == 'bf16' else ''}), "
              f"{data['train']['minutes']:.1f} min; final loss {data['final_loss']:.4f}. " + budget_line(data["train"]),
              "",
              "![loss curve](" + rel(data["loss_png"]) + ")", "", "## Videos", ""]
    lines += [f"- [{Path(v).name}]({rel(v)})" for v in data["videos"]] or ["(none)"]
    t = data["timings"]
    lines += ["", "## Time", "", "| phase | minutes |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
    m = data["machine"]
    lines += ["", f"Machine: {m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
              f"Python {m['python']}.", "", "Reproduce: `" + data["command"] + "`", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str))
    return md
