"""LoRA: what trains, merge-and-export to a plain checkpoint, and the ``lora.init`` options."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vlaforge.backbones.base import BACKBONES, LoraConfig
from vlaforge.cli.main import main as cli_main
from vlaforge.config import ConfigError
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.heads.base import HEADS
from vlaforge.lora import lora_parameter_names, merge_lora
from vlaforge.policy import PolicyConfig, VLAPolicy
from vlaforge.processors import collate
from vlaforge.quantize import is_4bit

IMAGE_SIZE = {"smolvlm": 32, "qwen2_vl": 56}


def make_policy(dataset, backbone: str = "smolvlm", head: str = "mlp", lora: LoraConfig | None = None,
                **backbone_kw) -> tuple[VLAPolicy, dict]:
    root, _ = dataset
    reader = LeRobotDataset(root, chunk=4)
    bb = BACKBONES.get(backbone)(image_size=IMAGE_SIZE[backbone], lora=lora, **backbone_kw)
    cfg = PolicyConfig(backbone=bb, head=HEADS.get(head)(), chunk=4, exec_steps=2)
    torch.manual_seed(0)
    policy = VLAPolicy(cfg.with_robot(reader.meta.robot_spec()))
    policy.make_pipelines(reader.meta.stats, reader.meta.robot_spec())
    return policy, collate([policy.inputs(reader[i]) for i in (0, 5, 9)])


def perturb_adapters(policy: VLAPolicy, scale: float = 0.05) -> None:
    """peft starts B at zero (the adapter is a no-op); give every adapter a non-zero update."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def actions(policy: VLAPolicy, batch: dict) -> torch.Tensor:
    return policy.eval().sample(batch, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backbone", ["smolvlm", "qwen2_vl"])
def test_lora_gradients_reach_only_adapters_and_the_parts_outside_the_vlm(dataset, backbone):
    policy, batch = make_policy(dataset, backbone, "mlp", LoraConfig(r=4, alpha=8))
    perturb_adapters(policy)  # so that lora_A's gradient is not identically zero either
    policy.loss(batch)["loss"].backward()
    model = policy.backbone.model
    vlm = {id(p) for p in model.parameters()}
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    outside = [p for p in policy.parameters() if id(p) not in vlm]  # head, proprio MLP
    assert adapters and list(policy.head.parameters()) and policy.backbone.proprio is not None
    for name, p in policy.named_parameters():
        expected = "lora_" in name or id(p) not in vlm
        assert (p.grad is not None) == expected, name
        assert p.requires_grad == expected, name
    assert all(p.grad.abs().sum() > 0 for p in adapters + outside)


def test_lora_full_keeps_a_component_training_and_freeze_still_wins(dataset):
    policy, batch = make_policy(dataset, "smolvlm", "mlp", LoraConfig(r=4, full=("projector",)),
                                freeze=("vision",))
    policy.loss(batch)["loss"].backward()
    parts = policy.backbone.components()
    assert all(p.grad is not None for p in parts["projector"].parameters())
    assert all(p.grad is None for p in parts["vision"].parameters())
    assert all(p.grad is None for n, p in parts["lm"].named_parameters() if "lora_" not in n)
    with pytest.raises(ConfigError, match="lora.full"):
        LoraConfig(full=("lm",))
    with pytest.raises(ConfigError, match="lora.init"):
        LoraConfig(init="loftq")


@pytest.mark.parametrize(("backbone", "head"), [("smolvlm", "mlp"), ("smolvlm", "dit"), ("qwen2_vl", "mlp"),
                                                ("qwen2_vl", "dit")])
def test_merged_export_acts_like_the_adapter_model(dataset, tmp_path, backbone, head):
    policy, batch = make_policy(dataset, backbone, head, LoraConfig(r=4, alpha=8))
    with torch.no_grad():  # DiT's adaLN-zero init ignores the condition; make the head depend on it
        for p in policy.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    before = actions(policy, batch)
    perturb_adapters(policy)
    adapted = actions(policy, batch)
    assert not torch.allclose(before, adapted, atol=1e-4)  # the adapters matter, so the comparison can fail

    merged = policy.merge_lora()
    assert policy.cfg.backbone.lora is not None and lora_parameter_names(policy)  # the original is untouched
    assert merged.cfg.backbone.lora is None and not lora_parameter_names(merged)
    torch.testing.assert_close(actions(merged, batch), adapted, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(merged.backbone.encode(batch).hidden, policy.backbone.encode(batch).hidden,
                                   atol=1e-5, rtol=1e-5)
    plain, _ = make_policy(dataset, backbone, head)  # same keys as a policy built without LoRA
    assert merged.state_dict().keys() == plain.state_dict().keys()

    out = merged.save_pretrained(tmp_path / "merged")
    saved = load_file(str(out / "model.safetensors"))
    assert saved and not [k for k in saved if "lora_" in k or "base_layer" in k]
    loaded = VLAPolicy.from_pretrained(out)
    assert loaded.cfg.backbone.lora is None
    torch.testing.assert_close(actions(loaded, batch), adapted, atol=1e-5, rtol=1e-5)


def test_export_cli_merges_a_lora_checkpoint(dataset, tmp_path, capsys):
    policy, batch = make_policy(dataset, "smolvlm", "mlp", LoraConfig(r=4, alpha=8))
    perturb_adapters(policy)
    expected = actions(policy, batch)
    policy.save_pretrained(tmp_path / "ckpt")
    assert cli_main(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), "--merge_lora"]) == 0
    assert "merged" in capsys.readouterr().out
    loaded = VLAPolicy.from_pretrained(tmp_path / "out")
    assert loaded.cfg.backbone.lora is None and not lora_parameter_names(loaded)
    torch.testing.assert_close(actions(loaded, batch), expected, atol=1e-5, rtol=1e-5)
    # an existing, non-empty --out is refused; merging a policy without adapters is an error
    assert cli_main(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 1
    assert cli_main(["export", str(tmp_path / "out"), "--out", str(tmp_path / "again"), "--merge_lora"]) == 1
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(loaded)


@pytest.mark.parametrize("init", ["gaussian", "pissa", "olora"])
def test_lora_init_options_build_train_and_merge(dataset, tmp_path, init):
    policy, batch = make_policy(dataset, "smolvlm", "mlp", LoraConfig(r=4, alpha=8, dropout=0.0, init=init))
    b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    if init == "gaussian":  # gaussian A, B = 0
        perturb_adapters(policy)
    assert b and all(p.abs().sum() > 0 for p in b)  # pissa / olora start with B != 0
    policy.loss(batch)["loss"].backward()
    assert all(p.grad is not None for p in b)
    expected = actions(policy, batch)
    policy.save_pretrained(tmp_path / "ckpt")  # the rewritten base weights (pissa / olora) round-trip
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(actions(loaded, batch), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(actions(loaded.merge_lora(), batch), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ QLoRA: a 4-bit base through bitsandbytes
def _linears_4bit(policy: VLAPolicy) -> list[str]:
    return [n for n, m in policy.named_modules() if is_4bit(m)]


@pytest.mark.parametrize(("backbone", "quant"), [("smolvlm", "nf4"), ("qwen2_vl", "fp4")])
def test_qlora_quantizes_the_lm_and_trains_only_adapters_and_the_parts_outside_the_vlm(dataset, backbone, quant):
    plain, batch = make_policy(dataset, backbone, "mlp", LoraConfig(r=4, alpha=8))
    policy, _ = make_policy(dataset, backbone, "mlp", LoraConfig(r=4, alpha=8, quantize=quant))
    lm = policy.backbone.components()["lm"]
    lm_linears = [n for n, m in plain.backbone.components()["lm"].named_modules()
                  if isinstance(m, torch.nn.Linear) and "lora_" not in n]
    quantized = [n for n, m in lm.named_modules() if is_4bit(m)]
    assert quantized and len(quantized) == len(lm_linears)  # every LM linear, LoRA targets or not
    assert not [n for n in _linears_4bit(policy) if not n.startswith("backbone.model")]
    assert type(policy.backbone._lm_head[0]) is torch.nn.Linear  # the LM head and the vision tower stay float
    assert not [m for m in policy.backbone.components()["vision"].modules() if is_4bit(m)]
    # the LM's linear weights take about 1/4 of the bytes (4 bits + scales vs 32 bits)
    lm_bytes = sum(t.numel() * t.element_size() for n, t in lm.state_dict().items() if "lora_" not in n)
    plain_bytes = sum(t.numel() * t.element_size() for n, t in plain.backbone.components()["lm"].state_dict().items()
                      if "lora_" not in n)
    assert lm_bytes < 0.5 * plain_bytes
    # same seed, so the 4-bit base is the float one quantized: within NF4/FP4's step of each block's absmax, and
    # the whole model computes close to the float one (both start with B = 0: the adapters are a no-op)
    from vlaforge.quantize import dequantize_weight

    for name in quantized:
        w = dict(plain.backbone.components()["lm"].named_modules())[name].weight
        err = (dequantize_weight(lm.get_submodule(name)) - w).abs()
        assert err.max() < 0.2 * w.abs().max() and err.mean() < 0.15 * w.abs().mean(), name
    with torch.no_grad():
        h_q, h_f = policy.backbone.encode(batch).hidden, plain.backbone.encode(batch).hidden
    assert torch.nn.functional.cosine_similarity(h_q.flatten(), h_f.flatten(), dim=0) > 0.95
    perturb_adapters(policy)
    policy.train()
    policy.loss(batch)["loss"].backward()
    vlm = {id(p) for p in policy.backbone.model.parameters()}
    for name, p in policy.named_parameters():
        expected = "lora_" in name or id(p) not in vlm
        assert (p.grad is not None) == expected, name
    assert all(p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_" in n)


def test_qlora_survives_eval_then_training_and_round_trips_a_checkpoint(dataset, tmp_path):
    policy, batch = make_policy(dataset, "smolvlm", "mlp", LoraConfig(r=4, alpha=8, quantize="nf4"))
    perturb_adapters(policy)
    expected = actions(policy, batch)  # eval mode (bitsandbytes' CPU eval repacking would break what follows)
    policy.train()
    policy.loss(batch)["loss"].backward()
    out = policy.save_pretrained(tmp_path / "ckpt")
    saved = load_file(str(out / "model.safetensors"))
    packed = [k for k, v in saved.items() if k.endswith("base_layer.weight") and v.dtype == torch.uint8]
    assert packed and all(f"{k}.absmax" in saved for k in packed)
    loaded = VLAPolicy.from_pretrained(out)
    assert _linears_4bit(loaded) == _linears_4bit(policy)
    for (n, a), b in zip(policy.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), n  # the packed weights and their quantization state, bit for bit
    torch.testing.assert_close(actions(loaded, batch), expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ConfigError, match="lora.quantize"):
        LoraConfig(quantize="int3")


def test_qlora_loads_a_float_checkpoint_by_quantizing_it(dataset):
    plain, _ = make_policy(dataset, "smolvlm", "mlp", LoraConfig(r=4, alpha=8))
    policy, _ = make_policy(dataset, "smolvlm", "mlp", LoraConfig(r=4, alpha=8, quantize="nf4"))
    with torch.no_grad():
        for p in plain.backbone.components()["lm"].parameters():
            p.add_(torch.randn_like(p) * 0.02)  # so that loading has something to change
    before = policy.state_dict()
    policy.load_state_dict(plain.state_dict())
    after = policy.state_dict()
    changed = [k for k, v in after.items() if k.endswith("base_layer.weight") and not torch.equal(v, before[k])]
    assert changed
    from vlaforge.quantize import dequantize_weight

    layer = policy.backbone.components()["lm"].layers[0].self_attn.q_proj.base_layer
    target = plain.backbone.components()["lm"].layers[0].self_attn.q_proj.base_layer.weight
    err = (dequantize_weight(layer) - target).abs().max() / target.abs().max()
    assert err < 0.15  # NF4: within a quantization step of the block's absmax


@pytest.mark.parametrize(("backbone", "head"), [("smolvlm", "mlp"), ("qwen2_vl", "dit")])
def test_qlora_merged_export_is_a_float_policy_acting_like_the_adapter_model(dataset, tmp_path, backbone, head):
    policy, batch = make_policy(dataset, backbone, head, LoraConfig(r=4, alpha=8, quantize="nf4",
                                                                    targets=("q_proj", "v_proj")))
    with torch.no_grad():
        for p in policy.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    before = actions(policy, batch)
    perturb_adapters(policy)
    adapted = actions(policy, batch)
    assert not torch.allclose(before, adapted, atol=1e-3)
    merged = policy.merge_lora()
    assert _linears_4bit(policy) and not _linears_4bit(merged)  # un-adapted 4-bit layers are dequantized too
    assert merged.cfg.backbone.lora is None and not lora_parameter_names(merged)
    torch.testing.assert_close(actions(merged, batch), adapted, atol=1e-4, rtol=1e-4)
    plain, _ = make_policy(dataset, backbone, head)
    assert merged.state_dict().keys() == plain.state_dict().keys()
    assert all(v.is_floating_point() for v in merged.state_dict().values() if v.dtype != torch.long)
    loaded = VLAPolicy.from_pretrained(merged.save_pretrained(tmp_path / "merged"))
    torch.testing.assert_close(actions(loaded, batch), adapted, atol=1e-4, rtol=1e-4)


def test_qlora_training_flops_are_counted_like_the_float_models(dataset):
    """bench/train.py counts MFU's FLOPs with torch's FlopCounterMode, which does not know bitsandbytes' fused 4-bit
    matmul (a custom op): without ``vlaforge.train.flops`` a QLoRA base's forward matmuls counted nothing."""
    from vlaforge.train.flops import flop_counter

    counts = []
    for quantize in ("none", "nf4"):
        policy, batch = make_policy(dataset, "smolvlm", "mlp", LoraConfig(r=4, alpha=8, quantize=quantize))
        policy.train()
        with flop_counter() as counter:
            policy.loss(batch)["loss"].backward()
        counts.append(counter.get_total_flops())
    assert counter.get_flop_counts()["Global"][torch.ops.bitsandbytes.gemm_4bit] > 0
    assert counts[0] == counts[1] > 0
