"""DexVLA's released parts (official Qwen2-VL-2B + the stage-1 ScaleDP-H/L head) -> a vlaforge stage-2 start.

DexVLA (Wen et al., 2025), reference ``juruobenruo/DexVLA`` (``policy_heads/models/transformer_diffusion/
modeling_scaledp.py``, ``qwen2_vla/models/modeling_qwen2_vla.py``, ``qwen2_vla/utils/fusion_modules.py``,
``qwen2_vla/model_load_utils.py``, ``docs/config.json``). Licence: the repository is CC BY-NC 4.0 (non-commercial),
its ``policy_heads/`` Apache-2.0; the Qwen2-VL-2B weights carry their own licence.

What DexVLA publishes is not a finished policy but its two ingredients: the VLM is the official
``Qwen/Qwen2-VL-2B-Instruct`` (HF layout, ``--base``; DexVLA only swaps its config.json for one with ``model_type
qwen2_vla``, ``policy_head_type scale_dp_policy`` and M-RoPE sections [16, 24, 24]), and the head is ScaleDP after
stage 1 (``lesjie/scale_dp_h`` ≈ 1 B, ``lesjie/scale_dp_l`` ≈ 400 M): a torch pickle whose weights sit under
``["nets"]["nets"]`` with ``[policy.]noise_pred_net.`` prefixes. DexVLA's stage-2 loader keeps only those, drops
``cond_obs_emb`` (the stage-1 condition came from another encoder) and leaves the reasoning FiLM freshly
initialised; this importer does the same, so the checkpoint it writes is where ``vlaforge train dexvla_stage2
--init_from CKPT`` starts.

Mapping onto vlaforge (nothing copied): the ``qwen2_vl`` backbone with ``readout="mean"`` and no proprio token;
the ``dit`` head with ``condition="combine"`` (``combine.{0,2,4}`` -> ``head.condition.combine``, ``cond_obs_emb``
-> ``ctx_proj``), ``time_precision="bfloat16"``, no cross-attention, DDIM 10 of 100 squaredcos steps, clip ±1;
``blocks.i.attn.qkv`` rows [0:d] -> ``attn.q``, [d:3d] -> ``attn.kv``, ``attn.proj`` -> ``attn.out``, ``mlp.fc1/fc2``
-> ``mlp.0/2``, ``adaLN_modulation.1`` -> ``ada.1``, ``t_embedder.mlp.0/2`` -> ``time_emb.linear_1/2``,
``final_layer.{linear, adaLN_modulation.1}`` -> ``x_out``, ``ada_out.1``; the reasoning FiLM ``film="projected"``.
Statistics (optional, ``--stats``): DexVLA's ``dataset_stats.pkl`` of a run (actions min/max to [-1, 1], the eps
already inside; qpos mean/std), read by an unpickler that admits numpy arrays only.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from vlaforge.backbones.base import BACKBONES, DTYPES, read_image_stats
from vlaforge.backbones.qwen_vl import CLIP_MEAN_STD
from vlaforge.data.stats import Stats
from vlaforge.heads.base import HEADS
from vlaforge.heads.dit import SIZES
from vlaforge.heads.reasoning import ReasoningConfig
from vlaforge.policy import PolicyConfig
from vlaforge.types import ACTION, OBS_STATE, RobotSpec
from vlaforge.weights import IMPORTERS
from vlaforge.weights.common import (
    Imported,
    LayoutError,
    Weights,
    load_pt,
    load_source_tokenizer,
    pick_unnorm_key,
    read_json,
    read_safetensors_dir,
)

MROPE_SECTION = [16, 24, 24]  # docs/config.json (Qwen2-VL-2B: head_dim 128 -> 64 rotary pairs)
POLICY_HEAD_TYPE = "scale_dp_policy"
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")  # smart_eval_agilex.py: [top, left_wrist, right_wrist]
VIEW_SIZE = 280  # square view closest to DexVLA's 320 x 240 input (Qwen's smart_resize -> 308 x 252, 99 tokens)
PROMPT = "{task}<|im_end|>\n<|im_start|>assistant\n"  # the end of Qwen's chat turn; the answer (reasoning) follows
EXEC_STEPS = 16  # smart_eval_agilex.py query_frequency
REASONING_TOKENS = 256  # evaluate(): generate(max_new_tokens=256)
NOT_QWEN_KEYS = ("architectures", "model_type", "policy_head_type", "policy_head_config", "policy_head_size",
                 "using_film", "llm_loss_weight", "concat", "_name_or_path", "auto_map")


# ---------------------------------------------------------------- the VLM (--base)
def qwen2vl_config(base: Path) -> dict[str, Any]:
    """The HF config of the official Qwen2-VL weights (``qwen2_vl``) or of DexVLA's replaced one
    (``qwen2_vla``), checked against DexVLA's conventions: ScaleDP as policy head, M-RoPE sections that cover
    the head's rotary dimensions ([16, 24, 24] for the 2B)."""
    f = base / "config.json"
    return dexvla_qwen_config(read_json(f, "Qwen2-VL config.json"), str(f))


def dexvla_qwen_config(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A Qwen2-VL ``config.json`` dict (``where`` names it in errors) -> transformers' ``Qwen2VLConfig`` dict, with
    DexVLA's checks and its M-RoPE sections filled in where the file has none."""
    from transformers import Qwen2VLConfig

    if raw.get("model_type") not in ("qwen2_vl", "qwen2_vla"):
        raise LayoutError(f"{where}: model_type {raw.get('model_type')!r}, expected 'qwen2_vl' "
                          f"(Qwen/Qwen2-VL-2B-Instruct) or DexVLA's 'qwen2_vla'")
    head = raw.get("policy_head_type", POLICY_HEAD_TYPE)
    if head != POLICY_HEAD_TYPE:
        raise LayoutError(f"{where}: policy_head_type {head!r}; the DexVLA import is for {POLICY_HEAD_TYPE!r} "
                          f"(ScaleDP)")
    hf = Qwen2VLConfig(**{k: v for k, v in raw.items() if k not in NOT_QWEN_KEYS})
    text = hf.text_config
    rope = dict(text.rope_parameters or {})
    section = rope.get("mrope_section")
    if section is None:
        section = rope["mrope_section"] = list(MROPE_SECTION)
        text.rope_parameters = rope
    head_dim = text.hidden_size // text.num_attention_heads
    if sum(section) * 2 != head_dim:
        raise LayoutError(f"{where}: mrope_section {section} covers {2 * sum(section)} of the head's {head_dim} dims "
                          f"(DexVLA's Qwen2-VL-2B: {MROPE_SECTION})")
    return hf.to_dict()


def qwen2vl_weights(base: Path, hf: dict[str, Any], dtype: str) -> dict[str, Tensor]:
    """The official checkpoint's tensors in vlaforge's names (``backbone.model.`` + transformers' current layout).

    Hub files use the 4.x names (``model.layers`` / ``visual.`` / ``lm_head``); files re-saved by transformers 5
    already have ``model.language_model`` / ``model.visual``. The 2B ties ``lm_head`` to the embeddings."""
    sd = read_safetensors_dir(base)
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k.startswith(("model.language_model.", "model.visual.", "lm_head.")):
            name = k
        elif k.startswith("model."):
            name = "model.language_model." + k.removeprefix("model.")
        elif k.startswith("visual."):
            name = "model." + k
        else:
            raise LayoutError(f"{base}: unexpected tensor {k!r} (not a Qwen2-VL checkpoint?)")
        out["backbone.model." + name] = v
    embed = "backbone.model.model.language_model.embed_tokens.weight"
    if "backbone.model.lm_head.weight" not in out:
        if not hf.get("tie_word_embeddings", hf.get("text_config", {}).get("tie_word_embeddings", False)):
            raise LayoutError(f"{base}: no lm_head.weight and the config does not tie it to the embeddings")
        # one tensor, already in the checkpoint's dtype (a per-key cast would untie the two)
        out[embed] = out["backbone.model.lm_head.weight"] = out[embed].to(DTYPES[dtype])
    return out


# ---------------------------------------------------------------- the ScaleDP head (SRC)
def scaledp_file(src: Path) -> Path:
    if src.is_file():
        return src
    found = [p for ext in ("ckpt", "pt", "pth", "bin") for p in sorted(src.glob(f"*.{ext}"))]
    if len(found) != 1:
        raise LayoutError(f"{src}: expected one ScaleDP checkpoint (*.ckpt / *.pt / *.pth / *.bin), found "
                          f"{[p.name for p in found] or 'none'}")
    return found[0]


def scaledp_weights(path: Path) -> dict[str, Tensor]:
    """``["nets"]["nets"]`` of a stage-1 checkpoint, ``[policy.]noise_pred_net.`` removed, ``cond_obs_emb`` dropped
    (as DexVLA's ``load_pretrain_dit``)."""
    ckpt = load_pt(path)
    nets = ckpt.get("nets")
    nets = nets.get("nets") if isinstance(nets, dict) else None
    if not isinstance(nets, dict):
        raise LayoutError(f"{path}: expected the ScaleDP weights under ['nets']['nets'], found keys {sorted(ckpt)[:6]}")
    out = Weights(where=f"{path} ['nets']['nets'] noise_pred_net.")
    for k, v in nets.items():
        k = k.removeprefix("policy.")
        if k.startswith("noise_pred_net.") and not k.startswith("noise_pred_net.cond_obs_emb."):
            out[k.removeprefix("noise_pred_net.")] = v
    if "x_embedder.weight" not in out:
        raise LayoutError(f"{path}: no noise_pred_net.x_embedder.weight under ['nets']['nets'] (found keys like "
                          f"{sorted(nets)[:4]})")
    return out


def _blocks(sd: dict[str, Tensor]) -> int:
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))


def _fresh_linear(n_in: int, n_out: int, seed: int) -> dict[str, Tensor]:
    """A Linear as torch initialises it (DexVLA's fresh modules), from a fixed seed; the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(n_in, n_out)
    return {"weight": layer.weight.detach(), "bias": layer.bias.detach()}


def scaledp_to_dit(sd: dict[str, Tensor], hidden: int) -> tuple[dict[str, Tensor], dict[str, int]]:
    """ScaleDP's tensors in the ``dit`` head's names (``head.``), and the shapes read from them."""
    width, action_dim = sd["x_embedder.weight"].shape
    depth = _blocks(sd)
    comb_in, comb_out = sd["combine.0.weight"].shape[1], sd["combine.4.weight"].shape[0]
    if comb_out != hidden:
        raise LayoutError(f"ScaleDP combine maps to {comb_out}, the VLM's hidden size is {hidden} (the head was "
                          f"trained for another VLM)")
    if sd["final_layer.linear.weight"].shape[0] != action_dim:
        raise LayoutError(f"ScaleDP predicts {sd['final_layer.linear.weight'].shape[0]} dims for {action_dim}-d "
                          f"actions (learn_sigma heads are not supported)")
    shape = {"width": width, "depth": depth, "action_dim": action_dim, "chunk": sd["pos_embed"].shape[1],
             "state_dim": comb_in - hidden, "combine_hidden": sd["combine.0.weight"].shape[0],
             "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] // width}
    n, h = "head.network.", "head.condition."
    out: dict[str, Tensor] = {f"{n}pos": sd["pos_embed"]}
    pairs = [("x_embedder", "x_in"), ("t_embedder.mlp.0", "time_emb.linear_1"),
             ("t_embedder.mlp.2", "time_emb.linear_2"), ("final_layer.linear", "x_out"),
             ("final_layer.adaLN_modulation.1", "ada_out.1")]
    for i in range(depth):
        b = f"blocks.{i}."
        pairs += [(f"{b}attn.proj", f"{b}attn.out"), (f"{b}mlp.fc1", f"{b}mlp.0"), (f"{b}mlp.fc2", f"{b}mlp.2"),
                  (f"{b}adaLN_modulation.1", f"{b}ada.1")]
        for p in ("weight", "bias"):
            qkv = sd[f"{b}attn.qkv.{p}"]
            out[f"{n}{b}attn.q.{p}"], out[f"{n}{b}attn.kv.{p}"] = qkv[:width], qkv[width:]
    for theirs, ours in pairs:
        for p in ("weight", "bias"):
            out[f"{n}{ours}.{p}"] = sd[f"{theirs}.{p}"]
    for i in (0, 2, 4):
        for p in ("weight", "bias"):
            out[f"{h}combine.{i}.{p}"] = sd[f"combine.{i}.{p}"]
    used = {t for t, _ in pairs} | {f"blocks.{i}.attn.qkv" for i in range(depth)} | {f"combine.{i}" for i in (0, 2, 4)}
    extra = sorted(k for k in sd if k != "pos_embed" and k.rsplit(".", 1)[0] not in used)
    if extra:
        raise LayoutError(f"ScaleDP weights not in DexVLA's stage-1 layout: unexpected {extra[:4]} (is_tinyvla "
                          f"heads are not supported)")
    out.update({f"{h}ctx_proj.{p}": v for p, v in _fresh_linear(hidden, width, 0).items()})  # cond_obs_emb: fresh
    out[f"{h}null_vec"] = torch.zeros(width)  # no condition dropout in DexVLA
    return out, shape


def film_weights(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """DexVLA's fusion modules (``input_action_proj.mlps.{0,2}``, ``reasoning_action_proj.mlps.{0,2}``,
    ``reasoning_film.{scale_fc, shift_fc}``) in the reasoner's names (``film`` rows are [scale; shift])."""
    out = {}
    for theirs, ours in (("input_action_proj", "input_proj"), ("reasoning_action_proj", "reasoning_proj")):
        for i in (0, 2):
            for p in ("weight", "bias"):
                out[f"reasoner.{ours}.{i}.{p}"] = sd[f"{theirs}.mlps.{i}.{p}"]
    for p in ("weight", "bias"):
        out[f"reasoner.film.{p}"] = torch.cat([sd[f"reasoning_film.scale_fc.{p}"],
                                               sd[f"reasoning_film.shift_fc.{p}"]], 0)
    return out


def reasoner_init(hidden: int) -> dict[str, Tensor]:
    """DexVLA's fresh fusion modules: the two projectors as torch initialises a Linear, the FiLM zero."""
    sd: dict[str, Tensor] = {}
    for j, name in enumerate(("input_action_proj", "reasoning_action_proj")):
        for i in (0, 2):
            sd.update({f"{name}.mlps.{i}.{p}": v for p, v in _fresh_linear(hidden, hidden, 1 + 2 * j + i).items()})
    for name in ("scale_fc", "shift_fc"):
        sd.update({f"reasoning_film.{name}.weight": torch.zeros(hidden, hidden),
                   f"reasoning_film.{name}.bias": torch.zeros(hidden)})
    return film_weights(sd)


# ---------------------------------------------------------------- statistics (dataset_stats.pkl)
class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts / lists / numbers / strings and numpy arrays; any other class is refused (no code runs)."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
        ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise LayoutError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed)")
        return super().find_class(module, name)


def read_stats_pkl(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LayoutError(f"--stats {path}: not found")
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise LayoutError(f"--stats {path}: not a DexVLA dataset_stats.pkl ({e})") from None
    if not isinstance(obj, dict):
        raise LayoutError(f"--stats {path}: expected a dict, got {type(obj).__name__}")
    return obj


def dexvla_stats(entry: dict[str, Any], where: str, action_dim: int, state_dim: int) -> Stats:
    """DexVLA's stats dict -> vlaforge Stats: actions min/max (the ±1e-4 eps is already in the file), state
    (qpos) mean/std (std already clipped at 1e-2)."""
    need = ("action_min", "action_max", "qpos_mean", "qpos_std")
    missing = [k for k in need if k not in entry]
    if missing:
        raise LayoutError(f"{where}: missing {missing} (have {sorted(entry)})")
    arr = {k: np.asarray(entry[k], dtype=np.float32).reshape(-1) for k in (*need, "action_mean", "action_std")
           if k in entry}
    for key, dim in (("action_min", action_dim), ("action_max", action_dim), ("qpos_mean", state_dim),
                     ("qpos_std", state_dim)):
        if arr[key].shape[0] != dim:
            raise LayoutError(f"{where}: {key} has {arr[key].shape[0]} dims, the ScaleDP head {dim}")
    act = {"min": arr["action_min"], "max": arr["action_max"],
           "mean": arr.get("action_mean", (arr["action_min"] + arr["action_max"]) / 2),
           "std": arr.get("action_std", (arr["action_max"] - arr["action_min"]) / 2)}
    state = {"mean": arr["qpos_mean"], "std": arr["qpos_std"], "min": arr["qpos_mean"] - arr["qpos_std"],
             "max": arr["qpos_mean"] + arr["qpos_std"]}
    return {ACTION: act, OBS_STATE: state}


def _statistics(stats: Path | None, unnorm_key: str | None, action_dim: int,
                state_dim: int) -> tuple[dict[str, Stats], str, str]:
    """(every dataset's Stats, the chosen key, a note). Without a file: identity placeholders."""
    if stats is None:
        ident = {ACTION: {"min": -np.ones(action_dim, np.float32), "max": np.ones(action_dim, np.float32),
                          "mean": np.zeros(action_dim, np.float32), "std": np.ones(action_dim, np.float32)},
                 OBS_STATE: {"mean": np.zeros(state_dim, np.float32), "std": np.ones(state_dim, np.float32),
                             "min": -np.ones(state_dim, np.float32), "max": np.ones(state_dim, np.float32)}}
        return {"identity": ident}, "identity", ("statistics: none given (identity placeholders: actions stay in "
                                                 "[-1, 1]); training with --init_from brings the data's")
    raw = read_stats_pkl(Path(stats))
    if "action_min" in raw:  # one dataset's stats (train_vla.py)
        return {"dexvla": dexvla_stats(raw, str(stats), action_dim, state_dim)}, "dexvla", f"statistics: {stats}"
    entries = {k: v for k, v in raw.items() if isinstance(v, dict)}
    key = pick_unnorm_key(list(entries), unnorm_key, str(stats))
    out = {k: dexvla_stats(v, f"{stats} [{k!r}]", action_dim, state_dim) for k, v in entries.items()}
    return out, key, f"statistics: {stats} [{key}]"


# ---------------------------------------------------------------- the importer
def dexvla_policy(hf: dict[str, Any], shape: dict[str, int], image_mean: tuple | list, image_std: tuple | list, *,
                  cameras: tuple[str, ...] = CAMERAS, dtype: str = "bfloat16", image_size: int = VIEW_SIZE,
                  where: str = "ScaleDP") -> PolicyConfig:
    """The policy DexVLA runs: Qwen2-VL ``hf`` (:func:`dexvla_qwen_config`), mean-pooled prompt, the reasoning FiLM
    with its projectors, and the ScaleDP head of ``shape`` (as :func:`scaledp_to_dit` reads it: width, depth,
    mlp_ratio, combine_hidden, chunk, action_dim, state_dim). ``import_dexvla`` and ``bench/inference.py`` both build
    it here; ``where`` names the head in the error for a width x depth that is no DiT size."""
    size = next((name for name, (w, d, _) in SIZES.items() if (w, d) == (shape["width"], shape["depth"])), None)
    if size is None:
        raise LayoutError(f"{where}: ScaleDP {shape['width']} wide x {shape['depth']} deep is none of the DiT sizes "
                          f"{ {k: v[:2] for k, v in SIZES.items()} }")
    arch = {"hf_config": hf, "image_size": image_size, "image_mean": list(image_mean), "image_std": list(image_std)}
    backbone = BACKBONES.get("qwen2_vl")(arch=arch, dtype=dtype, proprio="none", readout="mean",
                                         prompt_template=PROMPT, prompt_lowercase=False, max_prompt_tokens=64)
    head = HEADS.get("dit")(size=size, cross_attention=False, mlp_ratio=shape["mlp_ratio"], condition="combine",
                            combine_hidden=shape["combine_hidden"], time_precision="bfloat16",
                            num_train_timesteps=100, num_steps=10, beta_schedule="squaredcos_cap_v2", clip_sample=1.0,
                            repeated_diffusion_steps=1)
    chunk = shape["chunk"]
    return PolicyConfig(backbone=backbone, head=head, chunk=chunk, exec_steps=min(EXEC_STEPS, chunk),
                        normalization={OBS_STATE: "mean_std", ACTION: "min_max"},
                        reasoning=ReasoningConfig(max_tokens=REASONING_TOKENS, loss_weight=1.0, film="projected"),
                        cameras=tuple(cameras), state_dim=shape["state_dim"], action_dim=shape["action_dim"])


@IMPORTERS.register("dexvla")
def import_dexvla(src: Path, base: Path | None = None, unnorm_key: str | None = None,
                  cameras: tuple[str, ...] = CAMERAS, dtype: str = "bfloat16", stats: Path | None = None,
                  image_size: int = VIEW_SIZE) -> Imported:
    """SRC: the stage-1 ScaleDP checkpoint (file, or a directory holding one); ``base``: the Qwen2-VL-2B directory;
    ``image_size``: the square side of every view (a multiple of 28)."""
    if base is None:
        raise LayoutError("dexvla: pass --base QWEN2VL_DIR (the official Qwen/Qwen2-VL-2B-Instruct files; DexVLA "
                          "releases only the ScaleDP head)")
    src, base = Path(src), Path(base)
    pt = scaledp_file(src)
    hf = qwen2vl_config(base)
    hidden = hf["text_config"]["hidden_size"]
    head_w, shape = scaledp_to_dit(scaledp_weights(pt), hidden)
    mean, std = read_image_stats(base, CLIP_MEAN_STD)
    cfg = dexvla_policy(hf, shape, mean, std, cameras=tuple(cameras), dtype=dtype, image_size=image_size,
                        where=str(pt))
    size = cfg.head.size
    weights = qwen2vl_weights(base, hf, dtype)
    weights.update(head_w)
    weights.update(reasoner_init(hidden))
    action_dim, state_dim, chunk = shape["action_dim"], shape["state_dim"], shape["chunk"]
    all_stats, key, stats_note = _statistics(stats, unnorm_key, action_dim, state_dim)
    robot = RobotSpec(cameras={c: (0, 0) for c in cameras}, state_dim=state_dim, action_dim=action_dim)
    notes = ["# Imported DexVLA (Qwen2-VL-2B + stage-1 ScaleDP)", "",
             "Licence: DexVLA is CC BY-NC 4.0 (non-commercial use only); its policy_heads/ (ScaleDP) Apache-2.0; "
             "the Qwen2-VL-2B weights under their own licence.", "",
             f"head: {pt} (ScaleDP {size}: {shape['width']} x {shape['depth']}, chunk {chunk}, "
             f"{action_dim}-d actions, {state_dim}-d state)", f"VLM: {base}", stats_note, "",
             "This is a stage-2 starting point, as DexVLA's own loader builds it: ScaleDP's noise_pred_net weights "
             "exactly (qkv split into q / kv, combine MLP, bf16 timestep sinusoid, adaLN-Zero, DDIM 10/100 "
             "squaredcos, clip ±1); cond_obs_emb, the reasoning projectors (torch's default init, fixed seeds) and "
             "the zero FiLM are fresh, so train it: vlaforge train dexvla_stage2 --init_from THIS --data DIR.",
             f"approximate: every camera is one square {image_size} px view (DexVLA: 320 x 240 resized by Qwen's "
             "smart_resize to 308 x 252); the prompt is the instruction and the end of Qwen's chat turn without "
             "the system/user header; the scheduler runs in float32 (DexVLA's in bf16); the reasoning target is the "
             "reasoning text + EOS (DexVLA appends 'Next action:' before <|im_end|>)."]
    return Imported(cfg, weights, load_source_tokenizer(base), all_stats, key, robot, notes)

