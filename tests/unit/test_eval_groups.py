"""Meta-World as published: difficulty groups, the mean of the group means next to the plain mean, tables."""

from __future__ import annotations

import pytest

from vlaforge.eval.envs.metaworld import DIFFICULTY, INSTRUCTIONS
from vlaforge.eval.report import eval_markdown
from vlaforge.eval.rollout import EpisodeResult, print_table, summarize


def episodes(rates: dict[str, tuple[int, int]]) -> list[EpisodeResult]:
    """A made-up per-task table: task -> (successes, episodes)."""
    return [EpisodeResult(task, seed, seed < wins, 10) for task, (wins, n) in rates.items() for seed in range(n)]


def test_group_means_on_a_made_up_table():
    groups = {"easy": ("a", "b", "c"), "hard": ("d", "e"), "unused": ("z",)}
    s = summarize(episodes({"a": (4, 4), "b": (2, 4), "c": (0, 4), "d": (3, 4)}), groups)
    assert s["mean_success"] == pytest.approx((1 + 0.5 + 0 + 0.75) / 4)  # plain mean over tasks: 0.5625
    assert s["groups"] == {"easy": {"success_rate": 0.5, "tasks": 3, "of": 3},
                           "hard": {"success_rate": 0.75, "tasks": 1, "of": 2}}  # no task of "unused" evaluated
    assert s["group_mean"] == pytest.approx(0.625)  # (0.5 + 0.75) / 2: each group weighs the same
    assert "groups" not in summarize(episodes({"a": (1, 1)}))


def test_difficulty_groups_are_seo_et_al_and_weigh_equally():
    assert {g: len(t) for g, t in DIFFICULTY.items()} == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    every = [t for ts in DIFFICULTY.values() for t in ts]
    assert sorted(every) == sorted(INSTRUCTIONS)  # a partition of the 50 tasks
    s = summarize(episodes({t: (1 if t in DIFFICULTY["easy"] else 0, 1) for t in every}), DIFFICULTY)
    assert s["mean_success"] == pytest.approx(28 / 50) and s["group_mean"] == pytest.approx(0.25)
    assert [g["success_rate"] for g in s["groups"].values()] == [1.0, 0.0, 0.0, 0.0]


def test_tables_show_groups_and_the_experts_beside_the_policy(capsys):
    groups = {"easy": ("a", "b"), "hard": ("c",)}
    policy = summarize(episodes({"a": (1, 2), "b": (2, 2), "c": (0, 2)}), groups)
    expert = summarize(episodes({"a": (2, 2), "b": (2, 2), "c": (1, 2)}), groups)
    md = eval_markdown(policy, expert, "demo", groups)
    assert "| a | easy | 1/2 (50%) |" in md and md.count("| 2/2 (100%) |") == 3  # expert column per task
    assert "| easy | 2/2 | 75% | 100% |" in md and "| hard | 1/1 | 0% | 50% |" in md
    assert "| **mean of group means** | | **38%** | 75% |" in md  # (75 + 0)/2 next to (100 + 50)/2
    assert "| plain mean over tasks | 3 | 50% | 83% |" in md
    print_table(policy, expert, title="demo")
    out = capsys.readouterr().out
    assert "mean of group means" in out and "easy (2/2 tasks)" in out
