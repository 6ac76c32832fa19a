"""A tiny RoboVLMs KosMos P.H. release (``checkpoints/<name>.pt`` with a Lightning ``state_dict`` +
``configs/<name>.json``) next to a microsoft/kosmos-2-patch14-224-shaped directory (tokenizer + config.json),
written from the documented layout (shared/reference/released_checkpoints.md), not by vlaforge.
"""

from __future__ import annotations

import json

import torch
from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

import hf_dirs

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
WINDOW, CHUNK, LSTM_HIDDEN, BOUND = 2, 4, 32, 0.65


def _mlp(g, widths, out):
    sd, inp = {}, LSTM_HIDDEN
    for i, w in enumerate([*widths, out]):
        sd[f"{2 * i}.weight"] = torch.randn(w, inp, generator=g) * inp**-0.5
        sd[f"{2 * i}.bias"] = torch.randn(w, generator=g) * 0.1
        inp = w
    return sd


def write_robovlms(root, hand=False, action_dim=7, name="kosmos_ph_calvin_abcd", seed=0):
    """RoboVLMs' release layout + microsoft/kosmos-2-patch14-224's directory (tokenizer + config.json)."""
    kosmos = hf_dirs.write("kosmos2", root / "kosmos-2-patch14-224")
    torch.manual_seed(seed)
    model = Kosmos2ForConditionalGeneration(Kosmos2Config.from_pretrained(kosmos)).float()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # layer norms and biases away from their 1 / 0 init
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    d = model.config.text_config.embed_dim
    sd = {f"model.backbone.{k}": v.clone() for k, v in model.state_dict().items()}
    sd["model.action_token"] = torch.randn(d, generator=g) * 0.5
    lstm = torch.nn.LSTM(d, LSTM_HIDDEN, num_layers=4, batch_first=True)
    sd.update({f"model.act_head.rnn.{k}": v.detach() + 0.05 * torch.randn(v.shape, generator=g)
               for k, v in lstm.state_dict().items()})
    sd.update({f"model.act_head.actions.mlp.{k}": v for k, v in _mlp(g, (1024, 512, 256),
                                                                     CHUNK * (action_dim - 1)).items()})
    sd.update({f"model.act_head.gripper.mlp.{k}": v for k, v in _mlp(g, (1024, 512, 256), CHUNK).items()})
    (root / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": sd, "epoch": 4, "global_step": 1000}, root / "checkpoints" / f"{name}.pt")
    run = {"robovlm_name": "RoboKosMos", "model": "kosmos", "image_size": 32, "image_mean": list(CLIP_MEAN),
           "image_std": list(CLIP_STD), "window_size": WINDOW, "fwd_pred_next_n": CHUNK,
           "arm_gripper_loss_ratio": 0.01, "use_hand_rgb": hand, "use_vision_resampler": False,
           "act_head": {"type": "LSTMDecoder", "hidden_size": LSTM_HIDDEN, "action_dim": action_dim,
                        "down_sample": "none", "latent": 1, "fwd_pred_next_n": 1, "window_size": 1,
                        "action_space": "continuous", "with_history": True, "history_type": "post"},
           "tokenizer": {"type": "AutoProcessor", "tokenizer_type": "kosmos", "max_text_len": 256},
           "norm_action": True, "norm_min": -BOUND, "norm_max": BOUND}
    (root / "configs").mkdir()
    (root / "configs" / f"{name}.json").write_text(json.dumps(run, indent=2))
    return root, kosmos
