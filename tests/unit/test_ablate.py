"""bench/ablate_quickstart.py (issue 15): every variant's overrides parse as ``vlaforge train`` parses them and change
what they say; bad variant names or overrides are one line; the results table. No training here.

The bench is a standalone script (bench/ is not a package), imported by path (helpers.load_bench).
"""

from __future__ import annotations

import pytest

from helpers import load_bench
from vlaforge.presets import get_preset
from vlaforge.train.config import TrainConfig

COMMON = ["--data.path=/nonexistent/data", "--max_minutes=20", "--budget=fit", "--seed=0"]


@pytest.fixture(scope="module")
def ablate():
    return load_bench("ablate_quickstart")


def _at(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def _same(value, text: str) -> bool:
    if isinstance(value, bool):
        return str(value).lower() == text.lower()
    if isinstance(value, int | float):
        return float(value) == float(text)
    return str(value) == text


def test_every_variant_parses_and_changes_the_fields_it_names(ablate):
    configs = {name: ablate.resolve(name, COMMON) for name in ablate.VARIANTS}  # ~0.25 s each: draccus' parser
    base = configs[ablate.BASELINE]
    assert isinstance(base, TrainConfig) and base.budget == "fit" and base.max_minutes == 20
    assert base.policy.head.type == "tokens"  # the quick-start preset
    base_tree = base.to_dict()
    for name, variant in ablate.VARIANTS.items():
        cfg = configs[name]
        assert isinstance(cfg, TrainConfig), name
        tree = cfg.to_dict()
        own = ablate.train_args(variant, [])
        assert len(own) == len(variant.overrides), name
        if variant.preset != ablate.PRESET:  # another architecture, on the quick start's optimisation and chunking
            assert get_preset(variant.preset).policy.head.type != base.policy.head.type, name
            for key in ("batch_size", "steps", "optim.lr", "optim.warmup_steps", "optim.min_lr_ratio",
                        "policy.chunk", "policy.exec_steps"):
                assert _at(tree, key) == _at(base_tree, key), (name, key)
            continue
        for arg in own:
            key, _, value = arg.removeprefix("--").partition("=")
            assert _same(_at(tree, key), value), (name, key, _at(tree, key), value)
            assert _at(base_tree, key) != _at(tree, key), (name, key, "same as the baseline")
        untouched = [k for k in ("data.path", "max_minutes", "seed") if k not in {a[2:].partition("=")[0] for a in own}]
        for key in untouched:  # the shared settings stay shared
            assert _at(tree, key) == _at(base_tree, key), (name, key)
    assert configs["budget_stop"].budget == "stop"  # a variant's option wins over the common one
    assert configs["img192"].policy.backbone.image_size == 192 and configs["head_mlp"].policy.head.type == "mlp"
    assert configs["pi0_tiny"].policy.head.type == "pi0" and configs["pi0_tiny"].policy.backbone.image_size == 96
    assert ablate.recorded_args("pi0_tiny", ["--x=1"]) == ["preset=pi0_tiny", "--x=1"]
    assert ablate.recorded_args("head_mlp", ["--x=1"]) == ["--x=1"]  # the default preset's runs keep their record


def test_variant_selection_and_bad_overrides_are_one_line(ablate, monkeypatch):
    assert ablate.select("all")[0] == ablate.BASELINE and len(ablate.select("all")) == len(ablate.VARIANTS)
    assert ablate.select("head_mlp,baseline") == ["baseline", "head_mlp"]  # table order
    assert set(ablate.select("chunk")) == {n for n, v in ablate.VARIANTS.items() if v.group == "chunk"}
    with pytest.raises(ValueError, match="--variants: 'head_mpl' is not a variant or group"):
        ablate.select("baseline,head_mpl")
    monkeypatch.setitem(ablate.VARIANTS, "typo", ablate.Variant("x", ("--head.tpye=mlp",), ""))
    monkeypatch.setitem(ablate.VARIANTS, "range", ablate.Variant("x", ("--data.shift_pad=-1",), ""))
    typo = "'policy.head.tpye': expected a known option of TokenHeadConfig (did you mean 'type'?)"
    for name, field in (("typo", typo), ("range", "'shift_pad'")):
        with pytest.raises(ValueError) as err:
            ablate.resolve(name, COMMON)
        message = str(err.value)
        assert message.startswith(f"variant {name} [") and field in message and "\n" not in message, message


def test_markdown_table(ablate):
    row = {"status": "done", "group": "", "what": "", "steps": 100, "params": 6_400_000, "minutes": 19.5}
    results = {
        "tasks": ["reach", "push"], "episodes": 10, "seed_start": 100000, "budget_minutes": 20.0,
        "preset": "quickstart_tokens",
        "variants": {
            "head_mlp": {**row, "overrides": ["--head.type=mlp"], "success": {"reach": 0.5, "push": 0.1},
                         "mean_success": 0.3, "steps": 120},
            "baseline": {**row, "overrides": [], "success": {"reach": 0.2, "push": 0.2}, "mean_success": 0.2},
            "no_shift": {"status": "failed", "stage": "train", "error": "exit 1: boom",
                         "overrides": ["--data.shift_pad=0"]},
            "pi0_tiny": {**row, "preset": "pi0_tiny", "overrides": ["--lr=3e-4"],
                         "success": {"reach": 0.2, "push": 0.4}, "mean_success": 0.3, "params": 1_400_000},
        },
        "expert": {"success": {"reach": 1.0, "push": 0.9}, "mean_success": 0.95},
    }
    assert ablate.markdown_table(results) == (
        "Quick-start ablation (issue 15): success % on 10 unseen-seed episodes per task (seeds 100000+), "
        "20 min training budget each, preset quickstart_tokens; (+/-) = change vs baseline in points.\n\n"
        "| variant | reach | push | mean | steps | params (M) | train min | overrides |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|\n"
        "| baseline | 20 | 20 | 20 | 100 | 6.4 | 19.5 | (preset) |\n"
        "| head_mlp | 50 (+30) | 10 (-10) | 30 (+10) | 120 | 6.4 | 19.5 | `--head.type=mlp` |\n"
        "| no_shift | - | - | failed (train) | - | - | - | `--data.shift_pad=0` |\n"
        "| pi0_tiny | 20 (+0) | 40 (+20) | 30 (+10) | 100 | 1.4 | 19.5 | preset `pi0_tiny` `--lr=3e-4` |\n"
        "| scripted expert | 100 | 90 | 95 |  |  |  | same seeds |\n")


def test_a_finished_variant_is_read_back_and_a_work_folder_keeps_its_settings(ablate, tmp_path):
    vdir = tmp_path / "head_mlp"
    (vdir / "train").mkdir(parents=True)
    (vdir / "eval").mkdir()
    (vdir / "train" / "train_summary.json").write_text(
        '{"steps": 812, "fitted_steps": 812, "complete": true, "params": 6394688, "minutes": 19.6}')
    (vdir / "train" / "metrics.jsonl").write_text('{"step": 810, "loss": 0.5}\n{"step": 812, "loss": 0.25}\n')
    (vdir / "eval" / "eval.json").write_text(
        '{"mean_success": 0.25, "tasks": {"reach-v3": {"success_rate": 0.5}, "push-v3": {"success_rate": 0.0}}}')
    assert ablate.train_done(vdir / "train") and not ablate.train_done(tmp_path / "baseline" / "train")
    row = ablate.variant_result("head_mlp", vdir, ["reach-v3", "push-v3"])
    assert row["status"] == "done" and row["overrides"] == ["--head.type=mlp"]
    assert row["success"] == {"reach-v3": 0.5, "push-v3": 0.0} and row["mean_success"] == 0.25
    assert (row["steps"], row["params"], row["final_loss"]) == (812, 6394688, 0.25)

    settings = {"data": "/d", "tasks": ["reach-v3"], "episodes": 10, "minutes": 20.0, "seed": 0}
    ablate.check_work(tmp_path, settings)
    ablate.check_work(tmp_path, settings)  # the same sweep continues
    with pytest.raises(ValueError, match="its runs were made with minutes=20.0, got 5.0; choose another --work"):
        ablate.check_work(tmp_path, {**settings, "minutes": 5.0})
    args = ablate.train_args(ablate.VARIANTS["head_mlp"], ["--max_minutes=20"])
    ablate.check_variant_dir("head_mlp", vdir, args)
    ablate.check_variant_dir("head_mlp", vdir, args)
    with pytest.raises(ValueError, match=r"variant head_mlp: .* was trained with .*; remove .* to run it again"):
        ablate.check_variant_dir("head_mlp", vdir, [*args, "--policy.head.hidden=64"])
