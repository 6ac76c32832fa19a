"""Checkpoint loading integrity (issue 14): one-line load errors naming the file, manifest hashes against
tampering, config.json contradicting the weights / processors, typed configs, NaN token logits refused."""

from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path

import pytest
import torch

from helpers import tiny_policy_config
from vlaforge.config import ConfigError, parse_overrides
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.policy import PolicyConfig, VLAPolicy
from vlaforge.types import image_key


def _save(reader, path: Path, **head_kw) -> Path:
    policy = VLAPolicy(tiny_policy_config(**head_kw).with_robot(reader.meta.robot_spec()))
    policy.make_pipelines(reader.meta.stats, reader.meta.robot_spec())
    return policy.save_pretrained(path)


@pytest.fixture(scope="module")
def saved(dataset, tmp_path_factory):
    reader = LeRobotDataset(dataset[0], chunk=4)
    root = tmp_path_factory.mktemp("ckpts")
    return {"uniform": _save(reader, root / "uniform"), "quantile": _save(reader, root / "quantile",
                                                                         binning="quantile"), "reader": reader}


@pytest.fixture
def ckpt(saved, tmp_path):
    return Path(shutil.copytree(saved["uniform"], tmp_path / "ckpt"))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _header(path: Path) -> tuple[dict, bytes, int]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw, n


def _write_header(path: Path, header: dict, raw: bytes, n: int) -> None:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))  # same length: only the header changes
    assert len(text) == n
    path.write_bytes(raw[:8] + text + raw[8 + n:])


def _flip_dtype(path: Path) -> None:
    header, raw, n = _header(path)
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    header[name]["dtype"] = "I32"
    _write_header(path, header, raw, n)


def _swap_offsets(path: Path) -> None:
    header, raw, n = _header(path)
    by_size: dict[tuple, list[str]] = {}
    for k, v in header.items():
        if k != "__metadata__":
            by_size.setdefault((v["dtype"], tuple(v["shape"])), []).append(k)
    a, b = next(names for names in by_size.values() if len(names) >= 2)[:2]
    header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]
    _write_header(path, header, raw, n)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {  # case -> (edit of the checkpoint, the file the message must name)
    "weights_header_byte": (lambda d: (d / "model.safetensors").write_bytes(
        bytes([*(d / "model.safetensors").read_bytes()[:20], 0xFF, *(d / "model.safetensors").read_bytes()[21:]])),
        "model.safetensors"),
    "weights_truncated": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors"),
    "weights_missing": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
    "config_not_json": (lambda d: (d / "config.json").write_text("{not json"), "config.json"),
    "config_truncated": (lambda d: _truncate(d / "config.json"), "config.json"),
    "config_a_list": (lambda d: (d / "config.json").write_text("[]"), "config.json"),
    "config_no_policy": (lambda d: _edit_json(d / "config.json", lambda m: m.pop("policy")), "config.json"),
    "config_missing": (lambda d: (d / "config.json").unlink(), "config.json"),
    "tokenizer_dir_missing": (lambda d: shutil.rmtree(d / "tokenizer"), "tokenizer"),
    "tokenizer_file_missing": (lambda d: (d / "tokenizer" / "tokenizer.json").unlink(), "tokenizer"),
    "processors_json_missing": (lambda d: (d / "processors" / "outputs.json").unlink(), "outputs.json"),
    "processors_json_corrupt": (lambda d: (d / "processors" / "inputs.json").write_text("{x"), "inputs.json"),
    "processors_state_missing": (lambda d: (d / "processors" / "inputs_01_normalize.safetensors").unlink(),
                                 "inputs_01_normalize.safetensors"),
    "processors_state_corrupt": (lambda d: (d / "processors" / "outputs_00_unnormalize.safetensors").write_text(
        "garbage"), "outputs_00_unnormalize.safetensors"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_broken_checkpoint_is_one_line_naming_the_file(ckpt, case):
    """The loader's own checks (the manifest, on by default, would name each of these files first)."""
    edit, name = CORRUPTIONS[case]
    edit(ckpt)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        VLAPolicy.from_pretrained(ckpt, verify=False)
    msg = str(info.value)
    assert "\n" not in msg and name in msg, msg


def test_the_cli_prints_one_line_naming_the_corrupt_file(ckpt, capsys, monkeypatch):
    from vlaforge.cli.main import main

    _truncate(ckpt / "processors" / "outputs_00_unnormalize.safetensors")
    monkeypatch.setenv("VLAFORGE_VERIFY", "0")  # the loader's own check, not the manifest's
    assert main(["serve", str(ckpt), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlaforge serve: error: ") and "\n" not in err, err
    assert "outputs_00_unnormalize.safetensors: not a readable safetensors file" in err, err


@pytest.mark.parametrize("tamper", [_flip_dtype, _swap_offsets], ids=["dtype_F32_to_I32", "offsets_swapped"])
def test_tampered_weights_are_refused_by_the_manifest(ckpt, tamper):
    tamper(ckpt / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: content differs from its SHA-256"):
        VLAPolicy.from_pretrained(ckpt)


def test_a_flipped_dtype_is_refused_without_the_manifest_too(ckpt):
    _flip_dtype(ckpt / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor \S+ is stored as I32"):
        VLAPolicy.from_pretrained(ckpt, verify=False)


def test_verification_can_be_skipped_by_kwarg_or_environment(ckpt, monkeypatch):
    _swap_offsets(ckpt / "model.safetensors")  # same shapes and dtypes: only the hashes can tell
    VLAPolicy.from_pretrained(ckpt, verify=False)
    monkeypatch.setenv("VLAFORGE_VERIFY", "0")
    VLAPolicy.from_pretrained(ckpt)


def test_an_edited_config_or_an_added_file_is_refused(ckpt):
    original = (ckpt / "config.json").read_text()
    _edit_json(ckpt / "config.json", lambda m: m["policy"]["head"].update(n_bins=128))  # no weight shows it
    with pytest.raises(ValueError, match=r"config\.json: .*expected"):
        VLAPolicy.from_pretrained(ckpt)
    (ckpt / "config.json").write_text(original)
    (ckpt / "processors" / "dataset_stats.json").write_text("{}")
    with pytest.raises(ValueError, match=r"dataset_stats\.json: not in manifest\.json"):
        VLAPolicy.from_pretrained(ckpt)


def test_a_checkpoint_without_manifest_loads_with_one_warning(ckpt, caplog):
    (ckpt / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING, logger="vlaforge.policy"):
        VLAPolicy.from_pretrained(ckpt)
    warned = [r for r in caplog.records if "manifest.json" in r.getMessage()]
    assert len(warned) == 1 and str(ckpt) in warned[0].getMessage()


def test_a_training_checkpoint_manifest_covers_train_state(saved, tmp_path):
    from vlaforge.manifest import verify_manifest
    from vlaforge.train.checkpoint import save_checkpoint

    policy = VLAPolicy.from_pretrained(saved["uniform"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ck = save_checkpoint(tmp_path / "run", policy, 3, sched, {"state": {}, "param_groups": []},
                         {"rank0/torch": torch.zeros(2)})
    listed = json.loads((ck / "manifest.json").read_text())["files"]
    assert {"train_state/state.json", "train_state/rng.safetensors", "model.safetensors"} <= set(listed)
    assert verify_manifest(ck)
    (ck / "train_state" / "state.json").write_text("{}")
    with pytest.raises(ValueError, match=r"state\.json: .*expected"):
        verify_manifest(ck)


def test_config_contradicting_weights_or_processors_names_the_field(saved, tmp_path):
    q = Path(shutil.copytree(saved["quantile"], tmp_path / "q"))
    _edit_json(q / "config.json", lambda m: m["policy"]["head"].update(n_bins=128))
    with pytest.raises(ValueError, match=r"config\.json: policy\.head\.n_bins is 128 in config\.json but the "
                                         r"weights say 256"):
        VLAPolicy.from_pretrained(q, verify=False)
    cases = {  # edit -> expected message
        "action_dim": (lambda m: (m["robot"].update(action_dim=5), m["policy"].update(action_dim=5)),
                       r"robot\.action_dim is 5 but processors/inputs\.json says 4"),
        "robot_only": (lambda m: m["robot"].update(state_dim=3), r"policy\.state_dim is 4 but robot\.state_dim is 3"),
        "cameras": (lambda m: (m["robot"]["cameras"].pop("wrist"), m["policy"].update(cameras=["front"])),
                    r"robot\.cameras is \['front'\] but processors/inputs\.json says \['front', 'wrist'\]"),
    }
    for name, (edit, pattern) in cases.items():
        d = Path(shutil.copytree(saved["uniform"], tmp_path / name))
        _edit_json(d / "config.json", edit)
        with pytest.raises(ValueError, match=pattern) as info:
            VLAPolicy.from_pretrained(d, verify=False)
        assert "\n" not in str(info.value)


def test_config_values_are_checked_against_their_declared_types(tmp_path):
    from vlaforge.config import parse_args
    from vlaforge.heads.base import HEADS
    from vlaforge.serve.server import ServeConfig

    data = tiny_policy_config().to_dict()
    bad = {"cameras": ("scene", r"'cameras': expected a list of str, got str 'scene'"),
           "chunk": ([1, 2], r"'chunk': expected int, got list \[1, 2\]"),
           "history": (True, r"'history': expected int, got bool True")}
    for field, (value, pattern) in bad.items():
        with pytest.raises(ConfigError, match=pattern):
            PolicyConfig.from_dict({**data, field: value})
    with pytest.raises(ConfigError, match=r"'head\.n_bins': expected int, got float 2\.5"):
        PolicyConfig.from_dict({**data, "head": {**data["head"], "n_bins": 2.5}})
    with pytest.raises(ConfigError, match=r"'low': expected float, got str '-1'"):
        HEADS.get("tokens").from_dict({"type": "tokens", "low": "-1"})
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({**data, "normalization": {"action": 3}}))
    with pytest.raises(ValueError, match=rf"{path}: config field 'normalization\.action': expected str, got int 3"):
        PolicyConfig.from_json(path)
    # command lines: YAML values are checked the same way, numbers written as 1e-4 still parse
    with pytest.raises(ConfigError, match=r"'cameras': expected a list of str, got str 'scene'"):
        parse_overrides(tiny_policy_config(), ["--cameras=scene"])
    assert parse_overrides(tiny_policy_config(), ["--cameras=[a,b]", "--head.low=-2e-1"]).head.low == -0.2
    with pytest.raises(ConfigError, match=r"'max_batch': expected int, got bool True"):
        parse_args(ServeConfig, ["--max_batch=true"])
    assert parse_args(ServeConfig, ["--checkpoint=2024", "--max_wait_ms=1e-1"]).max_wait_ms == 0.1


def test_nan_token_logits_are_refused_not_decoded_as_bin_zero(saved):
    policy = VLAPolicy.from_pretrained(saved["uniform"])
    ids = policy.backbone.action_token_ids(policy.head.tokenizer.vocab)
    with torch.no_grad():
        policy.backbone.model.lm_head.weight[ids] = float("nan")  # only action rows: the prefix stays finite
    item = saved["reader"][2]
    with pytest.raises(ValueError, match="tokens head: .*non-finite"):
        policy.predict_action({c: item[image_key(c)] for c in ("front", "wrist")}, item["task"],
                              item["observation.state"])


def test_rewriting_the_manifest_hashes_only_new_or_changed_files(ckpt, monkeypatch):
    import vlaforge.manifest as manifest

    hashed = []
    real = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    (ckpt / "train_state").mkdir()
    (ckpt / "train_state" / "state.json").write_text("{}")
    tok = ckpt / "tokenizer" / "tokenizer_config.json"
    tok.write_text(tok.read_text().replace("{", "{ ", 1)[:-1])  # same size, new content
    manifest.write_manifest(ckpt)
    assert "state.json" in hashed and "tokenizer_config.json" in hashed and "model.safetensors" not in hashed
    assert manifest.verify_manifest(ckpt)


def test_sampling_options_change_how_a_saved_diffusion_head_draws_not_its_weights(saved, tmp_path):
    """`vlaforge eval --sampling "init_noise=0 num_steps=3"`: the head's sampling fields change for this load only
    (the files stay valid for the manifest); training fields and heads without such fields are refused in one line."""
    reader = saved["reader"]
    path = _save(reader, tmp_path / "dit", head="dit")
    before = {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    plain = VLAPolicy.from_pretrained(path)
    tuned = VLAPolicy.from_pretrained(path, sampling=["init_noise=0", "num_steps=3"])
    assert (plain.cfg.head.init_noise, plain.cfg.head.num_steps) == (1.0, 10)
    assert (tuned.cfg.head.init_noise, tuned.cfg.head.num_steps) == (0.0, 3)
    for a, b in zip(plain.state_dict().values(), tuned.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    batch = tuned.prepare([reader[0]])
    draws = [tuned.sample(batch, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert torch.equal(draws[0], draws[1])  # from zeros: the generator no longer matters
    noisy = [plain.sample(batch, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert not torch.equal(noisy[0], noisy[1])
    assert before == {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"'width=8'.*dit head's sampling fields \(num_steps, clip_sample, "
                                         r"cfg_scale, init_noise\)"):
        VLAPolicy.from_pretrained(path, sampling=["width=8"])
    with pytest.raises(ValueError, match=r"init_noise.*>= 0"):
        VLAPolicy.from_pretrained(path, sampling=["init_noise=-1"])
    with pytest.raises(ValueError, match=r"'num_steps=3'.*tokens head's sampling fields \(it has none\)"):
        VLAPolicy.from_pretrained(saved["uniform"], sampling=["num_steps=3"])
