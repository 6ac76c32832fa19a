"""Observation-handling and training options shared by every backbone family."""

from __future__ import annotations

import pytest
import torch
from test_components import FAMILIES, make_batch, make_policy

from vlaforge.backbones.base import LoraConfig
from vlaforge.policy import VLAPolicy
from vlaforge.types import image_key

OPTIONS = {
    "proprio_tokens": {"proprio": "tokens"},
    "stitch": {"views": "stitch"},
    "act_readout": {"readout": "act"},
    "no_proprio": {"proprio": "none", "readout": "last"},
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("backbone", FAMILIES)
def test_observation_options_work_for_every_family(dataset, backbone, option):
    policy, reader = make_policy(dataset, backbone, "dit", backbone_kw=OPTIONS[option])
    batch = make_batch(policy, reader)
    if option == "stitch":
        assert image_key("stitched") in batch and image_key("front") not in batch
    loss = policy.loss(batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert policy.eval().sample(batch).shape == (4, 4, 4)


@pytest.mark.parametrize("mode", ["interleaved", "per_frame"])
@pytest.mark.parametrize("backbone", ["smolvlm", "qwen2_vl", "paligemma"])
def test_history_windows(dataset, backbone, mode):
    policy, reader = make_policy(dataset, backbone, "tokens", history=2, backbone_kw={"history": mode})
    batch = make_batch(policy, reader)
    assert batch[image_key("front")].shape[1] == 2  # (B, T, 3, S, S)
    ctx = policy.backbone.encode(batch)
    if mode == "per_frame":
        assert ctx.history.shape == (4, 2, policy.backbone.hidden_size)
    else:
        assert ctx.history is None
    assert torch.isfinite(policy.loss(batch)["loss"])


def test_proprio_tokens_use_the_action_vocabulary(dataset):
    policy, _ = make_policy(dataset, "smolvlm", "tokens", backbone_kw={"proprio": "tokens"})
    bb = policy.backbone
    state = torch.tensor([[-1.0, -0.5, 0.0, 1.0]])
    emb = bb._proprio_embeds(state)
    ids = bb.action_token_ids(256)[torch.tensor([0, 64, 128, 255])]
    torch.testing.assert_close(emb[0], bb.embed_tokens(ids))


@pytest.mark.parametrize("backbone", ["smolvlm", "prismatic"])
def test_freezing_components_stops_their_gradients(dataset, backbone):
    policy, reader = make_policy(dataset, backbone, "dit", backbone_kw={"freeze": ("vision", "projector")})
    policy.loss(make_batch(policy, reader))["loss"].backward()
    parts = policy.backbone.components()
    for name in ("vision", "projector"):
        assert all(not p.requires_grad and p.grad is None for p in parts[name].parameters())
    assert any(p.grad is not None for p in parts["lm"].parameters())
    # the head trains fully (its learned null condition is only used with cond_dropout > 0)
    assert all(p.grad is not None for n, p in policy.head.named_parameters() if "null" not in n)


@pytest.mark.parametrize("backbone", ["smolvlm", "qwen2_vl", "kosmos2"])
def test_lora_trains_only_adapters_in_the_lm_and_round_trips(dataset, tmp_path, backbone):
    policy, reader = make_policy(dataset, backbone, "tokens", backbone_kw={"lora": LoraConfig(r=4, alpha=8)})
    lm = policy.backbone.components()["lm"]
    names = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    policy.loss(make_batch(policy, reader))["loss"].backward()
    assert all(p.grad is None for n, p in lm.named_parameters() if "lora_" not in n)
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    a, b = policy.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_added_action_tokens_grow_the_vocabulary_and_reload(dataset, tmp_path):
    base, _ = make_policy(dataset, "qwen2_vl", "tokens")
    policy, reader = make_policy(dataset, "qwen2_vl", "tokens", backbone_kw={"action_tokens": "add"})
    tok = policy.backbone.tokenizer
    assert len(tok) == len(base.backbone.tokenizer) + 256
    assert policy.backbone.vocab_size == max(base.backbone.vocab_size, len(tok))
    ids = policy.backbone.action_token_ids(256)
    assert not torch.equal(ids, base.backbone.action_token_ids(256))
    assert policy.backbone.tokenizer.convert_ids_to_tokens(int(ids[0])) == "<action_0>"
    assert torch.isfinite(policy.loss(make_batch(policy, reader))["loss"])
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded.backbone.action_token_ids(256), ids)


@pytest.mark.parametrize("backbone", ["smolvlm", "prismatic"])
def test_gradient_checkpointing_gives_the_same_loss(dataset, backbone):
    a, reader = make_policy(dataset, backbone, "dit")
    b, _ = make_policy(dataset, backbone, "dit", backbone_kw={"gradient_checkpointing": True})
    b.load_state_dict(a.state_dict())
    assert any(getattr(m, "gradient_checkpointing", False) for m in b.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in a.modules())
    batch = make_batch(a, reader)
    torch.manual_seed(3)
    la = a.loss(batch)["loss"]
    torch.manual_seed(3)
    lb = b.loss(batch)["loss"]
    torch.testing.assert_close(la, lb)
    lb.backward()


def test_wrong_images_get_clear_errors(dataset):
    policy, reader = make_policy(dataset, "smolvlm", "tokens")
    batch = make_batch(policy, reader)
    bad = dict(batch)
    bad[image_key("front")] = batch[image_key("front")][..., :16, :16]
    with pytest.raises(ValueError, match=r"'observation.images.front': expected \(\.\.\., 3, 96, 96\)"):
        policy.loss(bad)
    del bad[image_key("front")]
    with pytest.raises(KeyError, match="observation.images.front"):
        policy.loss(bad)
    bad = dict(batch)
    bad[image_key("wrist")] = (batch[image_key("wrist")] * 255).to(torch.uint8)
    with pytest.raises(TypeError, match="expected float"):
        policy.loss(bad)


def test_state_as_text_writes_the_binned_state_into_the_prompt(dataset):
    """proprio="text" (LLaVA-VLA): the state's bins are decoded to text inside the prompt; any family, any head."""
    policy, reader = make_policy(dataset, "smolvlm", "tokens", backbone_kw={
        "proprio": "text", "prompt_template": "{task} state: {state}", "prompt_before_image": "look:",
        "action_tokens": "add"})  # the last free LM rows of the tiny tokenizers are no tokens: nothing to decode
    assert policy.backbone.proprio is None  # no projector: the state reaches the model as text only
    with pytest.raises(ValueError, match="state as text needs ids the tokenizer can decode"):
        make_policy(dataset, "smolvlm", "tokens", backbone_kw={"proprio": "text", "prompt_template": "{task} {state}"})
    tok, item = policy.backbone.tokenizer, reader[0]
    ids = policy.inputs(dict(item))["input_ids"].tolist()
    moved = policy.inputs({**item, "observation.state": item["observation.state"] + 5.0})["input_ids"].tolist()
    assert ids != moved and "state:" in tok.decode(ids)
    assert policy.backbone._start.tolist()[-len(tok("look:", add_special_tokens=False)["input_ids"]):] == tok(
        "look:", add_special_tokens=False)["input_ids"]
    assert torch.isfinite(policy.loss(make_batch(policy, reader))["loss"])
