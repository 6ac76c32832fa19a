from __future__ import annotations

import dataclasses

import pytest

from vlaforge.cli.common import to_draccus
from vlaforge.config import ConfigError, parse_overrides
from vlaforge.heads.base import HEADS
from vlaforge.registry import Registry, RegistryError


def test_registry_register_get_names_and_did_you_mean():
    reg: Registry = Registry("things")

    @reg.register("alpha")
    class Alpha:
        pass

    assert reg.get("alpha") is Alpha
    assert reg.names() == ["alpha"]
    assert reg.name_of(Alpha) == "alpha"
    with pytest.raises(RegistryError, match="Did you mean 'alpha'"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(type("Other", (), {}))


def test_registry_lazy_import_of_builtins():
    assert {"tokens", "dit"} <= set(HEADS.names())
    assert HEADS.get("dit").__name__ == "DiTHeadConfig"


def test_train_config_json_round_trip_with_type_tags(tmp_path):
    from vlaforge.presets import get_preset
    from vlaforge.train.config import TrainConfig

    cfg = get_preset("quickstart_dit")
    d = cfg.to_dict()
    assert d["policy"]["head"]["type"] == "dit"
    assert d["policy"]["backbone"]["type"] == "smolvlm"
    cfg.to_json(tmp_path / "c.json")
    back = TrainConfig.from_json(tmp_path / "c.json")
    assert back == cfg


def test_validation_error_names_the_field():
    with pytest.raises(ConfigError, match=r"'num_steps'.*\[1, .*got 0"):
        HEADS.get("dit")(num_steps=0)
    with pytest.raises(ValueError, match="num_stepz"):
        from vlaforge.heads.base import HeadConfig

        HeadConfig.from_dict({"type": "dit", "num_stepz": 3})


def test_cli_overrides_change_head_type_and_fields():
    from vlaforge.cli.train import ALIASES, PREFIXES
    from vlaforge.presets import get_preset

    base = get_preset("quickstart_tokens")
    args = to_draccus(["--head.type=dit", "--head.num_steps", "8", "--data", "some/dir", "--steps=12"],
                      aliases=ALIASES, prefixes=PREFIXES)
    cfg = parse_overrides(base, args)
    assert cfg.policy.head.type == "dit" and cfg.policy.head.num_steps == 8
    assert cfg.data.path == "some/dir" and cfg.steps == 12
    assert cfg.policy.backbone == base.policy.backbone  # untouched parts keep the preset's values
    with pytest.raises(ConfigError, match="num_steps"):
        parse_overrides(base, to_draccus(["--head.type=dit", "--head.num_steps=0"], prefixes=PREFIXES))


def test_a_misspelt_override_is_one_line_naming_it_and_the_closest_option(capsys):
    from vlaforge.cli.train import PREFIXES
    from vlaforge.presets import get_preset

    base = get_preset("quickstart_mlp")
    for arg, field, near in (("--backbone.keypoint=3", "policy.backbone.keypoint", "keypoints"),
                             ("--head.tpye=dit", "policy.head.tpye", "type"), ("--stepz=3", "stepz", "steps")):
        with pytest.raises(ConfigError) as err:
            parse_overrides(base, to_draccus([arg], prefixes=PREFIXES))
        assert err.value.field == field and f"did you mean {near!r}" in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="'zzz'.*a known option of TrainConfig, got 1$"):
        parse_overrides(base, ["--zzz=1"])
    assert capsys.readouterr().err == ""  # no usage text


def test_frozen_configs():
    cfg = HEADS.get("tokens")()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_bins = 3


def test_cli_overrides_reach_inside_a_composite_head(capsys):
    from vlaforge.cli.train import PREFIXES
    from vlaforge.presets import get_preset

    base = get_preset("quickstart_tokens")
    cfg = parse_overrides(base, to_draccus(["--head.type=hybrid", "--head.continuous.type=dit",
                                            "--head.continuous.num_steps=3", "--head.mode=ar"], prefixes=PREFIXES))
    assert cfg.policy.head.type == "hybrid" and cfg.policy.head.mode == "ar"
    assert cfg.policy.head.continuous.type == "dit" and cfg.policy.head.continuous.num_steps == 3
    with pytest.raises(SystemExit):  # a composite head cannot nest inside another
        parse_overrides(base, to_draccus(["--head.type=hybrid", "--head.continuous.type=hybrid"],
                                         prefixes=PREFIXES))
    assert "invalid choice: 'hybrid'" in capsys.readouterr().err
