"""RoboVLMs KosMos P.H. checkpoints (``checkpoints/*.pt`` + ``configs/*.json``) -> vlaforge.

RoboVLMs (Li et al., 2024), reference ``Robot-VLAs/RoboVLMs`` (``robovlms/model/backbone/base_backbone.py``,
``robokosmos.py``, ``policy_head/base_policy.py``, ``data/data_utils.py``, ``eval/calvin/model_wrapper.py``);
released as ``robovlms/RoboVLMs`` (Apache-2.0): ``checkpoints/kosmos_ph_*.pt`` and the run's config in
``configs/kosmos_ph_*.json``. The ``.pt`` holds ``{"state_dict": ...}`` (or ``model_state_dict``) with the keys
``model.backbone.*`` (transformers' ``Kosmos2ForConditionalGeneration``), ``model.action_token`` (the learned
[ACT] embedding) and ``model.act_head.*`` (the LSTMDecoder: ``rnn`` = ``nn.LSTM``, ``actions.mlp`` /
``gripper.mlp`` = Linear-ReLU MLPs 1024-512-256); it is read with ``torch.load(weights_only=True)`` and never
kept. The release has no tokenizer or Kosmos-2 config: pass ``microsoft/kosmos-2-patch14-224``'s directory with
``--tokenizer DIR`` (its tokenizer files and ``config.json``).

The model maps onto vlaforge's ``kosmos2`` backbone and ``lstm`` head with these options (nothing is copied):

* sequence ``<s>`` + 64 image tokens (no ``<image>`` markers, ``image_markers=False``; a wrist view first when the
  run used ``use_hand_rgb``) + ``<grounding>An image of a robot {instruction}`` + [ACT]; the LSTM reads the
  last hidden state at [ACT] (``readout="act"``), each history frame encoded alone (``history="per_frame"``);
* images squashed to 224 with PIL bicubic and CLIP's mean/std (``image_processor`` of ``BaseRoboVLM``);
* the LSTM (4 layers, 1024 wide) reads the 2048-d feature itself (``input_proj=False``); the arm MLP ends in tanh,
  the gripper MLP gives a logit per chunk step (``mlp="arm_gripper"``), > 0 means 1 (open), else -1 (RoboVLMs:
  sigmoid > 0.5, then ``(g - 0.5) * 2`` and the sign);
* the window: ``window_size`` frames (``policy.history``); before it is full the LSTM has seen only the episode's
  frames, afterwards it is recomputed from a zero state over the last ``window_size`` frames (``window_pads=
  "skip"`` with the ``observation_is_pad`` flags that :class:`vlaforge.inference.HistoryWindow` sets);
* ``fwd_pred_next_n`` actions per call, the first executed (``exec_steps=1``, the CALVIN wrapper's ``max_len=1``);
* actions un-normalised from the fixed bounds ``[norm_min, norm_max]`` (±0.65: ``min_max`` with those bounds), the
  gripper kept as ±1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlaforge.backbones.base import BACKBONES
from vlaforge.backbones.kosmos2 import CLIP_MEAN_STD
from vlaforge.heads.base import HEADS
from vlaforge.policy import PolicyConfig
from vlaforge.types import ACTION, RobotSpec
from vlaforge.weights import IMPORTERS
from vlaforge.weights.common import (
    Imported,
    LayoutError,
    Weights,
    drop_module_prefix,
    find_one,
    load_pt,
    load_source_tokenizer,
    read_json,
    strip_prefix,
)

PROMPT = "<grounding>An image of a robot {task}"
GRIPPER = (-1,)  # RoboVLMs' action: 6 arm dims, then the gripper
# The options above as the kosmos2 backbone's and the lstm head's (the ``robovlms`` preset uses them too)
BACKBONE_OPTIONS = dict(image_markers=False, prompt_template=PROMPT, prompt_lowercase=False, image_resize="squash",
                        image_interpolation="bicubic", proprio="none", history="per_frame", readout="act")
HEAD_OPTIONS = dict(loss="huber_bce", gripper_dims=GRIPPER, tanh=True, mlp="arm_gripper", input_proj=False,
                    window_pads="skip")
HF_BUFFERS = ("position_ids", "embed_positions.weights")  # non-persistent buffers older transformers saved


def _files(src: Path) -> tuple[Path, Path]:
    """(the .pt, its run config): ``configs/<stem>.json`` next to ``checkpoints/``, else the only config there."""
    if src.is_file():
        pt = src
    else:
        pt = find_one(src / "checkpoints" if (src / "checkpoints").is_dir() else src, "*.pt", "RoboVLMs checkpoint")
    root = pt.parent.parent if pt.parent.name == "checkpoints" else pt.parent
    for d in (root / "configs", root):
        if (d / f"{pt.stem}.json").is_file():
            return pt, d / f"{pt.stem}.json"
    if (root / "configs").is_dir():
        return pt, find_one(root / "configs", "*.json", f"run config of {pt.name} (configs/{pt.stem}.json)")
    raise LayoutError(f"{pt}: no run config (expected {root / 'configs' / (pt.stem + '.json')})")


def _state_dict(pt: Path) -> Weights:
    """The model weights with ``model.`` in front of every key (as RoboVLMs' ``convert_old_state_dict``)."""
    ckpt = load_pt(pt)
    sd = next((ckpt[k] for k in ("state_dict", "model_state_dict") if isinstance(ckpt.get(k), dict)), None)
    if sd is None:
        if not any(k.startswith(("model.", "module.")) for k in ckpt):
            raise LayoutError(f"{pt}: expected a 'state_dict' (RoboVLMs' Lightning checkpoint), found keys "
                              f"{sorted(ckpt)[:6]}")
        sd = ckpt
    sd = drop_module_prefix(Weights(sd, where=str(pt)))
    return Weights({k if k.startswith("model.") else "model." + k: v for k, v in sd.items()}, where=str(pt))


def _check_run(run: dict[str, Any], where: Path) -> None:
    """Refuse what vlaforge does not reproduce, naming the config field."""
    head = run.get("act_head") or {}
    wants = {"model": ("kosmos", run.get("model")), "act_head.type": ("LSTMDecoder", head.get("type")),
             "act_head.action_space": ("continuous", head.get("action_space", "continuous")),
             "act_head.history_type": ("post", head.get("history_type", "post")),
             "act_head.down_sample": ("none", head.get("down_sample", "none")),
             "act_head.latent": (1, head.get("latent", 1))}
    for field, (want, got) in wants.items():
        if got != want:
            raise LayoutError(f"{where}: {field} is {got!r}; vlaforge imports RoboVLMs' KosMos policy-head model "
                              f"({field} = {want!r})")
    for flag in ("use_state", "use_vision_resampler", "use_mu_law", "regular_action", "tcp_rel"):
        if run.get(flag):
            raise LayoutError(f"{where}: {flag} is set; vlaforge's import does not reproduce it")
    if not run.get("norm_action", False):
        raise LayoutError(f"{where}: norm_action is not set (the released KosMos models use fixed ±0.65 bounds)")


def _mlp(sd: dict[str, Tensor], prefix: str, ours: str) -> tuple[dict[str, Tensor], tuple[int, ...]]:
    """A ``torch.nn.Sequential`` of Linear-ReLU (…) Linear[-Tanh] under ``prefix``: weights and hidden widths."""
    ids = sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})
    if not ids or ids != list(range(0, 2 * len(ids), 2)):
        raise LayoutError(f"{prefix}*: expected Linear layers at 0, 2, 4, … (found {ids})")
    out = {f"{ours}.{i}.{p}": sd[f"{prefix}{i}.{p}"] for i in ids for p in ("weight", "bias")}
    return out, tuple(sd[f"{prefix}{i}.weight"].shape[0] for i in ids[:-1])


def _head(sd: dict[str, Tensor], width: int, chunk: int, action_dim: int) -> tuple[dict[str, Tensor], dict]:
    """The LSTMDecoder in the lstm head's names, and the head options its shapes give."""
    a = strip_prefix(sd, "model.act_head.")
    rnn = {k: v for k, v in a.items() if k.startswith("rnn.")}
    layers = len({k.rsplit("_l", 1)[1] for k in rnn if k.startswith("rnn.weight_ih_l")})
    if not layers:
        raise LayoutError(f"{sd.where}: no LSTM weights (model.act_head.rnn.weight_ih_l0 missing)")
    hidden = a["rnn.weight_hh_l0"].shape[1]
    if a["rnn.weight_ih_l0"].shape[1] != width:
        raise LayoutError(f"{sd.where}: the LSTM reads {a['rnn.weight_ih_l0'].shape[1]} features, the Kosmos-2 "
                          f"decoder gives {width} (act_head.latent must be 1)")
    out = {"head.fuse." + k[len("rnn."):]: v for k, v in rnn.items()}
    arm, widths = _mlp(a, "actions.mlp.", "head.arm")
    grip, grip_widths = _mlp(a, "gripper.mlp.", "head.gripper")
    if grip_widths != widths:
        raise LayoutError(f"{sd.where}: arm MLP widths {widths} and gripper MLP widths {grip_widths} differ")
    last = 2 * len(widths)
    n_arm, n_grip = a[f"actions.mlp.{last}.weight"].shape[0], a[f"gripper.mlp.{last}.weight"].shape[0]
    if n_arm != chunk * (action_dim - 1) or n_grip != chunk:
        raise LayoutError(f"{sd.where}: the MLPs give {n_arm} arm and {n_grip} gripper outputs; "
                          f"fwd_pred_next_n = {chunk} and action_dim = {action_dim} need {chunk * (action_dim - 1)} "
                          f"and {chunk}")
    return {**out, **arm, **grip}, dict(hidden=hidden, layers=layers, mlp_widths=widths)


def _backbone(sd: Weights, hf: dict[str, Any], tok: Any) -> dict[str, Tensor]:
    """Kosmos-2's weights under ``backbone.model.`` (the LM head tied to the embeddings where the .pt omits it)."""
    bb = {k: v for k, v in strip_prefix(sd, "model.backbone.").items() if not k.endswith(HF_BUFFERS)}
    emb = bb.get("text_model.model.embed_tokens.weight")
    if emb is None:
        raise LayoutError(f"{sd.where}: no Kosmos-2 weights (model.backbone.text_model.model.embed_tokens.weight)")
    head = bb.get("text_model.lm_head.weight")
    if head is not None and not torch.equal(head, emb):
        raise LayoutError(f"{sd.where}: the LM head differs from the token embeddings, Kosmos-2 ties them")
    bb["text_model.lm_head.weight"] = emb  # one tensor: saved once, tied again on load
    d = hf.get("text_config", {}).get("embed_dim")
    if d is not None and emb.shape[1] != d:
        raise LayoutError(f"Kosmos-2 config.json: text embed_dim {d}, the checkpoint's embeddings are {emb.shape[1]}")
    if len(tok) > emb.shape[0]:
        raise LayoutError(f"tokenizer has {len(tok)} tokens, the checkpoint's embedding only {emb.shape[0]} rows")
    return {f"backbone.model.{k}": v for k, v in bb.items()}


@IMPORTERS.register("robovlms")
def import_robovlms(src: Path, unnorm_key: str | None = None, cameras: tuple[str, ...] | None = None,
                    dtype: str = "bfloat16", tokenizer: Path | None = None) -> Imported:
    """A RoboVLMs release directory (``checkpoints/*.pt`` + ``configs/*.json``) or one ``.pt``; ``tokenizer``:
    ``microsoft/kosmos-2-patch14-224``'s directory (tokenizer files + ``config.json``)."""
    pt, run_file = _files(Path(src))
    run = read_json(run_file, "RoboVLMs run config")
    _check_run(run, run_file)
    if tokenizer is None:
        raise LayoutError("robovlms: the release has no tokenizer or Kosmos-2 config; pass --tokenizer DIR "
                          "(microsoft/kosmos-2-patch14-224's tokenizer files and config.json)")
    hf = {k: v for k, v in read_json(Path(tokenizer) / "config.json", "Kosmos-2 config.json").items()
          if k not in ("architectures", "_name_or_path")}
    if hf.get("model_type") != "kosmos-2":
        raise LayoutError(f"{Path(tokenizer) / 'config.json'}: model_type {hf.get('model_type')!r}, expected "
                          f"'kosmos-2' (microsoft/kosmos-2-patch14-224's config)")
    tok = load_source_tokenizer(Path(tokenizer))
    if "<grounding>" not in tok.get_vocab():
        raise LayoutError(f"{tokenizer}: the tokenizer has no '<grounding>' token (not Kosmos-2's)")
    sd = _state_dict(pt)
    weights = _backbone(sd, hf, tok)
    width = weights["backbone.model.text_model.model.embed_tokens.weight"].shape[1]
    weights["backbone.act_token"] = sd["model.action_token"].reshape(-1)
    chunk, window = int(run.get("fwd_pred_next_n", 1)), int(run.get("window_size", 1))
    action_dim = int(run["act_head"].get("action_dim", 7))
    head_w, shapes = _head(sd, width, chunk, action_dim)
    weights.update(head_w)
    leftover = sorted(k for k in sd if not k.startswith(("model.backbone.", "model.act_head.", "model.action_token")))
    if leftover:
        raise LayoutError(f"{pt}: weights vlaforge's import does not use: {leftover[:5]} ({len(leftover)})")
    size = int(run.get("image_size", 224))
    if hf.get("vision_config", {}).get("image_size", size) != size:
        raise LayoutError(f"{run_file}: image_size {size}, the Kosmos-2 vision config has "
                          f"{hf['vision_config']['image_size']}")
    hand = bool(run.get("use_hand_rgb", False))
    cams = tuple(cameras or (("gripper", "static") if hand else ("static",)))
    if len(cams) not in (1, 1 + hand):  # one name for a use_hand_rgb run: the static view alone (as SimplerEnv)
        sees = "the wrist view, then the static one (or the static one alone)" if hand else "one static view"
        raise LayoutError(f"--cameras: this run sees {sees}, got {list(cams)}")
    mean = tuple(run.get("image_mean", CLIP_MEAN_STD[0]))
    std = tuple(run.get("image_std", CLIP_MEAN_STD[1]))
    backbone = BACKBONES.get("kosmos2")(
        arch={"hf_config": hf, "image_mean": list(mean), "image_std": list(std)}, dtype=dtype,
        max_prompt_tokens=int((run.get("tokenizer") or {}).get("max_text_len", 256)), **BACKBONE_OPTIONS)
    head = HEADS.get("lstm")(gripper_weight=float(run.get("arm_gripper_loss_ratio", 0.01)), **HEAD_OPTIONS, **shapes)
    lo, hi = float(run.get("norm_min", -0.65)), float(run.get("norm_max", 0.65))
    bound = np.full(action_dim, 1.0, np.float32)
    key = unnorm_key or pt.stem
    stats = {key: {ACTION: {"min": lo * bound, "max": hi * bound, "q01": lo * bound, "q99": hi * bound,
                            "mean": 0 * bound, "std": bound}}}
    cfg = PolicyConfig(backbone=backbone, head=head, chunk=chunk, exec_steps=1, history=window,
                       normalization={ACTION: "min_max"}, normalize_skip={ACTION: GRIPPER}, cameras=cams,
                       state_dim=0, action_dim=action_dim)
    robot = RobotSpec(cameras={c: (0, 0) for c in cams}, state_dim=0, action_dim=action_dim)
    notes = ["# Imported RoboVLMs checkpoint", "", f"source: {pt}", f"run config: {run_file}",
             f"window {window}, chunk {chunk}, cameras {list(cams)}, bounds [{lo}, {hi}] (gripper kept as ±1)",
             "exact: Kosmos-2, the [ACT] token and its place, the LSTM over the window (recomputed from zero once "
             "full, with the observation_is_pad flags of vlaforge.inference.HistoryWindow), arm/gripper MLPs, "
             "prompt, CLIP preprocessing (PIL bicubic squash), fixed-bound un-normalisation, gripper sign",
             "approximate: the instruction is used as given (RoboVLMs strips surrounding whitespace); a window "
             "sent without observation_is_pad counts every frame as real; each call re-encodes every window "
             "frame (RoboVLMs keeps the [ACT] features of past frames)",
             "not reproduced: SimplerEnv's extra q01/q99 un-normalisation and sticky gripper (OXE checkpoints), "
             "CALVIN's non-raw (TCP-frame) action conversion",
             "licence: RoboVLMs weights Apache-2.0 (model card); Kosmos-2 MIT"]
    return Imported(cfg, weights, tok, stats, key, robot, notes)
