"""VLAPolicy = backbone + action head (+ proprio projector), with its input/output pipelines and checkpoints.

Checkpoint directory (DESIGN §4)::

    config.json        {"format_version", "vlaforge_version", "git_sha", "robot": {...}, "policy": {... "type" tags}}
    model.safetensors  all weights
    processors/        inputs.json, outputs.json, *.safetensors (normalization statistics),
                       dataset_stats.json (mixtures: every dataset's statistics and the unnorm_key)
    tokenizer/         the backbone tokenizer, saved with save_pretrained
    train_state/       training checkpoints only (see vlaforge.train.checkpoint)
    manifest.json      size + SHA-256 of every file above, written last, verified at load (vlaforge.manifest)
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_file, save_model
from torch import Tensor, nn

from vlaforge.backbones.base import BACKBONES, Backbone, BackboneConfig
from vlaforge.config import (
    FORMAT_VERSION,
    ConfigBase,
    ConfigError,
    atomic_write_text,
    check_types,
    parse_overrides,
    read_json,
)
from vlaforge.data.stats import Stats, StatsError, stats_from_json, stats_to_json
from vlaforge.heads.base import HEADS, ActionHead, HeadConfig
from vlaforge.heads.reasoning import Reasoner, ReasoningConfig
from vlaforge.manifest import MANIFEST, verify_enabled, verify_manifest, write_manifest
from vlaforge.processors.base import Pipeline, Step, collate, to_device
from vlaforge.processors.normalize import MODES as NORM_MODES
from vlaforge.processors.pipelines import build_pipelines, dataset_steps, rebind, train_steps
from vlaforge.types import (
    ACTION,
    DATASET,
    INPUT_IDS,
    OBS_ENV_STATE,
    OBS_STATE,
    TASK,
    Context,
    FeatureMismatchError,
    RobotSpec,
    image_key,
)

log = logging.getLogger(__name__)


def _default_backbone() -> BackboneConfig:
    return BACKBONES.get("smolvlm")()


def _default_head() -> HeadConfig:
    return HEADS.get("tokens")()


@dataclass(frozen=True)
class PolicyConfig(ConfigBase):
    backbone: BackboneConfig = field(default_factory=_default_backbone)
    head: HeadConfig = field(default_factory=_default_head)
    chunk: int = 8  # actions predicted per call (H)
    exec_steps: int = 4  # actions of each chunk executed before re-planning (receding horizon); eval's default
    history: int = 1  # observation frames per sample (T); how they are encoded is backbone.history
    normalization: dict[str, str] = field(default_factory=lambda: {OBS_STATE: "mean_std", ACTION: "q01_q99"})
    # Dims left in raw units per feature, e.g. {"action": (-1,)} keeps the gripper unnormalized (HybridVLA).
    normalize_skip: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Filled from the training data; they fix the architecture and are checked whenever data meets the policy.
    cameras: tuple[str, ...] = ()
    state_dim: int = 0
    action_dim: int = 0
    reasoning: ReasoningConfig | None = None  # DexVLA: generate sub-step reasoning, FiLM it into the condition
    # > 0: an auxiliary loss, this weight times the MSE of the (normalized) observation.environment_state (object and
    # goal positions) regressed from the readout. Training only: the policy never reads that state.
    env_state_loss: float = 0.0
    env_state_dim: int = 0  # filled from the training data when env_state_loss > 0

    def validate(self) -> None:
        self.check(self.chunk >= 1, "chunk", ">= 1")
        self.check(self.env_state_loss >= 0, "env_state_loss", ">= 0")
        self.check(self.env_state_dim >= 0, "env_state_dim", ">= 0")
        self.check(1 <= self.exec_steps <= self.chunk, "exec_steps", f"in [1, chunk={self.chunk}]")
        self.check(self.history >= 1, "history", ">= 1")
        for k, m in self.normalization.items():
            if m not in NORM_MODES:
                raise ConfigError(f"normalization.{k}", " | ".join(NORM_MODES), m)
        for k in self.normalize_skip:
            if k not in self.normalization:
                raise ConfigError(f"normalize_skip.{k}", f"a normalized feature {sorted(self.normalization)}", k)

    def with_robot(self, robot: RobotSpec) -> PolicyConfig:
        return self.replace(cameras=tuple(robot.cameras), state_dim=robot.state_dim, action_dim=robot.action_dim)


DATASET_STATS = "dataset_stats.json"  # mixtures: every training dataset's statistics + the chosen unnorm_key


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def data_address(t: Tensor) -> int:
    """Where ``t``'s first element lies in memory: tied / shared tensors have the same one (with the same shape)."""
    return t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()


def save_state_dict(weights: dict[str, Tensor], path: str | Path) -> None:
    """Save a state dict with safetensors, keeping one name of each tied tensor (``load_model`` restores ties)."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    out = {}
    for name, t in weights.items():
        key = (data_address(t), tuple(t.shape))
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().cpu().contiguous()
    save_file(out, str(path))


def load_weights(module: nn.Module, path: str | Path, device: str = "cpu") -> None:
    """Load a safetensors file into ``module`` (tied tensors restored); a mismatch is a ValueError naming the
    file and the first missing / unexpected names."""
    from safetensors import SafetensorError

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        missing, unexpected = load_model(module, str(path), strict=False, device=device)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def _flat_ints(data: Any, prefix: str) -> dict[str, int]:
    if isinstance(data, dict):
        return {k: v for key, val in data.items() for k, v in _flat_ints(val, f"{prefix}.{key}").items()}
    return {prefix: data} if isinstance(data, int) and not isinstance(data, bool) and data > 0 else {}


def check_stored_tensors(module: nn.Module, path: Path, cfg: PolicyConfig, cfg_path: Path) -> None:
    """Refuse weights whose stored shape or kind (float / integer) differs from what ``cfg`` builds, naming
    the config field whose value explains the shape (``policy.head.n_bins is 128 in config.json but the weights
    say 256``); only the safetensors header is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    every = _flat_ints(cfg.to_dict(), "policy")
    for name, t in module.state_dict().items():
        if name not in stored:
            continue
        shape, dtype = stored[name]
        if t.is_floating_point() != (dtype.startswith("F") or dtype == "BF16"):
            raise ValueError(f"{path}: tensor {name} is stored as {dtype}, the model's is {t.dtype} (the header was "
                             f"modified, or the file is not this checkpoint's)")
        if shape == tuple(t.shape) or not t.is_floating_point():  # integer tensors: ids, serialized state
            continue
        section = f"policy.{name.split('.')[0]}."  # head.* -> policy.head.*, plus the top-level sizes
        fields = {k: v for k, v in every.items() if (k.startswith(section) and ".arch." not in k)
                  or k in ("policy.action_dim", "policy.state_dim", "policy.chunk", "policy.history")}
        hints = [f"{field} is {v} in {cfg_path.name} but the weights say {f_dim - off}"
                 for f_dim, m_dim in zip(shape, t.shape, strict=False) if f_dim != m_dim and len(shape) == t.dim()
                 for field, v in fields.items() for off in (0, 1) if m_dim == v + off and f_dim - off > 0]
        what = f"{name} is {list(shape)} in {path.name}, the config builds {list(t.shape)}"
        if hints:
            raise ValueError(f"{cfg_path}: {'; or '.join(dict.fromkeys(hints[:3]))} ({what})")
        raise ValueError(f"{cfg_path} does not match {path.name}: {what}")


def _check_robot(cfg: PolicyConfig, robot: RobotSpec, inputs: Pipeline, outputs: Pipeline, directory: Path) -> None:
    """The ``robot`` section of config.json against the policy section and the processors' features and
    statistics: one line naming the field, the config's value and the other's."""
    cfg_path = directory / "config.json"
    mine = {"cameras": sorted(robot.cameras), "state_dim": robot.state_dim, "action_dim": robot.action_dim}
    policy = {"cameras": sorted(cfg.cameras), "action_dim": cfg.action_dim,
              **({"state_dim": cfg.state_dim} if cfg.state_dim else {})}  # a stateless policy ignores the robot's
    for f, v in policy.items():
        if v != mine[f]:
            raise ValueError(f"{cfg_path}: policy.{f} is {v} but robot.{f} is {mine[f]}")
    dims = {ACTION: "action_dim", OBS_STATE: "state_dim"}
    for name, pipe in (("inputs", inputs), ("outputs", outputs)):
        for step in pipe.steps:
            saved = getattr(step, "robot", None)
            if isinstance(saved, dict):
                other = RobotSpec.from_json(saved)
                theirs = {"cameras": sorted(other.cameras), "state_dim": other.state_dim,
                          "action_dim": other.action_dim}
                for f, v in mine.items():
                    if v != theirs[f]:
                        raise ValueError(f"{cfg_path}: robot.{f} is {v} but processors/{name}.json says {theirs[f]}")
            for key, value in step.state_dict().items():
                feature = key.split("/")[0]
                if feature in dims and np.shape(value)[-1:] != (mine[dims[feature]],):
                    raise ValueError(f"{cfg_path}: robot.{dims[feature]} is {mine[dims[feature]]} but the "
                                     f"processors/{name} statistics '{key}' have shape {list(np.shape(value))}")



def with_sampling(cfg: PolicyConfig, words: Sequence[str]) -> PolicyConfig:
    """``cfg`` with its head's sampling fields set from ``KEY=VALUE`` words (``HeadConfig.sampling``: fields that
    change how actions are drawn, not the weights). Any other key is refused in one line naming it and the
    allowed ones."""
    allowed = type(cfg.head).sampling
    for word in words:
        key, eq, _ = word.partition("=")
        if not eq or key not in allowed:
            raise ValueError(f"sampling option {word!r}: expected KEY=VALUE with KEY one of the {cfg.head.type} "
                             f"head's sampling fields ({', '.join(allowed) or 'it has none'})")
    return parse_overrides(cfg, [f"--head.{w}" for w in words])

class VLAPolicy(nn.Module):
    """A VLA policy. Build with ``VLAPolicy(cfg)`` for training or ``VLAPolicy.from_pretrained(ckpt)``."""

    def __init__(self, cfg: PolicyConfig, assets: Path | None = None) -> None:
        super().__init__()
        if not cfg.cameras or cfg.action_dim <= 0:
            raise ConfigError("policy.cameras/action_dim", "values from the dataset (cfg.with_robot(spec))",
                              (cfg.cameras, cfg.action_dim))
        self.cfg = cfg
        self.backbone: Backbone = cfg.backbone.build(list(cfg.cameras), cfg.state_dim, assets)
        self.head = cfg.head.build(action_dim=cfg.action_dim, chunk=cfg.chunk, state_dim=cfg.state_dim,
                                   lm=self.backbone.lm_spec())
        self._check_head_fits_backbone()
        self.reasoner = Reasoner(cfg.reasoning, self.backbone.hidden_size) if cfg.reasoning else None
        self.env_state_head = self._build_env_state_head()
        self.robot: RobotSpec | None = None
        self.dataset_stats: dict[str, Stats] = {}  # mixtures: every training dataset's statistics
        self.dataset_robots: dict[str, RobotSpec] = {}
        self.unnorm_key: str | None = None
        self.inputs: Pipeline | None = None
        self.outputs: Pipeline | None = None

    def _build_env_state_head(self) -> nn.Module | None:
        cfg = self.cfg
        if cfg.env_state_loss == 0:
            return None
        if cfg.env_state_dim <= 0:
            raise ConfigError("policy.env_state_dim", f"the size of the data's {OBS_ENV_STATE} (> 0) with "
                              "env_state_loss > 0", cfg.env_state_dim)
        if self.head.in_sequence:
            raise ConfigError("policy.env_state_loss", f"0 with the in-sequence head {cfg.head.type!r} (the "
                              "auxiliary regression reads the readout vector)", cfg.env_state_loss)
        h = self.backbone.hidden_size
        return nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, cfg.env_state_dim))

    def _env_state_loss(self, ctx: Context, batch: dict[str, Any]) -> Tensor:
        if OBS_ENV_STATE not in batch:
            raise KeyError(f"policy.env_state_loss: the batch has no '{OBS_ENV_STATE}' (the training data must "
                           "record it)")
        target = batch[OBS_ENV_STATE].to(ctx.pooled.dtype)
        if target.ndim == 3:  # history: the state of the newest frame
            target = target[:, -1]
        return torch.nn.functional.mse_loss(self.env_state_head(ctx.pooled), target)

    def _check_head_fits_backbone(self) -> None:
        """What a head needs of the backbone, refused at build time rather than at the first step."""
        heads = [m for m in self.head.modules() if isinstance(m, ActionHead)]
        if any(h.uses_action_tokens for h in heads):
            self.backbone.check_action_tokens()
        for h in heads:
            for token in h.required_tokens():
                self.backbone.token_id(token)
        bb = self.cfg.backbone
        if bb.attention == "bidirectional" and self.head.in_sequence:
            raise ConfigError("backbone.attention", "causal with an in-sequence head (bidirectional attention would "
                              "let it see the tokens it predicts)", bb.attention)
        if bb.readout == "act" and self.head.prefix_suffix(self.backbone, 1) is not None:
            raise ConfigError("backbone.readout", "'last' or 'mean' with a head that reads after the prompt "
                              "(placeholders)", bb.readout)

    # ------------------------------------------------------------ pipelines
    def make_pipelines(self, stats: Stats | None, robot: RobotSpec, *, dataset_stats: dict[str, Stats] | None = None,
                       dataset_robots: dict[str, RobotSpec] | None = None, unnorm_key: str | None = None) -> None:
        """Build the inputs/outputs pipelines from the training data's statistics and features.

        For a mixture pass every dataset's statistics (and robot specs, whose image sizes may differ) as
        ``dataset_stats`` / ``dataset_robots``: training normalizes and checks each item with its own dataset's.
        ``unnorm_key`` names the dataset whose statistics and image sizes the saved pipelines use.
        """
        diffs = RobotSpec({c: robot.cameras.get(c, (0, 0)) for c in self.cfg.cameras}, self.cfg.state_dim,
                          self.cfg.action_dim).differences(robot, this="policy config", that="dataset",
                                                           stateless_ok=True)
        if diffs:
            raise FeatureMismatchError(diffs, "policy config does not match the dataset")
        if dataset_stats:
            if unnorm_key not in dataset_stats:
                raise KeyError(f"unnorm_key: expected one of {sorted(dataset_stats)}, got {unnorm_key!r}")
            stats = dataset_stats[unnorm_key]
        if stats is None:
            raise StatsError("make_pipelines: no statistics (the dataset has no meta/stats.json; run `vlaforge "
                             "stats DATASET`)")
        self.dataset_stats, self.unnorm_key = dict(dataset_stats or {}), unnorm_key
        self.dataset_robots = dict(dataset_robots or {})
        if self.dataset_robots and unnorm_key in self.dataset_robots:
            robot = self.dataset_robots[unnorm_key]
        self._modes = {k: m for k, m in self.cfg.normalization.items() if k != OBS_STATE or self.cfg.state_dim}
        if self.cfg.env_state_dim:  # the auxiliary target, normalized like the proprio (absent at inference)
            self._modes.setdefault(OBS_ENV_STATE, "mean_std")
        dims = {OBS_STATE: self.cfg.state_dim, ACTION: self.cfg.action_dim}
        self._masks = {}
        for key, skip in self.cfg.normalize_skip.items():
            n = dims.get(key, 0)
            bad = [d for d in skip if not -n <= d < n]
            if bad:
                raise ConfigError(f"normalize_skip.{key}", f"dims in [-{n}, {n})", list(skip))
            mask = np.ones(n, dtype=bool)
            mask[list(skip)] = False
            self._masks[key] = mask.tolist()
        self.robot = robot
        self.inputs, self.outputs = build_pipelines(robot, self.cfg.history, self._modes, stats, self._masks,
                                                    self.backbone.input_steps())

    def fit(self, reader: Any, max_samples: int = 4096, seed: int = 0) -> None:
        """Let heads that learn from the data (quantile bins, FAST) see normalized training action chunks."""
        heads = [m for m in self.modules() if isinstance(m, ActionHead) and m.needs_fit]
        if not heads:
            return
        if self.inputs is None:
            raise RuntimeError("make_pipelines() first")
        norm = dataset_steps(self.inputs, self.dataset_stats, self.dataset_robots)
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(reader), size=min(len(reader), max_samples), replace=False)
        chunks = []
        for i in idx:
            item = reader[int(i)]
            chunks.append(norm({ACTION: item[ACTION], **({DATASET: item[DATASET]} if DATASET in item else {})})[ACTION])
        for head in heads:
            head.fit(np.stack(chunks))

    def train_pipeline(self, augment: Sequence[Step] = ()) -> Pipeline:
        """The inputs pipeline with train-only steps (augmentation, per-dataset normalization) in front of it.

        The result is never saved and never used at inference, so augmentation is off there by construction.
        """
        if self.inputs is None:
            raise RuntimeError("make_pipelines() first")
        return train_steps(self.inputs, self.dataset_stats, self.dataset_robots, augment)

    def use_dataset_stats(self, unnorm_key: str) -> None:
        """Switch the saved pipelines to another training dataset's statistics (mixture checkpoints)."""
        if unnorm_key not in self.dataset_stats:
            raise KeyError(f"unnorm_key: expected one of {sorted(self.dataset_stats) or '[] (not a mixture)'}, "
                           f"got {unnorm_key!r}")
        robot = self.dataset_robots.get(unnorm_key)  # that robot's image sizes
        self.inputs = rebind(self.inputs, self.dataset_stats[unnorm_key], robot)
        self.outputs = rebind(self.outputs, self.dataset_stats[unnorm_key])
        self.robot = robot or self.robot
        self.unnorm_key = unnorm_key

    # ------------------------------------------------------------ model
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def _use_cache(self) -> bool:
        return self.head.in_sequence or self.head.uses_kv_cache or self.reasoner is not None

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The training loss (so that DDP/FSDP wrappers, which hook ``forward``, see the whole computation)."""
        return self.loss(batch)

    def encode(self, batch: dict[str, Any]) -> Context:
        """The prefix as the head reads it: with the head's joint suffix (OFT's placeholders) and, for readout
        heads, the features in the head's dtype (an fp32 head on a bf16 VLM)."""
        suffix = self.head.prefix_suffix(self.backbone, batch[INPUT_IDS].shape[0])
        ctx = self.backbone.encode(batch, use_cache=self._use_cache, suffix=suffix)
        dtype = next((p.dtype for p in self.head.parameters() if p.is_floating_point()), None)
        if dtype is not None and ctx.hidden.dtype != dtype and not self.head.in_sequence:
            ctx.hidden = ctx.hidden.to(dtype)
            ctx.pooled = ctx.pooled.to(dtype) if ctx.pooled is not None else None
            ctx.history = ctx.history.to(dtype) if ctx.history is not None else None
        return ctx

    def loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        ctx = self.encode(batch)
        r = self.reasoner.train_step(ctx, batch) if self.reasoner is not None else None
        out = self.head.loss(ctx, batch)
        if r is not None:
            out = {**out, "loss": out["loss"] + self.cfg.reasoning.loss_weight * r, "reasoning_loss": r.detach()}
        if self.env_state_head is not None:
            e = self._env_state_loss(ctx, batch)
            out = {**out, "loss": out["loss"] + self.cfg.env_state_loss * e, "env_state_loss": e.detach()}
        return out

    @torch.no_grad()
    def sample(self, batch: dict[str, Any], generator: torch.Generator | None = None, info: dict | None = None,
               **options: Any) -> Tensor:
        """Normalized action chunks (B, H, Da); the prefix is encoded once.

        ``info``, if given, receives what the policy produced besides actions (generated reasoning text and ids,
        generated action-token ids, HybridVLA's per-row gate decision).
        """
        ctx = self.encode(batch)
        if self.reasoner is not None:
            ids = self.reasoner.generate(ctx, self.backbone.tokenizer.eos_token_id)
            if info is not None:
                info["reasoning"] = self.backbone.tokenizer.batch_decode(ids, skip_special_tokens=True)
                info["reasoning_ids"] = ids.tolist()  # EOS-padded after a row's EOS
        if not torch.isfinite(ctx.hidden[ctx.mask.bool()]).all():  # a token head would decode NaN as bin 0
            raise ValueError("the backbone produced non-finite (NaN/inf) features for this batch")
        actions = self.head.sample(ctx, batch, generator=generator, **options)
        if not torch.isfinite(actions).all():
            raise ValueError(f"the {self.cfg.head.type} head produced non-finite (NaN/inf) actions")
        if info is not None:
            for key in ("hybrid_averaged", "token_ids"):
                if key in ctx.extras:
                    info[key] = ctx.extras[key].tolist()
        return actions

    # ------------------------------------------------------------ inference API
    def prepare(self, observations: list[dict[str, Any]]) -> dict[str, Any]:
        """Raw observations (robot units, uint8 images) -> a model batch on the policy's device."""
        if self.inputs is None:
            raise RuntimeError("policy has no input pipeline (load it with from_pretrained)")
        items = [self.inputs(dict(o)) for o in observations]
        batch = collate(items)
        return to_device(batch, self.device)

    def postprocess(self, actions: Tensor) -> np.ndarray:
        """Normalized (B, H, Da) -> robot units (B, H, Da)."""
        return np.stack([self.outputs({ACTION: a})[ACTION] for a in actions.float().cpu().numpy()])

    @torch.no_grad()
    def predict_actions(self, observations: list[dict[str, Any]], seed: int | None = None,
                        **options: Any) -> np.ndarray:
        """A batch of raw observations -> action chunks (B, H, Da) in robot units."""
        batch = self.prepare(observations)
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        return self.postprocess(self.sample(batch, generator=gen, **options))

    def predict_action(self, images: dict[str, np.ndarray], instruction: str, state: Any = None,
                       seed: int | None = None, **options: Any) -> np.ndarray:
        """One observation -> an action chunk (H, Da) in the robot's units."""
        obs: dict[str, Any] = {image_key(cam): img for cam, img in images.items()}
        obs[TASK] = instruction
        if state is not None:
            obs[OBS_STATE] = np.asarray(state)
        return self.predict_actions([obs], seed=seed, **options)[0]

    # ------------------------------------------------------------ checkpoints
    def check_compatible(self, robot: RobotSpec, what: str = "data") -> None:
        """Raise :class:`FeatureMismatchError` listing every camera / dim difference with ``robot``."""
        if self.robot is None:
            raise RuntimeError("policy has no robot spec (it was not trained or loaded)")
        diffs = self.robot.differences(robot, this="checkpoint", that=what, stateless_ok=True)
        if diffs:
            raise FeatureMismatchError(diffs, f"checkpoint does not match the {what}")

    def merge_lora(self, inplace: bool = False) -> VLAPolicy:
        """Fold the LoRA adapters into the base weights: a policy with ``backbone.lora = None`` (vlaforge.lora)."""
        from vlaforge.lora import merge_lora

        return merge_lora(self, inplace=inplace)

    def save_pretrained(self, directory: str | Path, weights: dict[str, Tensor] | None = None) -> Path:
        """Write the checkpoint; ``weights`` (a full state dict, e.g. gathered from shards or an EMA) replaces this
        module's own weights in ``model.safetensors``."""
        from vlaforge import __version__

        directory = Path(directory)
        if self.inputs is None or self.outputs is None or self.robot is None:
            raise RuntimeError("save_pretrained needs pipelines: call make_pipelines(stats, robot) first")
        directory.mkdir(parents=True, exist_ok=True)
        resolved = self.cfg.replace(backbone=self.backbone.resolved_config())
        meta = {"format_version": FORMAT_VERSION, "vlaforge_version": __version__, "git_sha": _git_sha(),
                "robot": self.robot.to_json(), "policy": resolved.to_dict()}
        if weights is None:
            save_model(self, str(directory / "model.safetensors"))
        else:
            save_state_dict(weights, directory / "model.safetensors")
        self.inputs.save(directory / "processors", "inputs")
        self.outputs.save(directory / "processors", "outputs")
        if self.dataset_stats:
            atomic_write_text(directory / "processors" / DATASET_STATS, json.dumps(
                {"unnorm_key": self.unnorm_key,
                 "datasets": {k: stats_to_json(v) for k, v in self.dataset_stats.items()},
                 "robots": {k: r.to_json() for k, r in self.dataset_robots.items()}}, indent=1))
        self.backbone.save_assets(directory / "tokenizer")
        atomic_write_text(directory / "config.json", json.dumps(meta, indent=2) + "\n")
        write_manifest(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu",
                        unnorm_key: str | None = None, verify: bool | None = None,
                        sampling: Sequence[str] = ()) -> VLAPolicy:
        """Load a checkpoint; ``unnorm_key`` picks which training dataset's statistics (de)normalize (mixtures).

        ``sampling``: ``KEY=VALUE`` words that set the head's sampling fields (``HeadConfig.sampling``, e.g.
        ``num_steps=20 init_noise=0``) for this load; the checkpoint's files stay as they are.

        ``verify`` (default: on unless ``$VLAFORGE_VERIFY=0``) checks every file against ``manifest.json``
        first; a checkpoint without one (older vlaforge) loads with a warning. Every refusal is one line naming
        the file (and the config field) and what is wrong.
        """
        directory = Path(directory)
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{directory} is not a vlaforge checkpoint (no config.json)")
        if verify_enabled(verify) and not verify_manifest(directory):
            log.warning("%s has no %s (written by an older vlaforge): its files cannot be checked for corruption or "
                        "tampering; `vlaforge export` re-saves it with one", directory, MANIFEST)
        meta = read_json(cfg_path, "checkpoint config")
        if not isinstance(meta, dict):
            raise ValueError(f"{cfg_path}: expected a JSON object, got {type(meta).__name__}")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{cfg_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        for key in ("policy", "robot"):
            if not isinstance(meta.get(key), dict):
                raise ValueError(f"{cfg_path}: field '{key}' must be an object, got {meta.get(key)!r:.80}")
        try:
            cfg = PolicyConfig.from_dict(meta["policy"], field="policy")
            check_types(RobotSpec, meta["robot"], "robot")
            robot = RobotSpec.from_json(meta["robot"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{cfg_path}: {e}") from None
        if sampling:
            cfg = with_sampling(cfg, sampling)
        policy = cls(cfg, assets=directory / "tokenizer")
        weights = directory / "model.safetensors"
        if weights.is_file():
            check_stored_tensors(policy, weights, cfg, cfg_path)
        load_weights(policy, weights, device=str(map_location))
        bad = [n for n, t in policy.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise ValueError(f"{weights}: non-finite (NaN/inf) weights in {len(bad)} tensors, e.g. {bad[:3]}")
        policy.robot = robot
        policy.inputs = Pipeline.load(directory / "processors", "inputs", tokenizer=policy.backbone.tokenizer)
        policy.outputs = Pipeline.load(directory / "processors", "outputs")
        _check_robot(cfg, robot, policy.inputs, policy.outputs, directory)
        ds_path = directory / "processors" / DATASET_STATS
        if ds_path.is_file():
            saved = read_json(ds_path, "mixture statistics")
            try:
                policy.dataset_stats = {k: stats_from_json(v) for k, v in saved["datasets"].items()}
                policy.unnorm_key = saved["unnorm_key"]
                policy.dataset_robots = {k: RobotSpec.from_json(v) for k, v in saved.get("robots", {}).items()}
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"{ds_path}: not a vlaforge mixture statistics file "
                                 f"({type(e).__name__}: {e})") from None
        if unnorm_key is not None and unnorm_key != policy.unnorm_key:
            policy.use_dataset_stats(unnorm_key)
        return policy.to(map_location).eval()
