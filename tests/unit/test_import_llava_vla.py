"""`vlaforge import llava_vla`: a tiny checkpoint in LLaVA-VLA's released layout gives LLaVA-VLA's actions.

The reference below is written from LLaVA-VLA's documented conventions (shared/reference/released_checkpoints.md,
seed_systems.md §3, and its flask server / action tokenizer / conversation code as described there), not with
vlaforge's modules: transformers' CLIP tower and Llama loaded from the original LLaVA-1.5 names, layer -2 patch
features, the mlp2x_gelu projector, the two views resized with Lanczos to 334 x 167 and stacked, CLIP's bicubic
resize, the Vicuna-v1 prompt with the robot system prompt tokenized on both sides of ``<image>`` (BOS dropped from
the second chunk), the state normalized with (std + 1e-5), divided by 3, binned with ``vocab_size - digitize``,
decoded to text, greedy decoding over the whole vocabulary until EOS, ``output_ids[2:-1]``, bin centres of
``clip(vocab_size - id - 1, 0, 254)`` and the client's truncation / zero padding to 5 x 7.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

import released
from vlaforge.cli.main import main
from vlaforge.heads.tokens import TokenHead, TokenHeadConfig
from vlaforge.inference import LocalPolicy
from vlaforge.policy import VLAPolicy
from vlaforge.processors.image import ImageStep
from vlaforge.processors.normalize import Normalize, Unnormalize
from vlaforge.processors.text import Tokenize
from vlaforge.serve.server import PolicyServer, ServeConfig, ServerThread
from vlaforge.types import ACTION, OBS_STATE, STITCHED_CAMERA, image_key
from vlaforge.weights.common import LayoutError, write_checkpoint
from vlaforge.weights.llava_vla import import_llava_vla

SYSTEM = ("A chat between a curious user and an artificial intelligence robot. The robot provides actions to follow "
          "out the user's instructions.")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TOWER = "model.vision_tower.vision_tower.vision_model."
NEW_TOKENS = 16  # the release generates up to 128; fewer keep the test fast (and exercise the zero padding)


def norm_grid() -> np.ndarray:
    """LLaVA-VLA's use_norm_bins grid as its README/code documents it (7 linspace segments, the last closed)."""
    segments = [(-1, -0.5, 15), (-0.5, -0.25, 40), (-0.25, -0.1, 42), (-0.1, 0.1, 62), (0.1, 0.25, 42),
                (0.25, 0.5, 40), (0.5, 1.0, 15)]
    return np.concatenate([np.linspace(a, b, n, endpoint=i == 6) for i, (a, b, n) in enumerate(segments)])


def state_text(tok, state, stats, grid):
    """encode_robot_obs: (x - mean) / (std + 1e-5) / 3, clipped, ``vocab_size - digitize``, decoded to text."""
    x = (np.asarray(state, np.float64) - stats["mean"]) / (stats["std"] + 1e-5) / 3.0
    ids = tok.vocab_size - np.digitize(np.clip(x, -1, 1), grid)
    return tok.decode([int(i) for i in ids])


def stitched(static, gripper, side):
    """compose_robot_input: Lanczos to 334 x 167 each, pasted top / bottom; CLIP's processor: bicubic to side."""
    canvas = Image.new("RGB", (334, 334))
    canvas.paste(Image.fromarray(static).resize((334, 167), Image.LANCZOS), (0, 0))
    canvas.paste(Image.fromarray(gripper).resize((334, 167), Image.LANCZOS), (0, 167))
    x = np.asarray(canvas.resize((side, side), Image.BICUBIC)).astype(np.float32) / 255.0
    return torch.from_numpy(x).permute(2, 0, 1)[None]


def original(src):
    sd = {}
    for f in sorted(src.glob("model-*.safetensors")):
        sd.update({k: v.float() for k, v in load_file(f).items()})
    return sd


def reference(src, clip_dir, obs, stats, grid=None, max_new=NEW_TOKENS):
    grid = np.linspace(-1, 1, 256) if grid is None else grid
    cfg = json.loads((src / "config.json").read_text())
    sd = original(src)
    tok = released.llava_tokenizer()
    vc = json.loads((clip_dir / "config.json").read_text())["vision_config"]
    tower = CLIPVisionModel(CLIPVisionConfig(**vc)).eval()
    tower.load_state_dict({k[len(TOWER):]: v for k, v in sd.items() if k.startswith(TOWER)})
    px = stitched(obs[image_key("static")], obs[image_key("gripper")], vc["image_size"])
    px = (px - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    with torch.no_grad():
        feats = tower(px, output_hidden_states=True).hidden_states[-2][:, 1:]
        img = F.linear(F.gelu(F.linear(feats, sd["model.mm_projector.0.weight"], sd["model.mm_projector.0.bias"])),
                       sd["model.mm_projector.2.weight"], sd["model.mm_projector.2.bias"])
    names = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "vocab_size", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings")
    lm = LlamaForCausalLM(LlamaConfig(**{k: cfg[k] for k in names})).eval()
    lm.load_state_dict({k: v for k, v in sd.items() if not k.startswith(("model.mm_projector", "model.vision_tower"))})
    prompt = f"{SYSTEM} USER: <image>\n{obs['task']}\n{state_text(tok, obs[OBS_STATE], stats, grid)} ASSISTANT:"
    first, second = (tok(c).input_ids for c in prompt.split("<image>"))  # tokenizer_image_token
    emb = lm.get_input_embeddings()
    seq = torch.cat([emb(torch.tensor([first])), img, emb(torch.tensor([second[1:]]))], 1)
    out = []
    with torch.no_grad():
        while len(out) < max_new:
            nxt = int(lm(inputs_embeds=seq).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
            seq = torch.cat([seq, emb(torch.tensor([[nxt]]))], 1)
    edges = grid
    centres = (edges[:-1] + edges[1:]) / 2
    vals = [float(centres[np.clip(tok.vocab_size - i - 1, 0, 254)]) for i in out[2:-1]]
    vals = (vals + [0.0] * 35)[:35]  # the client: truncate or pad to ACTION_DIM * action_chunk
    return img, (first, second[1:]), out, np.array(vals).reshape(5, 7)


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_vla")
    src, clip, yml = released.write_llava_vla(root / "src")
    imp = import_llava_vla(src, statistics=yml, dtype="float32")
    assert (imp.cfg.head.max_new_tokens, imp.cfg.head.keep, imp.cfg.chunk) == (128, (2, -1), 5)
    imp.cfg = imp.cfg.replace(head=imp.cfg.head.replace(max_new_tokens=NEW_TOKENS))
    ckpt = write_checkpoint(imp, root / "ckpt")
    st = yaml.safe_load(yml.read_text())
    stats = {"mean": np.array(st["robot_obs"][0]["mean"]), "std": np.array(st["robot_obs"][0]["std"])}
    return src, clip, yml, ckpt, stats


def _obs(seed, task="open the drawer"):
    rng = np.random.default_rng(seed)
    return {image_key("static"): rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
            image_key("gripper"): rng.integers(0, 256, (84, 84, 3), dtype=np.uint8), "task": task,
            OBS_STATE: rng.normal(0, 0.6, released.CALVIN_STATE).astype(np.float32)}


def test_imported_llava_vla_matches_the_reference_forward(llava):
    src, clip, _, ckpt, stats = llava
    policy = VLAPolicy.from_pretrained(ckpt)
    for seed, task in ((1, "Push the pink block to the left"),):  # the instruction as given (not lower-cased)
        obs = _obs(seed, task)
        feats, (first, second), ids, actions = reference(src, clip, obs, stats)
        item = policy.inputs(dict(obs))
        assert policy.backbone._start.tolist() == first  # BOS + system + " USER: " before the image
        assert item["input_ids"].tolist() == second  # "\n{task}\n{state} ASSISTANT:" after it
        pix = torch.from_numpy(item[image_key(STITCHED_CAMERA)])[None]
        with torch.no_grad():
            ours = policy.backbone.embed_images(policy.backbone.normalize_images(pix))
        torch.testing.assert_close(ours, feats, rtol=1e-5, atol=1e-5)
        info: dict = {}
        got = policy.predict_actions([obs], info=info)[0]
        assert info["token_ids"][0][: len(ids)] == ids
        np.testing.assert_allclose(got, actions, rtol=1e-5, atol=1e-5)


def test_llava_vla_image_stacking_on_fixed_arrays():
    rng = np.random.default_rng(3)
    static, gripper = rng.integers(0, 256, (200, 200, 3), np.uint8), rng.integers(0, 256, (84, 84, 3), np.uint8)
    step = ImageStep(cameras=["static", "gripper"], size=40, stitch=True, resize="squash", interpolation="bicubic",
                     stitch_size=334)
    out = step({image_key("static"): static, image_key("gripper"): gripper})
    assert list(out) == [image_key(STITCHED_CAMERA)]
    np.testing.assert_array_equal(out[image_key(STITCHED_CAMERA)][None], stitched(static, gripper, 40).numpy())
    with pytest.raises(ValueError, match="LLaVA-VLA stacks 2 views, got 3"):
        ImageStep(cameras=["a", "b", "c"], size=40, stitch=True, stitch_size=334)(
            {image_key(c): static for c in "abc"})


@pytest.mark.parametrize("grid", ["uniform_edges", "norm_bins"])
def test_llava_vla_state_text_and_bins_round_trip(grid):
    tok = released.llava_tokenizer()
    v = tok.vocab_size
    edges = np.linspace(-1, 1, 256) if grid == "uniform_edges" else norm_grid()
    step = Tokenize(template="\n{task}\n{state} ASSISTANT:", max_tokens=256, lowercase=False, state_text=grid,
                    state_ids=list(range(v - 1, v - 257, -1)))  # count_down: bin k is id vocab_size - 1 - k
    step.bind(tokenizer=tok)
    stats = {"mean": np.linspace(-0.3, 0.3, 15), "std": np.linspace(0.05, 0.4, 15)}
    raw = np.array([-9, -0.9, -0.31, -0.1, 0.0, 0.02, 0.05, 0.11, 0.3, 0.5, 0.7, 0.9, 1.0, 1.5, 9.0])
    norm = Normalize.from_stats({OBS_STATE: "mean_3std"}, {OBS_STATE: {k: s.astype(np.float32) for k, s in
                                                                        stats.items()}})
    x = norm({OBS_STATE: raw.astype(np.float32)})[OBS_STATE]
    want = np.clip((raw - stats["mean"]) / (stats["std"] + 1e-5) / 3.0, -1, 1)
    np.testing.assert_allclose(x, want, atol=1e-6)
    text = state_text(tok, raw, stats, edges)
    assert step.state_to_text(x) == text
    item = step({"task": "open the drawer", OBS_STATE: x})
    assert item["input_ids"].tolist() == tok(f"\nopen the drawer\n{text} ASSISTANT:").input_ids[1:]
    # the head's binner: the same ids (vocab_size - digitize) and the same centres back
    head = TokenHead(TokenHeadConfig(binning=grid, decode_over="vocab"), action_dim=15, chunk=1)
    a = torch.tensor(np.concatenate([want, [-1.0, 1.0, -0.5, 0.25]]))
    k = head.tokenizer.encode(a)
    ids = v - np.digitize(np.clip(a.numpy(), -1, 1), edges)
    assert (v - 1 - k.numpy()).tolist() == ids.tolist()
    centres = (edges[:-1] + edges[1:]) / 2
    np.testing.assert_allclose(head.tokenizer.decode(k).numpy(), centres[np.clip(v - ids - 1, 0, 254)], atol=1e-7)


def test_llava_vla_reply_parsing():
    """output_ids[2:-1] of the reply up to its EOS, each id to a bin centre, truncated / zero-padded to 5 x 7."""
    v, eos = 1000, 2
    head = TokenHead(TokenHeadConfig(binning="uniform_edges", decode_over="vocab", max_new_tokens=60, keep=(2, -1)),
                     action_dim=7, chunk=5)
    vocab = torch.arange(v - 1, v - 257, -1)
    rng = np.random.default_rng(0)
    short = [35, *rng.integers(v - 256, v, 20).tolist(), eos, *rng.integers(0, v, 5).tolist()]  # EOS at 21
    long = [35, 7, *rng.integers(v - 300, v + 3, 58).tolist()]  # no EOS: ids outside the range clip
    ids = torch.tensor([short + [0] * (60 - len(short)), long])
    centres = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2

    ctx = SimpleNamespace(extras={"token_ids": ids})
    got = head._parse_reply(ctx, head._nearest_bin(ids, vocab), torch.ones(ids.shape), eos).numpy()
    for row, seq in zip(got, (short[: short.index(eos) + 1], long), strict=True):
        vals = [centres[np.clip(v - i - 1, 0, 254)] for i in seq[2:-1]]
        np.testing.assert_allclose(row.reshape(-1), (vals + [0.0] * 35)[:35], atol=1e-6)


def test_llava_vla_unnormalization_and_import_options(llava, tmp_path):
    src, clip, yml, _, _ = llava
    rel = import_llava_vla(src, statistics=yml, dtype="float32")
    assert rel.cfg.normalization == {OBS_STATE: "mean_3std", ACTION: "identity"}  # CALVIN rel_actions as decoded
    ab = import_llava_vla(src, statistics=yml, dtype="float32", actions="absolute", norm_bins=True)
    assert ab.cfg.head.binning == ab.cfg.backbone.proprio_bins == "norm_bins"
    st = yaml.safe_load(yml.read_text())
    lo, hi = np.array(st["act_min_bound"]), np.array(st["act_max_bound"])
    y = np.linspace(-1, 1, 35).reshape(5, 7).astype(np.float32)
    un = Unnormalize.from_stats({ACTION: ab.cfg.normalization[ACTION]}, ab.dataset_stats[ab.unnorm_key])
    np.testing.assert_allclose(un({ACTION: y})[ACTION], (y + 1) / 2 * (hi - lo) + lo, rtol=1e-5, atol=1e-6)
    # the tower from the CLIP directory the original's loader reads (--vision_tower) = the one in the shards
    other = import_llava_vla(src, statistics=yml, dtype="float32", vision_tower=clip)
    assert sorted(other.weights) == sorted(rel.weights)
    for k in rel.weights:
        torch.testing.assert_close(other.weights[k].to(rel.weights[k].dtype), rel.weights[k], rtol=0, atol=0)
    # the command line: every LLaVA-VLA option reaches the importer
    out = tmp_path / "ckpt"
    assert main(["import", "llava_vla", str(src), "--out", str(out), "--statistics", str(yml), "--vision_tower",
                 str(clip), "--dtype", "float32", "--norm_bins", "--actions", "absolute"]) == 0
    cfg = json.loads((out / "config.json").read_text())["policy"]
    assert (cfg["head"]["binning"], cfg["normalization"]["action"]) == ("norm_bins", "min_max")
    assert (cfg["backbone"]["proprio"], cfg["cameras"]) == ("text", ["static", "gripper"])
    with pytest.raises(LayoutError, match=r"statistics.yaml: not found \(pass CALVIN's training statistics.yaml"):
        import_llava_vla(src)
    bad = tmp_path / "stats.yaml"
    bad.write_text("scene_obs: []\n")
    with pytest.raises(LayoutError, match="expected robot_obs"):
        import_llava_vla(src, statistics=bad)
    with pytest.raises(LayoutError, match="LLaVA-VLA stacks two views"):
        import_llava_vla(src, statistics=yml, cameras=("a",))


def test_imported_llava_vla_serves_its_own_http_contract(llava):
    """LLaVA-VLA's client (evaluate_policy_multiserver.py): multipart files, raw uint8 bytes, a JSON part."""
    requests = pytest.importorskip("requests")
    _, _, _, ckpt, _ = llava
    local = LocalPolicy.load(ckpt)
    obs = _obs(5, "lift the blue block")
    want = local.infer(dict(obs))["actions"]
    cfg = ServeConfig(checkpoint=str(ckpt), port=0, max_batch=1, http_api="llava_vla")
    payload = {"instruction": obs["task"], "robot_obs": obs[OBS_STATE].astype(np.float64).tolist()}
    files = {"json": json.dumps(payload),
             "img_static": ("img_stat.txt", obs[image_key("static")].tobytes(), "text/plain"),
             "img_gripper": ("img_grip.txt", obs[image_key("gripper")].tobytes(), "text/plain")}
    with ServerThread(PolicyServer(local, cfg)) as thread:
        resp = requests.post(thread.http_url + "/predict", files=files, timeout=60)
        assert resp.status_code == 200
        action = resp.json()
        bad = requests.post(thread.http_url + "/predict", files={**files, "img_gripper": ("g", b"\0" * 10)},
                            timeout=60)
    assert isinstance(action, list) and len(action) == 35
    np.testing.assert_allclose(np.array(action).reshape(5, 7), want, rtol=1e-6, atol=1e-6)
    chunks = np.array_split(np.array(action[:35]), 5)  # the client: 5 actions of 7, gripper to +-1
    assert all(c.shape == (7,) for c in chunks)
    assert bad.status_code == 400 and "img_gripper" in bad.text
