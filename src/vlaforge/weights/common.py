"""What every importer shares: reading the original files, timm ViT -> HF tower names, statistics, and writing
the imported policy as an ordinary vlaforge checkpoint."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlaforge import config
from vlaforge.backbones.base import check_weight_files, load_tokenizer
from vlaforge.data.stats import Stats
from vlaforge.policy import PolicyConfig, VLAPolicy
from vlaforge.types import ACTION, OBS_STATE, RobotSpec

log = logging.getLogger(__name__)

# Heads of the timm ViTs the released Prismatic-family models use (not derivable from the weights' shapes).
TIMM_HEADS = {"vit_large_patch14_reg4_dinov2": 16, "vit_so400m_patch14_siglip_224": 16, "vit_base_patch16": 12,
              "vit_large_patch14_dinov2": 16, "vit_so400m_patch14_siglip_384": 16}


class LayoutError(ValueError):  # a ValueError: the CLI prints it as one line
    """The source does not have the layout an importer expects; the message says what was found."""


class Weights(dict):
    """A state dict that names its source and what it holds when a key is missing (an unknown layout), instead
    of a bare KeyError."""

    def __init__(self, items: Any = (), where: str = "") -> None:
        super().__init__(items)
        self.where = where

    def __missing__(self, key: str) -> Tensor:
        raise LayoutError(f"{self.where or 'weights'}: no {key!r} (the layout differs from the release's; found "
                          f"{len(self)} keys like {sorted(self)[:4]})")


@dataclass
class Imported:
    """An imported policy before it is written: its config, weights (vlaforge names) and everything else."""

    cfg: PolicyConfig
    weights: dict[str, Tensor]
    tokenizer: Any
    dataset_stats: dict[str, Stats]
    unnorm_key: str
    robot: RobotSpec
    notes: list[str] = field(default_factory=list)  # what is exact and what is approximate


def read_json(path: Path, what: str) -> dict[str, Any]:
    """:func:`vlaforge.config.read_json`, its refusals as :class:`LayoutError` (a missing file included)."""
    try:
        return config.read_json(path, what)
    except (FileNotFoundError, ValueError) as e:
        raise LayoutError(str(e)) from None


def read_safetensors_dir(path: Path) -> dict[str, Tensor]:
    """Every tensor of an HF directory's safetensors file(s) (index + shards, or one file), files checked first."""
    from safetensors.torch import load_file

    out = Weights(where=str(path))
    files = check_weight_files(path)
    for i, f in enumerate(files, 1):
        log.info("reading %s (%d/%d)", f.name, i, len(files))
        out.update(load_file(str(f)))
    return out


def load_pt(path: Path) -> dict[str, Any]:
    """A foreign ``.pt`` file, read with ``weights_only=True`` (tensors and plain containers only, no code)."""
    if not path.is_file():
        raise LayoutError(f"{path}: not found")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LayoutError(f"{path}: not a weights-only torch file ({first})") from None
    if not isinstance(obj, dict):
        raise LayoutError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return Weights(obj, where=str(path))


def find_one(src: Path, pattern: str, what: str) -> Path:
    """The single file in ``src`` matching ``pattern`` (OFT's ``action_head--*_checkpoint.pt`` …)."""
    found = sorted(src.glob(pattern))
    if len(found) != 1:
        raise LayoutError(f"{src}: expected one {what} ({pattern}), found {[p.name for p in found] or 'none'}")
    return found[0]


def strip_prefix(sd: dict[str, Tensor], prefix: str, required: bool = True) -> dict[str, Tensor]:
    """The entries under ``prefix``, without it."""
    where = f"{getattr(sd, 'where', '') or 'weights'} under {prefix!r}"
    out = Weights({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, where=where)
    if required and not out:
        sample = sorted(sd)[:4]
        raise LayoutError(f"no weights under {prefix!r} (found keys like {sample})")
    return out


def drop_module_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove DDP's ``module.`` prefix (checkpoints saved from a wrapped module)."""
    return Weights({k.removeprefix("module."): v for k, v in sd.items()}, where=getattr(sd, "where", ""))


# ---------------------------------------------------------------- timm ViT -> transformers towers
def _blocks(sd: dict[str, Tensor]) -> int:
    ids = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    if not ids:
        raise LayoutError("timm ViT weights have no 'blocks.N.*' entries")
    return max(ids) + 1


def timm_vit_config(sd: dict[str, Tensor], kind: str, heads: int, image_size: int) -> dict[str, Any]:
    """The HF config of a timm ViT's weights: ``kind`` "dino" (Dinov2WithRegisters) or "siglip" (SiglipVision).

    Both use timm's exact GELU and LayerNorm eps 1e-6 (HF's SigLIP default is the tanh GELU)."""
    d = sd["patch_embed.proj.weight"].shape[0]
    common = dict(hidden_size=d, intermediate_size=sd["blocks.0.mlp.fc1.weight"].shape[0],
                  num_hidden_layers=_blocks(sd), num_attention_heads=heads, image_size=image_size,
                  patch_size=sd["patch_embed.proj.weight"].shape[-1], layer_norm_eps=1e-6, hidden_act="gelu")
    if d % heads:
        raise LayoutError(f"timm ViT width {d} is not divisible by {heads} heads")
    if kind == "dino":  # DINOv2's config sizes its MLP by a ratio
        regs = sd["reg_token"].shape[1] if "reg_token" in sd else 0
        ratio = common.pop("intermediate_size") / d
        common["mlp_ratio"] = int(ratio) if ratio == int(ratio) else ratio
        return dict(common, model_type="dinov2_with_registers" if regs else "dinov2", num_register_tokens=regs,
                    qkv_bias="blocks.0.attn.qkv.bias" in sd)
    return dict(common, model_type="siglip_vision_model", vision_use_head="attn_pool.latent" in sd)


def _qkv(sd: dict[str, Tensor], i: int, names: tuple[str, str, str], out: dict[str, Tensor], pre: str) -> None:
    for p in ("weight", "bias"):
        key = f"blocks.{i}.attn.qkv.{p}"
        if key in sd:
            for name, part in zip(names, sd[key].chunk(3, 0), strict=True):
                out[f"{pre}{name}.{p}"] = part


def timm_vit_to_hf(sd: dict[str, Tensor], kind: str) -> dict[str, Tensor]:
    """Rename a timm VisionTransformer state dict onto transformers' tower (see :func:`timm_vit_config`).

    Fused ``qkv`` rows are [q; k; v]; LayerScale ``gamma`` (``scale_factor`` in OpenVLA's HF export) becomes
    ``lambda1``. timm's DINOv2 has no class-token position (``no_embed_class``: the class position is folded into
    ``cls_token``), so HF's class row of the position table is zero — exactly timm's forward. Unused keys
    (DINOv2's mask token) are filled so the tower loads strictly.
    """
    out: dict[str, Tensor] = {}
    n = _blocks(sd)
    if kind == "dino":
        pos, width = sd["pos_embed"], sd["patch_embed.proj.weight"].shape[0]
        out["embeddings.cls_token"] = sd["cls_token"]
        if "reg_token" in sd:
            out["embeddings.register_tokens"] = sd["reg_token"]
        if round(pos.shape[1] ** 0.5) ** 2 == pos.shape[1]:  # no_embed_class: patch rows only
            pos = torch.cat([pos.new_zeros(1, 1, width), pos], 1)
        out["embeddings.position_embeddings"] = pos
        out["embeddings.mask_token"] = pos.new_zeros(1, width)
        out["embeddings.patch_embeddings.projection.weight"] = sd["patch_embed.proj.weight"]
        out["embeddings.patch_embeddings.projection.bias"] = sd["patch_embed.proj.bias"]
        for i in range(n):
            b, pre = f"blocks.{i}.", f"encoder.layer.{i}."
            for a, z in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                         ("attn.proj", "attention.o_proj")):
                for p in ("weight", "bias"):
                    out[f"{pre}{z}.{p}"] = sd[f"{b}{a}.{p}"]
            _qkv(sd, i, ("attention.q_proj", "attention.k_proj", "attention.v_proj"), out, pre)
            for j in (1, 2):
                gamma = sd.get(f"{b}ls{j}.gamma", sd.get(f"{b}ls{j}.scale_factor"))
                if gamma is None:
                    raise LayoutError(f"DINOv2 block {i} has no LayerScale ls{j}.gamma / ls{j}.scale_factor")
                out[f"{pre}layer_scale{j}.lambda1"] = gamma
        out["layernorm.weight"], out["layernorm.bias"] = sd["norm.weight"], sd["norm.bias"]
        return out
    out["embeddings.patch_embedding.weight"] = sd["patch_embed.proj.weight"]
    out["embeddings.patch_embedding.bias"] = sd["patch_embed.proj.bias"]
    out["embeddings.position_embedding.weight"] = sd["pos_embed"][0]
    for i in range(n):
        b, pre = f"blocks.{i}.", f"encoder.layers.{i}."
        for a, z in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("mlp.fc1", "mlp.fc1"),
                     ("mlp.fc2", "mlp.fc2"), ("attn.proj", "self_attn.out_proj")):
            for p in ("weight", "bias"):
                out[f"{pre}{z}.{p}"] = sd[f"{b}{a}.{p}"]
        _qkv(sd, i, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), out, pre)
    out["post_layernorm.weight"], out["post_layernorm.bias"] = sd["norm.weight"], sd["norm.bias"]
    if "attn_pool.latent" in sd:  # SigLIP's attention-pool head (kept by timm, unused by the VLAs)
        a = "attn_pool."
        out["head.probe"] = sd[a + "latent"]
        for p in ("weight", "bias"):
            out[f"head.attention.in_proj_{p}"] = torch.cat([sd[f"{a}q.{p}"], sd[f"{a}kv.{p}"]], 0)
            out[f"head.attention.out_proj.{p}"] = sd[f"{a}proj.{p}"]
            out[f"head.layernorm.{p}"] = sd[f"{a}norm.{p}"]
            out[f"head.mlp.fc1.{p}"] = sd[f"{a}mlp.fc1.{p}"]
            out[f"head.mlp.fc2.{p}"] = sd[f"{a}mlp.fc2.{p}"]
    return out


# ---------------------------------------------------------------- statistics
def stats_entry(entry: dict[str, Any], key: str, where: str) -> tuple[Stats, list[bool] | None]:
    """One dataset's OpenVLA-style statistics -> vlaforge Stats (action, and proprio as the state) + action mask."""
    if "action" not in entry:
        raise LayoutError(f"{where}: statistics of {key!r} have no 'action' entry (have {sorted(entry)})")
    names = ("mean", "std", "min", "max", "q01", "q99")
    out: Stats = {}
    for ours, theirs in ((ACTION, "action"), (OBS_STATE, "proprio")):
        s = entry.get(theirs)
        if isinstance(s, dict) and all(n in s for n in names):
            out[ours] = {n: np.asarray(s[n], dtype=np.float32).reshape(-1) for n in names}
    if ACTION not in out:
        raise LayoutError(f"{where}: action statistics of {key!r} lack some of {names}")
    mask = entry["action"].get("mask")
    return out, None if mask is None else [bool(m) for m in mask]


def pick_unnorm_key(keys: list[str], requested: str | None, where: str) -> str:
    if not keys:
        raise LayoutError(f"{where}: no dataset statistics (norm_stats / dataset_statistics.json is empty)")
    if requested is None:
        if len(keys) == 1:
            return keys[0]
        raise LayoutError(f"{where}: holds statistics of {len(keys)} datasets; choose one with --unnorm_key "
                           f"(one of {sorted(keys)})")
    if requested not in keys:
        raise LayoutError(f"--unnorm_key {requested!r}: not in {where} (available: {sorted(keys)})")
    return requested


def skip_dims(mask: list[bool] | None, key: str = ACTION) -> dict[str, tuple[int, ...]]:
    """OpenVLA's normalization mask (False = raw units) as a policy's ``normalize_skip`` entry for ``key``."""
    if mask is None or all(mask):
        return {}
    return {key: tuple(i for i, m in enumerate(mask) if not m)}


# ---------------------------------------------------------------- writing
def write_checkpoint(imp: Imported, out: Path, overwrite: bool = False) -> Path:
    """Build the policy without random initialisation (weights are assigned), check that every tensor came from
    the source, attach pipelines with the system's statistics, and save an ordinary checkpoint. Everything is
    written to ``OUT.partial`` and renamed at the end: a failed import leaves no half checkpoint at ``out``."""
    import shutil

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty (--overwrite replaces it)")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(imp, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)
    return out


def _write(imp: Imported, out: Path) -> None:
    from accelerate import init_empty_weights

    out.mkdir(parents=True)
    imp.tokenizer.save_pretrained(str(out / "tokenizer"))
    log.info("building the %s policy (%d tensors, %.2f B parameters)", imp.cfg.head.type, len(imp.weights),
             sum(v.numel() for v in imp.weights.values()) / 1e9)
    with init_empty_weights(include_buffers=False):
        policy = VLAPolicy(imp.cfg, assets=out / "tokenizer")
    own = policy.state_dict()
    weights = {**{k: v for k, v in own.items() if k.endswith("_extra_state")}, **imp.weights}  # heads' own state
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shape = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or shape:
        raise LayoutError(f"imported weights do not fit the architecture: missing {missing[:5]} ({len(missing)}), "
                          f"unexpected {unexpected[:5]} ({len(unexpected)}), wrong shape "
                          f"{[(k, tuple(weights[k].shape), tuple(own[k].shape)) for k in shape[:3]]}")
    policy.load_state_dict({k: _own_storage(v.to(own[k].dtype)) if torch.is_tensor(v) else v
                            for k, v in weights.items()}, assign=True)
    policy.make_pipelines(imp.dataset_stats[imp.unnorm_key], imp.robot, dataset_stats=imp.dataset_stats,
                          unnorm_key=imp.unnorm_key)
    log.info("writing %s", out)
    policy.save_pretrained(out)
    (out / "IMPORTED.md").write_text("\n".join(imp.notes) + "\n")


def _own_storage(t: Tensor) -> Tensor:
    """A view into a larger tensor (a slice of a fused qkv) copied into its own storage, so it saves alone."""
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def load_source_tokenizer(path: Path) -> Any:
    """The source's tokenizer (its config.json names a model type transformers does not know: say nothing)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load_tokenizer(path)
    except ValueError as e:
        raise LayoutError(str(e)) from None
    finally:
        hf_logging.set_verbosity(level)
