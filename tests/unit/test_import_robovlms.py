"""`vlaforge import robovlms`: a tiny KosMos P.H. checkpoint in RoboVLMs' released layout gives RoboVLMs' actions.

The checkpoint (``checkpoints/<name>.pt`` holding a Lightning ``state_dict`` with ``model.backbone.*``,
``model.action_token`` and ``model.act_head.{rnn, actions.mlp, gripper.mlp}``, plus ``configs/<name>.json``) is
written here from the documented facts (shared/reference/released_checkpoints.md, RoboVLMs' base_backbone.py,
policy_head/base_policy.py and eval/calvin/model_wrapper.py as read there). The reference forward is written here
too, with transformers' own Kosmos-2 modules and plain torch, not vlaforge's: images squashed with PIL bicubic and
CLIP-normalised; ``<s>`` + image tokens (no ``<image>`` markers) + ``<grounding>An image of a robot ...`` + [ACT] +
``</s>``, all through the decoder's ``inputs_embeds`` path; the [ACT] hidden state into a stateful 4-layer LSTM
that keeps its state while the window fills and is recomputed from zero over the last ``window_size`` features
afterwards; tanh arm MLP and gripper-logit MLP; arm un-normalised from ±0.65, gripper sigmoid > 0.5 -> ±1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

from released_robovlms import BOUND, CHUNK, CLIP_MEAN, CLIP_STD, LSTM_HIDDEN, WINDOW, write_robovlms
from vlaforge.inference import HistoryWindow, LocalPolicy
from vlaforge.serve.client import RemotePolicy
from vlaforge.serve.server import PolicyServer, ServeConfig, ServerThread
from vlaforge.types import ACTION, OBS_IS_PAD, image_key
from vlaforge.weights.common import LayoutError, write_checkpoint
from vlaforge.weights.robovlms import import_robovlms


# ---------------------------------------------------------------- the reference, from the documented design
def _pixels(img, size):
    """BaseRoboVLM.image_processor: Resize((S, S), BICUBIC) on the PIL image, ToTensor, CLIP Normalize."""
    x = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC), np.float32) / 255
    x = torch.from_numpy(x).permute(2, 0, 1)
    return ((x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1))[None]


class Reference:
    """RoboVLMs' KosMos P.H. forward and CALVIN step (raw_calvin), one episode at a time."""

    def __init__(self, root, kosmos, name="kosmos_ph_calvin_abcd"):
        from transformers import AutoTokenizer

        sd = torch.load(root / "checkpoints" / f"{name}.pt", weights_only=True)["state_dict"]
        self.run = json.loads((root / "configs" / f"{name}.json").read_text())
        self.vlm = Kosmos2ForConditionalGeneration(Kosmos2Config.from_pretrained(kosmos)).eval()
        self.vlm.load_state_dict({k[len("model.backbone."):]: v for k, v in sd.items()
                                  if k.startswith("model.backbone.")})
        self.tok = AutoTokenizer.from_pretrained(kosmos)
        self.act = sd["model.action_token"]
        self.lstm = torch.nn.LSTM(self.act.shape[0], LSTM_HIDDEN, num_layers=4, batch_first=True)
        self.lstm.load_state_dict({k[len("model.act_head.rnn."):]: v for k, v in sd.items()
                                   if k.startswith("model.act_head.rnn.")})
        self.arm = {k[len("model.act_head.actions.mlp."):]: v for k, v in sd.items() if ".actions.mlp." in k}
        self.grip = {k[len("model.act_head.gripper.mlp."):]: v for k, v in sd.items() if ".gripper.mlp." in k}
        self.reset()

    def reset(self):
        self.memory, self.state = [], None

    def _image_tokens(self, img):
        v = self.vlm.vision_model(pixel_values=_pixels(img, self.run["image_size"]))[0]
        v = F.normalize(self.vlm.vision_model.model.post_layernorm(v), dim=-1)
        return self.vlm.image_to_text_projection(v)[0]

    def feature(self, images, instruction):
        """``images``: static, then (use_hand_rgb) the wrist view; each is inserted right after BOS."""
        text = self.tok(f"<grounding>An image of a robot {instruction.strip()}", add_special_tokens=False)
        ids = torch.tensor([[self.tok.bos_token_id, *text["input_ids"], self.tok.eos_token_id]])
        emb = self.vlm.text_model.model.embed_tokens(ids)
        seq = emb
        for img in images:  # each inserted at the BOS offset: the last one inserted comes first
            seq = torch.cat([seq[:, :1], self._image_tokens(img), seq[:, 1:]], 1)
        seq = torch.cat([seq[:, :-1], self.act.view(1, 1, -1), seq[:, -1:]], 1)  # [ACT] before EOS
        out = self.vlm.text_model.model(inputs_embeds=seq, output_hidden_states=True)
        return out.hidden_states[-1][:, -2]  # the [ACT] position

    @staticmethod
    def _mlp(w, x):
        n = len(w) // 2
        for i in range(n):
            x = F.linear(x, w[f"{2 * i}.weight"], w[f"{2 * i}.bias"])
            x = F.relu(x) if i < n - 1 else x
        return x

    @torch.no_grad()
    def step(self, images, instruction):
        feat = self.feature(images, instruction)[:, None]  # (1, 1, D)
        self.memory.append(feat)
        if len(self.memory) <= self.run["window_size"]:  # filling: the LSTM keeps its state
            x, self.state = self.lstm(feat, self.state)
        else:  # full: recompute from zero over the last window_size features
            self.memory = self.memory[-self.run["window_size"]:]
            x, self.state = self.lstm(torch.cat(self.memory, 1), None)
        x = x[:, -1]
        arm = torch.tanh(self._mlp(self.arm, x)).view(CHUNK, -1)
        logit = self._mlp(self.grip, x).view(CHUNK, 1)
        lo, hi = self.run["norm_min"], self.run["norm_max"]
        g = (torch.sigmoid(logit) > 0.5).float()  # then unnormalised with the arm (maintain_last=False) ...
        g = (0.5 * (g + 1) * (hi - lo) + lo - 0.5) * 2  # ... and raw_calvin's (g - 0.5) * 2
        arm = 0.5 * (arm + 1) * (hi - lo) + lo
        return torch.cat([arm, torch.where(g > 0, 1.0, -1.0)], -1).numpy()  # the final sign


# ---------------------------------------------------------------- fixtures
def _frames(n, seed, size=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def robovlms(tmp_path_factory):
    root, kosmos = write_robovlms(tmp_path_factory.mktemp("robovlms"))
    ckpt = write_checkpoint(import_robovlms(root, dtype="float32", tokenizer=kosmos), root.parent / "ckpt")
    return root, kosmos, ckpt


@pytest.fixture(scope="module")
def local(robovlms):
    return LocalPolicy.load(robovlms[2])


def test_imported_robovlms_matches_the_reference_over_the_window(robovlms, local):
    """Four steps with a window of 2: the LSTM keeps its state while the window fills, then it is recomputed from
    zero over the last two features; a reset starts the next episode from an empty window."""
    root, kosmos, _ = robovlms
    ref, policy = Reference(root, kosmos), local
    assert (policy.history, policy.chunk, policy.exec_steps) == (WINDOW, CHUNK, 1)
    task = "push the red block to the left"
    for episode, steps in enumerate((4, 1)):
        ref.reset()
        policy.reset()
        for t, img in enumerate(_frames(steps, seed=episode)):
            want = ref.step([img], task)
            got = policy.step({image_key("static"): img, "task": task})["actions"]
            assert got.shape == (CHUNK, 7)
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"episode {episode}, step {t}")
            assert set(np.unique(got[:, -1])) <= {-1.0, 1.0} and np.abs(got[:, :6]).max() <= BOUND


def test_the_window_flags_decide_what_the_lstm_sees(local):
    """The first frame of an episode: the window repeats it in front and flags the copy; flagged frames are left
    out whatever they hold, unflagged ones are fused."""
    policy = local
    a, b = _frames(2, seed=3)
    obs = HistoryWindow(WINDOW).push({image_key("static"): a, "task": "open the drawer"})
    assert obs[image_key("static")].shape == (WINDOW, 40, 40, 3) and obs[OBS_IS_PAD].tolist() == [True, False]
    np.testing.assert_array_equal(obs[image_key("static")][0], a)
    flagged = policy.infer(obs)["actions"]
    other_pad = policy.infer({**obs, image_key("static"): np.stack([b, a])})["actions"]
    unflagged = policy.infer({k: v for k, v in obs.items() if k != OBS_IS_PAD})["actions"]
    np.testing.assert_allclose(other_pad, flagged, atol=1e-6)
    assert not np.allclose(flagged[:, :6], unflagged[:, :6], atol=1e-4)


def test_robovlms_image_preprocessing_and_bounds_on_fixed_arrays(local):
    policy = local.policy
    img = np.arange(50 * 60 * 3, dtype=np.uint8).reshape(50, 60, 3) * 7  # not square: squashed, not padded
    batch = policy.prepare([{image_key("static"): np.stack([img] * WINDOW), "task": "open the drawer"}])
    pixels = policy.backbone.normalize_images(batch[image_key("static")][0, -1])
    np.testing.assert_allclose(pixels[None].numpy(), _pixels(img, 32).numpy(), atol=1e-6)
    normalized = torch.tensor([[[1.0, -1.0, 0.5, 0.0, -0.25, 0.99, 1.0], [0.1] * 6 + [-1.0]]])
    out = policy.postprocess(normalized)[0]
    np.testing.assert_allclose(out[:, :6], normalized[0, :, :6].numpy() * BOUND, atol=1e-7)
    np.testing.assert_array_equal(out[:, 6], [1.0, -1.0])  # the gripper is not un-normalised
    # the training direction clips to the bounds first (RoboVLMs' normalize_action)
    item = policy.inputs.steps[1]({ACTION: np.array([[0.9, -0.9, 0.325, 0, 0, 0, -1.0]], np.float32)})
    np.testing.assert_allclose(item[ACTION][0], [1.0, -1.0, 0.5, 0, 0, 0, -1.0], atol=1e-6)


def test_imported_robovlms_serves_the_window(robovlms, local):
    ckpt = robovlms[2]
    window = HistoryWindow(WINDOW)
    for img in _frames(2, seed=7):
        obs = window.push({image_key("static"): img, "task": "lift the blue block"})
    cfg = ServeConfig(checkpoint=str(ckpt), port=0, max_batch=2, max_wait_ms=5)
    with ServerThread(PolicyServer(local, cfg)) as thread, RemotePolicy(thread.url) as remote:
        assert remote.history == WINDOW
        served = remote.infer(dict(obs))["actions"]
    np.testing.assert_allclose(served, local.infer(dict(obs))["actions"], rtol=1e-6)


def test_robovlms_with_the_wrist_view_puts_it_first(tmp_path):
    root, kosmos = write_robovlms(tmp_path / "src", hand=True, name="kosmos_ph_hand")
    ckpt = write_checkpoint(import_robovlms(root, dtype="float32", tokenizer=kosmos), tmp_path / "ckpt")
    ref, policy = Reference(root, kosmos, name="kosmos_ph_hand"), LocalPolicy.load(ckpt)
    assert policy.policy.cfg.cameras == ("gripper", "static")
    static, wrist = _frames(2, seed=11)
    want = ref.step([static, wrist], "stack the blocks")
    got = policy.step({image_key("static"): static, image_key("gripper"): wrist, "task": "stack the blocks"})
    np.testing.assert_allclose(got["actions"], want, atol=1e-5)


def test_robovlms_import_refusals(tmp_path, robovlms):
    root, kosmos, _ = robovlms
    with pytest.raises(LayoutError, match="--tokenizer"):
        import_robovlms(root)
    with pytest.raises(LayoutError, match="--cameras: this run sees one static view"):
        import_robovlms(root, tokenizer=kosmos, cameras=("static", "gripper"))
    run = json.loads((root / "configs" / "kosmos_ph_calvin_abcd.json").read_text())
    bad = tmp_path / "bad"
    (bad / "configs").mkdir(parents=True)
    (bad / "checkpoints").mkdir()
    (bad / "checkpoints" / "kosmos_ph_calvin_abcd.pt").symlink_to(root / "checkpoints" / "kosmos_ph_calvin_abcd.pt")
    for field, value, msg in (("act_head", {**run["act_head"], "history_type": "pre"}, "act_head.history_type"),
                              ("use_state", True, "use_state is set"),
                              ("fwd_pred_next_n", CHUNK + 1, "the MLPs give")):
        (bad / "configs" / "kosmos_ph_calvin_abcd.json").write_text(json.dumps({**run, field: value}))
        with pytest.raises(LayoutError, match=msg):
            import_robovlms(bad, tokenizer=kosmos)
    torch.save({"weights": {}}, bad / "checkpoints" / "other.pt")
    with pytest.raises(LayoutError, match="expected one RoboVLMs checkpoint"):
        import_robovlms(bad, tokenizer=kosmos)


def test_the_robovlms_preset_builds_the_published_variant():
    from vlaforge.presets import get_preset
    from vlaforge.weights.robovlms import PROMPT

    policy = get_preset("robovlms").policy
    head, backbone = policy.head, policy.backbone
    assert (head.type, head.mlp, head.mlp_widths, head.input_proj, head.window_pads, head.tanh) == (
        "lstm", "arm_gripper", (1024, 512, 256), False, "skip", True)
    assert (backbone.image_markers, backbone.prompt_template, backbone.readout, backbone.history) == (
        False, PROMPT, "act", "per_frame")
    assert (policy.history, policy.chunk, policy.exec_steps) == (8, 10, 1)
