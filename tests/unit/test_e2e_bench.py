"""bench/e2e.py: an evaluation's eval.json read back, and its table with the receding-horizon and ensembled runs side
by side and the scripted expert beside them. No training here (the bench's results are its end-to-end run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_bench


@pytest.fixture(scope="module")
def e2e():
    return load_bench("e2e")


def _eval(path: Path, rates: dict[str, float], expert: dict[str, float] | None = None) -> Path:
    tasks = {t: {"success_rate": r, "successes": int(10 * r), "episodes": 10, "ci95": [r / 2, min(1.0, r + 0.2)],
                 "mean_steps": 100.0, "extra": "dropped"} for t, r in rates.items()}
    ev = {"mean_success": sum(rates.values()) / len(rates), "tasks": tasks, "episodes": 10}
    if expert:
        ev["expert"] = {"mean_success": sum(expert.values()) / len(expert),
                        "tasks": {t: {"success_rate": r} for t, r in expert.items()}}
    path.write_text(json.dumps(ev))
    return path


def test_eval_rows_and_table(e2e, tmp_path):
    plain = e2e.eval_rows(_eval(tmp_path / "a.json", {"cube": 0.5, "insert": 0.0}, {"cube": 1.0, "insert": 0.5}))
    ens = e2e.eval_rows(_eval(tmp_path / "b.json", {"cube": 0.7, "insert": 0.1}))
    assert plain["tasks"]["cube"] == {"success_rate": 0.5, "successes": 5, "episodes": 10, "ci95": [0.25, 0.7],
                                      "mean_steps": 100.0}
    ev = json.loads((tmp_path / "b.json").read_text())
    ev["tasks"]["cube"]["mean_score"] = 0.625  # a graded benchmark's score (PushT's coverage) travels along
    assert "mean_score" not in ens["tasks"]["cube"]
    (tmp_path / "c.json").write_text(json.dumps(ev))
    assert e2e.eval_rows(tmp_path / "c.json")["tasks"]["cube"]["mean_score"] == 0.625
    assert plain["expert"] == {"mean_success": 0.75, "tasks": {"cube": 1.0, "insert": 0.5}} and "expert" not in ens
    result = {"env": "aloha", "demos": 25, "steps": 1000, "batch_size": 32, "episodes": 10,
              "preset": "quickstart_tokens", "set": ["head.type=mlp"], "params": 7_150_000, "final_loss": 0.01234,
              "evals": {"receding horizon": plain, "ensemble K=32": ens},
              "timings": {"collect": {"wall_minutes": 10.04, "cpu_minutes": 9.0},
                          "train": {"wall_minutes": 20.0, "cpu_minutes": 19.96}},
              "command": "python bench/e2e.py --env aloha"}
    assert e2e.markdown(result) == (
        "End to end on `aloha` (25 scripted demos per task, 1000 training steps of batch 32, 10 episodes per task): "
        "success % (95 % CI)\n\n"
        "| task | receding horizon | ensemble K=32 | scripted expert |\n"
        "|---|---:|---:|---:|\n"
        "| cube | 50 (25–70) | 70 (35–90) | 100 |\n"
        "| insert | 0 (0–20) | 10 (5–30) | 50 |\n"
        "| mean | **25** | **40** | 75 |\n\n"
        "| stage | wall (min) | CPU (min) |\n|---|---:|---:|\n"
        "| collect | 10.0 | 9.0 |\n| train | 20.0 | 20.0 |\n\n"
        "Policy: `quickstart_tokens` --head.type=mlp; 7.2 M parameters; final loss 0.0123.\n"
        "Command: `python bench/e2e.py --env aloha`\n")
