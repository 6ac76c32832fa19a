"""The backbone contract: an observation (camera images, proprio, instruction) -> a prefix :class:`Context`.

A family file says how to build its HF model (random ``size``, ``pretrained=DIR`` or a checkpoint's ``arch``),
how to embed images and which tokens wrap each view. Everything else lives here once: prefix assembly, the KV
cache, ``extend`` for in-sequence heads, readout pooling, proprio as an MLP token or as action tokens, history
frames, action-token vocabulary, freezing, LoRA and gradient checkpointing.

Prefix layout (one row; the prompt is right-padded, pads are masked out)::

    [start] [view-1 wrapper, image tokens, wrapper] ... [view-V ...] [proprio] [prompt prefix] [prompt] [pad ...] [ACT]

(``proprio_position="after_prompt"`` moves the proprio token after the pads, SmolVLA's layout.)

Position ids follow the real tokens only (``cumsum(mask) - 1`` unless a family overrides :meth:`positions`),
so a suffix appended after the pads continues the real positions.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, DynamicCache

from vlaforge.config import Choice, ChoiceType, ConfigBase, ConfigError
from vlaforge.processors.base import Step
from vlaforge.processors.bins import GRIDS
from vlaforge.processors.image import INTERPOLATIONS, RESIZE_MODES, ImageStep
from vlaforge.processors.text import Tokenize, token_id
from vlaforge.registry import Registry
from vlaforge.types import ATTENTION_MASK, INPUT_IDS, OBS_STATE, STITCHED_CAMERA, Context, LMSpec, image_key

log = logging.getLogger(__name__)

BACKBONES: Registry[type[BackboneConfig]] = Registry("backbones", lazy={
    name: f"vlaforge.backbones.{module}" for name, module in {
        "smolvlm": "smolvlm", "idefics3": "smolvlm", "paligemma": "paligemma", "qwen2_vl": "qwen_vl",
        "qwen2_5_vl": "qwen_vl", "qwen3_vl": "qwen_vl", "llava": "llava", "llava_onevision": "llava",
        "kosmos2": "kosmos2", "prismatic": "prismatic"}.items()})

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
READOUTS = ("last", "mean", "act")
ACTION_TOKENS = ("reuse_last", "count_down", "add")
COMPONENTS = ("vision", "projector", "lm")


LORA_INITS = ("default", "gaussian", "pissa", "olora")


@dataclass(frozen=True)
class LoraConfig(ConfigBase):
    """LoRA on the language model through peft.

    The whole VLM is frozen except the adapters (and the components named in ``full``); the action head and the
    proprio/readout parts outside the VLM always train fully (OpenVLA, RoboVLMs, DexVLA). ``init`` is peft's
    ``init_lora_weights``: "default" (B = 0), "gaussian", or the SVD/QR ones "pissa" / "olora", which also rewrite
    the base weights (the checkpoint stores them). ``vlaforge.lora.merge_lora`` folds the adapters back in.
    ``quantize`` = "nf4" / "fp4" is QLoRA: the language model's linear layers are stored frozen in 4 bits through
    bitsandbytes (``double_quant`` also quantizes their scales) and the adapters train on top (vlaforge.quantize).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = ()  # module-name suffixes; empty: the family's attention + MLP projections
    init: str = "default"
    full: tuple[str, ...] = ()  # VLM components still trained fully next to the adapters: "vision", "projector"
    quantize: str = "none"  # QLoRA: "nf4" | "fp4" stores the LM's linear layers in 4 bits (bitsandbytes)
    double_quant: bool = True  # QLoRA's double quantization of the 4-bit blocks' scales

    def validate(self) -> None:
        self.check(self.r >= 1, "r", ">= 1")
        self.check(0 <= self.dropout < 1, "dropout", "in [0, 1)")
        if self.init not in LORA_INITS:
            raise ConfigError("backbone.lora.init", f"one of {LORA_INITS}", self.init)
        if any(c not in ("vision", "projector") for c in self.full):
            raise ConfigError("backbone.lora.full", "a subset of ('vision', 'projector')", self.full)
        from vlaforge.quantize import QUANT_TYPES

        if self.quantize not in QUANT_TYPES:
            raise ConfigError("backbone.lora.quantize", f"one of {QUANT_TYPES}", self.quantize)


@dataclass(frozen=True)
class BackboneConfig(Choice, ChoiceType):
    """Options shared by every backbone family."""

    registry: ClassVar[Registry] = BACKBONES
    sizes: ClassVar[dict[str, Any]] = {}  # the family's named random-init architectures
    model_types: ClassVar[tuple[str, ...]] = ()  # config.json model_type(s) a pretrained directory may have

    size: str = "tiny"  # a named random-init architecture of the family, used when `pretrained` is not set
    pretrained: str | None = None  # local directory written by `save_pretrained` (weights + processor files)
    image_size: int | None = None  # input resolution override (random-init sizes; Qwen-VL pretrained too)
    views: str = "separate"  # "separate": each camera's tokens in the sequence; "stitch": one stitched image
    proprio: str = "mlp"  # "none" | "mlp": one projected token | "linear": one Linear token (SmolVLA's state_proj)
    #                      | "tokens": binned state as action tokens | "text": binned on `proprio_bins`, the action
    #                      tokens decoded to text into the prompt's "{state}" (LLaVA-VLA)
    proprio_position: str = "before_prompt"  # "before_prompt" | "after_prompt": the proprio token after the padded
    #                      prompt (SmolVLA), where with attention="prefix_lm" the images and prompt do not see it
    history: str = "interleaved"  # T > 1 frames: "interleaved" in one sequence | "per_frame": encoded alone
    readout: str = "mean"  # pooled vector for readout heads: "last" token, masked "mean", or a learned "act" token
    # > 0: K spatial-softmax keypoints per view (the expected image (x, y) of K learned feature maps over the family's
    # patch grid, as CNN visuomotor policies read out images) projected into one token after each view's image tokens
    keypoints: int = 0
    # True: every view's keypoint coordinates also reach the readout past the LM (a Linear added to the pooled
    # vector), the spatial skip of CNN policies, where the LM's few layers would otherwise have to carry them
    keypoints_to_readout: bool = False
    action_tokens: str = "reuse_last"  # "reuse_last": the last N free ids | "count_down": OpenVLA's | "add": new
    num_action_tokens: int = 256  # vocabulary ids reserved for action (and proprio) bins
    action_token_offset: int = 0  # count_down: start this many ids below the base vocabulary (HybridVLA's need_to_sub)
    # special tokens added to the tokenizer (rows grown if needed) unless it has them: HybridVLA's "<BOD>", "<EOD>";
    # "▁" gives the random-init tokenizers OpenVLA's prompt suffix
    add_tokens: tuple[str, ...] = ()
    prompt_template: str = "{task}"
    prompt_lowercase: bool = True  # lower-case and tidy the instruction first (OpenVLA's predict_action does not)
    prompt_suffix: str = ""  # a token string appended after the prompt ("▁" after OpenVLA's "Out:")
    prompt_special_tokens: bool = False  # let the tokenizer add its special tokens (LeRobot's tokenizer step does)
    prompt_state_bins: int = 0  # > 0: the normalized state as that many bins fills "{state}" in the template (pi0.5)
    max_prompt_tokens: int = 48
    image_resize: str = "pad"  # "pad": keep the aspect ratio (letterbox) | "squash" (Prismatic/OpenVLA)
    image_interpolation: str = "bilinear"  # "bilinear" (torch) | "bicubic" (PIL, as OpenVLA's processor)
    image_crop: float = 1.0  # < 1: centre crop of this area fraction after resizing, resized back (OpenVLA-OFT)
    dtype: str = "float32"
    freeze: tuple[str, ...] = ()  # any of "vision", "projector", "lm"
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    # "causal" | "bidirectional": every token attends to every real token of the sequence (OpenVLA-OFT's patched
    # Llama attention, for parallel decoding of placeholder tokens) | "prefix_lm": the images and the prompt attend
    # to each other bidirectionally, tokens after the prompt (a proprio token placed after it, [ACT], a joint
    # suffix) causally (SmolVLA's and pi0's block mask)
    attention: str = "causal"
    proprio_bins: str = "uniform_edges"  # proprio="text": the bin grid ("uniform_edges" | "norm_bins")
    # text tokenized after the start token(s), before the first image (a chat turn around the image: LLaVA's
    # "{system} USER: <image>\n..."); the prompt template is the text after the image
    prompt_before_image: str = ""
    stitch_view_size: int = 0  # views="stitch": > 0 resizes each view (Lanczos) to this wide x this / n_views tall
    # The resolved architecture (HF config dict and processor numbers), filled in when a policy is saved so a
    # checkpoint rebuilds the model without `pretrained`. Not meant to be set by hand.
    arch: dict[str, Any] | None = None

    def validate(self) -> None:
        for name, value, allowed in (("views", self.views, ("separate", "stitch")),
                                     ("proprio", self.proprio, ("none", "mlp", "linear", "tokens", "text")),
                                     ("proprio_bins", self.proprio_bins, GRIDS),
                                     ("proprio_position", self.proprio_position, ("before_prompt", "after_prompt")),
                                     ("history", self.history, ("interleaved", "per_frame")),
                                     ("readout", self.readout, READOUTS),
                                     ("action_tokens", self.action_tokens, ACTION_TOKENS),
                                     ("dtype", self.dtype, tuple(DTYPES)),
                                     ("image_resize", self.image_resize, RESIZE_MODES),
                                     ("image_interpolation", self.image_interpolation, INTERPOLATIONS),
                                     ("attention", self.attention, ("causal", "bidirectional", "prefix_lm"))):
            if value not in allowed:
                raise ConfigError(f"backbone.{name}", f"one of {allowed}", value)
        unknown = [c for c in self.freeze if c not in COMPONENTS]
        if unknown:
            raise ConfigError("backbone.freeze", f"a subset of {COMPONENTS}", self.freeze)
        self.check(self.num_action_tokens >= 2, "num_action_tokens", ">= 2")
        self.check(self.action_token_offset >= 0, "action_token_offset", ">= 0")
        self.check(self.max_prompt_tokens > 0, "max_prompt_tokens", "> 0")
        self.check(self.keypoints >= 0, "keypoints", ">= 0 (0: none)")
        self.check(self.keypoints > 0 or not self.keypoints_to_readout, "backbone.keypoints_to_readout",
                   "false without keypoints (set backbone.keypoints > 0)")
        self.check(0 < self.image_crop <= 1, "image_crop", "in (0, 1]")
        self.check("{task}" in self.prompt_template, "prompt_template", "a string containing '{task}'")
        self.check(self.proprio != "text" or "{state}" in self.prompt_template, "prompt_template",
                   "a string containing '{state}' (proprio='text')")
        self.check(self.stitch_view_size >= 0, "stitch_view_size", ">= 0")
        self.check(self.prompt_state_bins >= 0, "prompt_state_bins", ">= 0")
        self.check(not (self.prompt_state_bins and self.proprio == "text"), "prompt_state_bins",
                   "0 with proprio='text' (one state in the prompt)")
        self.check(("{state}" in self.prompt_template) == (self.prompt_state_bins > 0 or self.proprio == "text"),
                   "prompt_template", "a '{state}' field exactly when prompt_state_bins > 0 or proprio='text'")
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError("backbone.image_size", "> 0 or null", self.image_size)
        if self.pretrained is None and self.arch is None:
            self.check(self.size in self.sizes, "size", f"one of {sorted(self.sizes)} (or set pretrained=DIR)")

    def build(self, cameras: list[str], state_dim: int, assets: Path | None = None) -> Backbone:
        """Build the module for these cameras and state size. ``assets``: a checkpoint's ``tokenizer/``."""
        return self.backbone_class()(self, cameras, state_dim, assets)

    @classmethod
    def backbone_class(cls) -> type[Backbone]:
        raise NotImplementedError


@dataclass
class PrefixInfo:
    """What ``lm_forward`` learns about the prefix being encoded (``None`` when extending)."""

    spans: list[tuple[int, int]]  # (start, length) of each view's image tokens in the sequence
    image_extra: dict[str, Any]  # anything ``embed_images`` returned besides the tokens
    bidirectional: int = 0  # attention="prefix_lm": the first this many tokens (images + prompt) see each other


@dataclass
class Built:
    """What a family's loader returns."""

    model: nn.Module  # the whole model (saved and loaded as one state dict)
    tokenizer: Any
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]


class SpatialKeypoints(nn.Module):
    """Image features on a square grid (N, g*g, C) -> one token (N, D): the expected (x, y) in [-1, 1] of each of
    ``k`` learned feature maps (a 1x1 projection, a spatial softmax with a learned temperature), through a Linear.

    The keypoint readout of CNN visuomotor policies (Levine et al. 2016; the spatial softmax of robomimic and
    Diffusion Policy), here as an extra prefix token so that every head can use explicit image coordinates."""

    def __init__(self, channels: int, k: int, dim: int) -> None:
        super().__init__()
        self.logits = nn.Linear(channels, k)
        self.log_temp = nn.Parameter(torch.zeros(()))
        self.proj = nn.Linear(2 * k, dim)

    def coords(self, grid: Tensor) -> Tensor:
        """(N, g*g, C) -> (N, 2k) float32: each keypoint's expected (x, y)."""
        p = grid.shape[1]
        g = round(p**0.5)
        if g * g != p:
            raise ValueError(f"backbone.keypoints: expected a square grid of image features, got {p} per view")
        attn = torch.softmax(self.logits(grid).float().transpose(1, 2) / self.log_temp.exp(), -1)  # (N, k, P)
        axis = torch.linspace(-1.0, 1.0, g, device=grid.device)
        xy = torch.stack([axis.repeat(g), axis.repeat_interleave(g)], -1)  # (P, 2): x along a row, y down
        return (attn @ xy).flatten(1)

    def forward(self, grid: Tensor) -> Tensor:
        return self.proj(self.coords(grid).to(self.proj.weight.dtype))


class Backbone(nn.Module):
    """Base class. A family implements the ``# family hooks`` section; see ``smolvlm.py`` for a short one."""

    supports_kv_cache: ClassVar[bool] = True
    bidirectional_prefix: ClassVar[bool] = False  # prefix-LM attention over the prefix (PaliGemma)
    image_processor_class: ClassVar[str | None] = None  # transformers' PIL image processor, for export_pretrained
    default_lora_targets: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj")
    image_size: int
    hidden_size: int

    def __init__(self, cfg: BackboneConfig, cameras: list[str], state_dim: int, assets: Path | None = None) -> None:
        super().__init__()
        self.cfg, self.cameras, self.state_dim = cfg, list(cameras), state_dim
        built = self._load(cfg, assets)
        self.model = built.model
        self.tokenizer = built.tokenizer
        self.image_mean, self.image_std = tuple(built.image_mean), tuple(built.image_std)
        self._init_family()  # sets image_size, hidden_size, lm, lm_head, token layout
        if cfg.prompt_before_image:  # after the family's start token(s), before the first view
            before = self.tokenizer(cfg.prompt_before_image, add_special_tokens=False)["input_ids"]
            self._start = torch.cat([self._start, torch.tensor(before, dtype=torch.long)])
        if cfg.add_tokens and assets is None:  # a checkpoint's tokenizer and weights already hold them
            self._add_tokens(cfg.add_tokens)
        if cfg.attention != "causal" and type(self).lm_forward is not Backbone.lm_forward:
            raise ConfigError("backbone.attention", "causal (this family builds its own attention masks)",
                              cfg.attention)
        self._setup_action_tokens(assets is not None)
        d = self.hidden_size
        self.proprio = (nn.Sequential(nn.Linear(state_dim, d), nn.GELU(), nn.Linear(d, d)) if cfg.proprio == "mlp"
                        else nn.Sequential(nn.Linear(state_dim, d)) if cfg.proprio == "linear" else None
                        ) if state_dim > 0 else None
        self.act_token = nn.Parameter(torch.randn(d) * 0.02) if cfg.readout == "act" else None
        # a family with a finer grid than its LM tokens (SmolVLM before the pixel shuffle) sets _grid_dim and returns
        # the grid as embed_images' extra "patch_grid"; otherwise the keypoints read the projected image tokens
        self.keypoints = (SpatialKeypoints(getattr(self, "_grid_dim", d), cfg.keypoints, d) if cfg.keypoints
                          else None)
        self.keypoint_readout = (nn.Linear(2 * cfg.keypoints * len(self.cameras), d)
                                 if cfg.keypoints and cfg.keypoints_to_readout else None)
        if cfg.proprio in ("tokens", "text") and state_dim > 0:
            self.check_action_tokens()
        self._apply_training_options()

    # ------------------------------------------------------------ family hooks
    def _load(self, cfg: BackboneConfig, assets: Path | None) -> Built:
        """Build model + tokenizer from ``cfg.arch`` (checkpoint), ``cfg.pretrained`` or ``cfg.size``."""
        raise NotImplementedError

    def _init_family(self) -> None:
        """Set ``image_size``, ``hidden_size``, ``_lm``/``_lm_head`` and the token layout (``_set_layout``)."""
        raise NotImplementedError

    def embed_images(self, pixel_values: Tensor) -> Tensor | tuple[Tensor, dict[str, Any]]:
        """(N, 3, S, S) normalized pixels -> (N, n_tokens, hidden_size) in the LM's input space.

        May also return a dict of extras for :meth:`lm_forward` (Qwen3-VL's deepstack features).
        """
        raise NotImplementedError

    def components(self) -> dict[str, nn.Module]:
        """The freezable parts: ``{"vision": ..., "projector": ..., "lm": ...}``."""
        raise NotImplementedError

    def arch(self) -> dict[str, Any]:
        """The architecture as plain JSON (written into checkpoints)."""
        return {"hf_config": self.model.config.to_dict()}

    def positions(self, mask: Tensor, image_spans: list[tuple[int, int]]) -> Tensor:
        """Position ids of the prefix; ``image_spans`` are (start, length) of each view's image tokens."""
        return (mask.cumsum(1) - 1).clamp(min=0)

    def suffix_positions(self, ctx: Context, mask: Tensor) -> Tensor:
        """Position ids of ``extend`` tokens: they continue after the prefix's (and earlier suffix') positions."""
        start = ctx.extras["next_position"]
        return start[:, None] + (mask.cumsum(1) - 1).clamp(min=0)

    def lm_forward(self, embeds: Tensor, mask: Tensor, positions: Tensor, cache: Any,
                   prefix: PrefixInfo | None) -> Tensor:
        """Run the decoder (``prefix`` set when encoding one); families with special masks override this."""
        attn = mask
        keys = None
        if self.cfg.attention == "bidirectional":  # additive (B, 1, Q, K): every query sees every real key
            keys = mask.bool()[:, None, None, :].expand(-1, 1, embeds.shape[1], -1)
        elif self.cfg.attention == "prefix_lm" and prefix is not None:
            keys = mask.bool()[:, None, None, :] & prefix_lm_mask(mask.shape[1], prefix.bidirectional, mask.device)
        if keys is not None:
            attn = torch.zeros(keys.shape, dtype=embeds.dtype, device=embeds.device).masked_fill(
                ~keys, torch.finfo(embeds.dtype).min)
        out = self._lm[0](inputs_embeds=embeds, attention_mask=attn, position_ids=positions, cache=cache,
                          use_cache=cache is not None)
        return out.last_hidden_state

    # ------------------------------------------------------------ setup helpers
    def _set_layout(self, lm: nn.Module, lm_head: nn.Linear, start: list[int], view_prefix: list[int],
                    view_suffix: list[int], prompt_prefix: list[int] = ()) -> None:
        self._lm, self._lm_head = [lm], [lm_head]  # inside self.model already; kept out of the module tree
        for name, ids in (("_start", start), ("_view_prefix", view_prefix), ("_view_suffix", view_suffix),
                          ("_prompt_prefix", list(prompt_prefix))):
            self.register_buffer(name, torch.tensor([i for i in ids if i is not None], dtype=torch.long),
                                 persistent=False)

    def _setup_action_tokens(self, from_checkpoint: bool) -> None:
        """Reserve ``num_action_tokens`` vocabulary ids for action (and proprio) bins; bin ``k`` is ``_action_ids[k]``.

        "reuse_last": the last rows of the LM head that are not special/added tokens of the tokenizer (real
        SmolVLM / Qwen / LLaVA keep their image and chat tokens at the top of the vocabulary); "count_down": bin
        ``k`` is id ``tokenizer.vocab_size - 1 - k`` (OpenVLA, LLaVA-VLA: counted down from the base vocabulary);
        "add": ``n`` new special tokens. Whether the ids are free of prefix tokens is checked only when a
        component asks for them (:meth:`action_token_ids`), so heads that never use them (DiT, MLP) don't care.
        """
        n = self.cfg.num_action_tokens
        if self.cfg.action_tokens == "add":
            names = [f"<action_{i}>" for i in range(n)]
            if not from_checkpoint:  # a checkpoint's tokenizer and weights already hold them
                self.tokenizer.add_tokens(names, special_tokens=True)
                if len(self.tokenizer) > self.vocab_size:  # else the new ids use spare (padding) rows
                    self.model.resize_token_embeddings(len(self.tokenizer))
                    # an untied output layer is replaced by the resize: keep the new one
                    self._lm_head = [self.model.get_output_embeddings()]
            ids = self.tokenizer.convert_tokens_to_ids(names)
        elif self.cfg.action_tokens == "count_down":
            top = self.tokenizer.vocab_size - self.cfg.action_token_offset
            if top - n < 0 or top > self.vocab_size:
                raise ValueError(f"backbone.action_tokens=count_down: {n} ids below the tokenizer's base vocabulary "
                                 f"({top}) within {self.vocab_size} LM-head rows are not available")
            ids = list(range(top - 1, top - 1 - n, -1))
        elif from_checkpoint and self.cfg.arch is not None:  # the ids it was trained with
            # (checkpoints written before the ids were recorded used the last n rows)
            ids = self.cfg.arch.get("action_ids") or list(range(self.vocab_size - n, self.vocab_size))
        else:
            reserved = set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}))
            ids = [i for i in range(self.vocab_size - 1, -1, -1) if i not in reserved][:n][::-1]
            if len(ids) < n:
                raise ValueError(f"backbone.num_action_tokens={n}: the vocabulary has only {len(ids)} free ids")
        self.register_buffer("_action_ids", torch.tensor(ids, dtype=torch.long), persistent=False)

    def _add_tokens(self, tokens: tuple[str, ...]) -> None:
        vocab = self.tokenizer.get_vocab()
        new = [t for t in tokens if t not in vocab]
        if new:
            self.tokenizer.add_tokens(new, special_tokens=True)
            if len(self.tokenizer) > self.vocab_size:
                self.model.resize_token_embeddings(len(self.tokenizer))
                self._lm_head = [self.model.get_output_embeddings()]

    def check_action_tokens(self) -> None:
        """Refuse action-token ids that are also prefix tokens (called by the components that use them; once)."""
        if getattr(self, "_tokens_checked", False):
            return
        used = set(torch.cat([self._start, self._view_prefix, self._view_suffix, self._prompt_prefix]).tolist())
        clash = sorted(used & set(self._action_ids.tolist()))
        if clash:
            names = self.tokenizer.convert_ids_to_tokens(clash[:5])
            raise ValueError(f"backbone: action-token ids {clash[:5]} ({names}) are also prefix tokens of the "
                             f"{type(self.cfg).__name__}; use --backbone.action_tokens=add")
        self._tokens_checked = True

    def _apply_training_options(self) -> None:
        cfg = self.cfg
        parts = self.components()
        if cfg.lora is not None:
            from vlaforge.quantize import import_bitsandbytes

            import_bitsandbytes(required=False)  # peft imports it if installed; this keeps its import quiet
            from peft import LoraConfig as PeftLoraConfig
            from peft import inject_adapter_in_model

            targets = list(cfg.lora.targets or self.default_lora_targets)
            if cfg.lora.quantize != "none":  # before peft, which then wraps the 4-bit layers with its bnb LoRA
                from vlaforge.quantize import quantize_linears

                quantize_linears(parts["lm"], cfg.lora.quantize, cfg.lora.double_quant, skip=[self._lm_head[0]])
            init = True if cfg.lora.init == "default" else cfg.lora.init
            inject_adapter_in_model(PeftLoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, init_lora_weights=init,
                                                   lora_dropout=cfg.lora.dropout, target_modules=targets),
                                    parts["lm"])
            for name, p in self.model.named_parameters():  # the whole VLM, not only the LM, is frozen
                p.requires_grad_("lora_" in name)
            for name in cfg.lora.full:
                parts[name].requires_grad_(True)
        for name in cfg.freeze:
            for p in parts[name].parameters():
                p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            if enable is None:
                raise ValueError(f"{type(self).__name__}: gradient checkpointing is not supported")
            enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def input_steps(self) -> list[Step]:
        """The processor steps this backbone contributes to the inputs pipeline: pixels, then prompt ids."""
        cfg = self.cfg
        as_text = cfg.proprio == "text" and self.state_dim > 0
        tokenize = Tokenize(template=cfg.prompt_template, max_tokens=cfg.max_prompt_tokens,
                            lowercase=cfg.prompt_lowercase, suffix=cfg.prompt_suffix,
                            state_text=cfg.proprio_bins if as_text else "",
                            state_ids=self._action_ids.tolist() if as_text else [],
                            special_tokens=cfg.prompt_special_tokens, state_bins=cfg.prompt_state_bins)
        tokenize.bind(tokenizer=self.tokenizer)
        return [ImageStep(cameras=list(self.cameras), size=self.image_size, stitch=cfg.views == "stitch",
                          resize=cfg.image_resize, interpolation=cfg.image_interpolation, crop=cfg.image_crop,
                          stitch_size=cfg.stitch_view_size),
                tokenize]

    def resolved_config(self) -> BackboneConfig:
        """The config with ``arch`` filled in, as written into checkpoints."""
        return self.cfg.replace(arch={**self.arch(), "image_mean": list(self.image_mean),
                                      "image_std": list(self.image_std), "action_ids": self._action_ids.tolist()})

    def save_assets(self, directory: Path) -> None:
        """Write the tokenizer with ``save_pretrained`` (what rebuilding needs besides the weights)."""
        self.tokenizer.save_pretrained(str(directory))

    def export_pretrained(self, directory: str | Path) -> Path:
        """Write the VLM as transformers does (model, tokenizer, image processor): a ``pretrained=DIR`` input."""
        import transformers

        directory = Path(directory)
        self.model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
        if self.image_processor_class is not None:
            proc = getattr(transformers, self.image_processor_class)
            proc(image_mean=list(self.image_mean), image_std=list(self.image_std)).save_pretrained(str(directory))
        return directory

    # ------------------------------------------------------------ token helpers
    @property
    def dtype(self) -> torch.dtype:  # the first float parameter's (a QLoRA base holds packed uint8 weights)
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def lm_spec(self) -> LMSpec:
        """Layers, heads and head size of the decoder (read from its config)."""
        c = self._lm[0].config
        layers = getattr(c, "num_hidden_layers", None) or c.layers
        heads = getattr(c, "num_attention_heads", None) or c.attention_heads
        kv = getattr(c, "num_key_value_heads", None) or heads
        head_dim = getattr(c, "head_dim", None) or self.hidden_size // heads
        rope = getattr(c, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        return LMSpec(self.hidden_size, layers, heads, kv, head_dim, float(theta or getattr(c, "rope_theta", 1e4)))

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def token_id(self, token: str) -> int:
        return token_id(self.tokenizer, token)

    @property
    def vocab_size(self) -> int:
        return self._lm_head[0].weight.shape[0]

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self._lm[0].get_input_embeddings()(ids)

    def token_logits(self, hidden: Tensor, ids: Tensor | None = None) -> Tensor:
        """LM-head logits, restricted to vocabulary rows ``ids`` when given (cheap constrained decoding)."""
        head = self._lm_head[0]
        hidden = hidden.to(head.weight.dtype)
        if ids is None:
            return head(hidden)
        b = head.bias[ids] if head.bias is not None else None
        return nn.functional.linear(hidden, head.weight[ids], b)

    def action_token_ids(self, n: int) -> Tensor:
        """The first ``n`` of the reserved action-token ids (refused if they clash with prefix tokens)."""
        self.check_action_tokens()
        if n > len(self._action_ids):
            raise ValueError(f"{n} action tokens requested, the backbone reserves num_action_tokens="
                             f"{len(self._action_ids)}")
        return self._action_ids[:n]

    # ------------------------------------------------------------ encoding
    def normalize_images(self, images: Tensor) -> Tensor:
        """(..., 3, S, S) in [0, 1] -> the family's normalization, with a clear error on wrong input."""
        if not images.is_floating_point():
            raise TypeError(f"images: expected float in [0, 1] (run the image processor step), got {images.dtype}")
        if images.shape[-3:] != (3, self.image_size, self.image_size):
            raise ValueError(f"images: expected (..., 3, {self.image_size}, {self.image_size}), got "
                             f"{tuple(images.shape)}")
        mean = images.new_tensor(self.image_mean).view(3, 1, 1)
        std = images.new_tensor(self.image_std).view(3, 1, 1)
        return (images - mean) / std

    def gather_images(self, batch: dict[str, Any]) -> Tensor:
        """(B, V, [T,] 3, S, S) from the batch, cameras in the policy's order (or the one stitched image)."""
        cams = [STITCHED_CAMERA] if self.cfg.views == "stitch" else self.cameras
        missing = [image_key(c) for c in cams if image_key(c) not in batch]
        if missing:
            raise KeyError(f"batch has no {missing} (has {sorted(k for k in batch if k.startswith('observation'))})")
        views = [batch[image_key(c)] for c in cams]
        for c, v in zip(cams, views, strict=True):
            if not torch.is_tensor(v) or not v.is_floating_point():
                raise TypeError(f"'{image_key(c)}': expected float pixels in [0, 1] (run the image processor "
                                f"step), got {getattr(v, 'dtype', type(v).__name__)}")
            if v.shape[-3:] != (3, self.image_size, self.image_size):
                raise ValueError(f"'{image_key(c)}': expected (..., 3, {self.image_size}, {self.image_size}), got "
                                 f"{tuple(v.shape)}")
        return torch.stack(views, 1)

    def _proprio_embeds(self, state: Tensor | None) -> Tensor | None:
        if self.cfg.proprio in ("none", "text") or state is None or self.state_dim == 0:
            return None
        if self.cfg.proprio in ("mlp", "linear"):  # the projector keeps its own dtype (fp32 next to a bf16 VLM)
            return self.proprio(state.to(self.proprio[0].weight.dtype)).to(self.dtype)[:, None]
        n = self.cfg.num_action_tokens  # "tokens": LLaVA-VLA writes the binned state with the action vocabulary
        bins = torch.floor((state.float().clamp(-1, 1) + 1) / 2 * n).long().clamp(0, n - 1)
        return self.embed_tokens(self.action_token_ids(n)[bins])

    def encode(self, batch: dict[str, Any], use_cache: bool = False, suffix: Tensor | None = None) -> Context:
        """Encode the prefix of a processed batch (images in [0, 1], normalized state, prompt ids).

        ``suffix`` (B, K, D): embeddings encoded in the same pass after the prompt (OpenVLA-OFT's placeholder
        tokens); their hidden states are the last K of ``ctx.hidden``, after the pads.
        """
        images = self.gather_images(batch)  # (B, V, [T,] 3, S, S)
        state = batch.get(OBS_STATE)
        if state is not None and state.dim() == 3:
            state = state[:, -1]  # the current frame's state
        if images.dim() == 6 and self.cfg.history == "per_frame":
            if suffix is not None:
                raise ValueError("a joint suffix is not supported with history='per_frame'")
            return self._encode_per_frame(images, state, batch, use_cache)
        if images.dim() == 6:
            images = images.flatten(1, 2)  # interleaved history: every frame of every view in one sequence
        return self._encode(images, state, batch, use_cache, suffix)

    def _encode_per_frame(self, images: Tensor, state: Tensor | None, batch: dict[str, Any],
                          use_cache: bool) -> Context:
        """RoboVLMs' policy-head fusion: each frame alone; ``ctx.history`` holds the per-frame readouts."""
        b, _, t = images.shape[:3]
        frames = images.transpose(1, 2).flatten(0, 1)  # (B*T, V, 3, S, S)
        rep = {k: batch[k].repeat_interleave(t, 0) for k in (INPUT_IDS, ATTENTION_MASK)}
        st = state.repeat_interleave(t, 0) if state is not None else None
        every = self._encode(frames, st, rep, use_cache=False)
        history = every.pooled.view(b, t, -1)
        if use_cache:  # a cache of the current frame alone: encode it again
            ctx = self._encode(images[:, :, -1], state, batch, use_cache)
        else:  # the current frame is each window's last: its rows of the window's encoding
            last = torch.arange(b, device=history.device) * t + t - 1
            ctx = Context(hidden=every.hidden[last], mask=every.mask[last], pooled=every.pooled[last], state=state,
                          prefix_len=every.prefix_len, last_index=every.last_index[last], lm=self,
                          extras={k: v[last] if torch.is_tensor(v) else v for k, v in every.extras.items()})
        ctx.history = history
        return ctx

    def _encode(self, images: Tensor, state: Tensor | None, batch: dict[str, Any], use_cache: bool,
                suffix: Tensor | None = None) -> Context:
        b, v = images.shape[:2]
        pixels = self.normalize_images(images).flatten(0, 1).to(self.dtype)
        feats = self.embed_images(pixels)
        feats, image_extra = feats if isinstance(feats, tuple) else (feats, {})
        grid = image_extra.pop("patch_grid", None)
        keypoints = skip = None
        if self.keypoints is not None:  # one token per view: (B, V, 1, D)
            xy = self.keypoints.coords(feats if grid is None else grid)
            keypoints = self.keypoints.proj(xy.to(self.keypoints.proj.weight.dtype)).to(feats.dtype).view(b, v, 1, -1)
            if self.keypoint_readout is not None:
                if v * xy.shape[1] != self.keypoint_readout.in_features:
                    raise ValueError(f"backbone.keypoints_to_readout: expected {len(self.cameras)} images per sample "
                                     f"(one per camera), got {v}; stitched views and a frame history > 1 are not "
                                     f"supported with it")
                skip = self.keypoint_readout(xy.reshape(b, -1).to(self.keypoint_readout.weight.dtype))
        feats = feats.view(b, v, feats.shape[1], feats.shape[2])
        emb = self.embed_tokens
        pre, suf = emb(self._view_prefix), emb(self._view_suffix)
        parts, spans, n = [emb(self._start).expand(b, -1, -1)], [], len(self._start)
        for i in range(v):
            parts += [pre.expand(b, -1, -1), feats[:, i], suf.expand(b, -1, -1)]
            spans.append((n + len(self._view_prefix), feats.shape[2]))
            n += pre.shape[0] + feats.shape[2] + suf.shape[0]
            if keypoints is not None:
                parts.append(keypoints[:, i])
                n += 1
        extra = self._proprio_embeds(state)
        after = self.cfg.proprio_position == "after_prompt"
        if extra is not None and not after:
            parts.append(extra.to(feats.dtype))
        parts.append(emb(self._prompt_prefix).expand(b, -1, -1))
        fixed = torch.cat(parts, 1)
        ids, text_mask = batch[INPUT_IDS], batch[ATTENTION_MASK]
        seq = [fixed, emb(ids)]
        masks = [text_mask.new_ones(b, fixed.shape[1]), text_mask]
        bidirectional = fixed.shape[1] + ids.shape[1]
        if extra is not None and after:  # SmolVLA: [images] [prompt, pads] [state]
            seq.append(extra.to(feats.dtype))
            masks.append(text_mask.new_ones(b, extra.shape[1]))
        if self.act_token is not None:
            seq.append(self.act_token.to(fixed.dtype).expand(b, 1, -1))
            masks.append(text_mask.new_ones(b, 1))
        if suffix is not None:
            seq.append(suffix.to(fixed.dtype))
            masks.append(text_mask.new_ones(b, suffix.shape[1]))
        x, mask = torch.cat(seq, 1), torch.cat(masks, 1)
        pos = self.positions(mask, spans)
        cache = DynamicCache() if use_cache else None
        hidden = self.lm_forward(x, mask, pos, cache, PrefixInfo(spans, image_extra, bidirectional))
        rows = torch.arange(b, device=hidden.device)
        n_after = extra.shape[1] if extra is not None and after else 0
        last = torch.full((b,), bidirectional + n_after, device=hidden.device) if self.act_token is not None \
            else fixed.shape[1] + text_mask.sum(1) - 1  # the ACT token sits after the pads; else the last prompt token
        if self.cfg.readout in ("act", "last"):
            pooled = hidden[rows, last]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1)
        if skip is not None:
            pooled = pooled + skip.to(pooled.dtype)
        last_pos = pos.amax(dim=(0, 2)) if pos.dim() == 3 else pos.amax(1)  # (3, B, L) multimodal RoPE ids
        nxt = last_pos + 1
        return Context(hidden=hidden, mask=mask, kv_cache=cache, pooled=pooled, state=state, prefix_len=x.shape[1],
                       last_index=last, lm=self, extras={"next_position": nxt, "prefix_next_position": nxt})

    def extend(self, ctx: Context, embeds: Tensor, mask: Tensor, hide_prefix: Tensor | None = None) -> Tensor:
        """Run suffix embeddings (B, K, D) through the LM on ``ctx.kv_cache``; the cache grows by K.

        ``hide_prefix`` (B,) bool: those rows' suffix tokens cannot attend to the prefix (the unconditional pass
        of classifier-free guidance, without a second prefix encode).
        """
        if ctx.kv_cache is None:
            raise ValueError("extend() needs a prefix encoded with use_cache=True")
        mask = mask.to(ctx.mask.dtype)
        prev = ctx.extras.get("suffix_mask")
        prefix_mask = ctx.mask if hide_prefix is None else ctx.mask * (~hide_prefix[:, None]).to(ctx.mask.dtype)
        full = torch.cat([prefix_mask] + ([prev] if prev is not None else []) + [mask], 1)
        pos = self.suffix_positions(ctx, mask)
        hidden = self.lm_forward(embeds.to(self.dtype), full, pos, ctx.kv_cache, None)
        ctx.extras["suffix_mask"] = full[:, ctx.mask.shape[1]:]
        ctx.extras["next_position"] = ctx.extras["next_position"] + mask.sum(1)
        return hidden

    def repeat_context(self, ctx: Context, k: int) -> Context:
        """A context with every row repeated ``k`` times in blocks (row ``i`` of block ``j`` is row ``i``), with
        its own copy of the prefix KV cache — for several noise draws per prefix encode."""
        if k == 1:
            return ctx
        rep = lambda t: None if t is None else t.repeat(k, *([1] * (t.dim() - 1)))  # noqa: E731
        cache = None
        if ctx.kv_cache is not None:
            self.reset(ctx)
            cache = DynamicCache()
            for i, layer in enumerate(ctx.kv_cache.layers):
                cache.update(rep(layer.keys), rep(layer.values), i)
        extras = {key: rep(v) for key, v in ctx.extras.items() if torch.is_tensor(v)}
        return Context(hidden=rep(ctx.hidden), mask=rep(ctx.mask), kv_cache=cache, pooled=rep(ctx.pooled),
                       state=rep(ctx.state), history=rep(ctx.history), last_index=rep(ctx.last_index),
                       prefix_len=ctx.prefix_len, lm=self, extras=extras)

    def reset(self, ctx: Context) -> None:
        """Drop everything ``extend`` appended, keeping the encoded prefix."""
        if ctx.kv_cache is not None:
            extra = ctx.kv_cache.get_seq_length() - ctx.prefix_len
            if extra > 0:
                ctx.kv_cache.crop(-extra)
        ctx.extras.pop("suffix_mask", None)
        ctx.extras["next_position"] = ctx.extras["prefix_next_position"]


def prefix_lm_mask(n: int, bidirectional: int, device: torch.device) -> Tensor:
    """(n, n) bool: query i sees key j when j <= i or both are among the first ``bidirectional`` tokens."""
    idx = torch.arange(n, device=device)
    block = torch.where(idx < bidirectional, torch.zeros_like(idx), idx)
    return block[None, :] <= block[:, None]


def with_token_ids(text_config: dict[str, Any], tokenizer: Any, **extra: Any) -> dict[str, Any]:
    """A random-init LM config with the code-built tokenizer's pad/bos/eos ids (every family's tiny sizes)."""
    return dict(text_config, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, **extra)


def read_processor(path: Path) -> dict[str, Any]:
    """The image-processor settings of an HF directory: ``preprocessor_config.json`` (transformers 4.x and the
    image processor's own ``save_pretrained``) or the ``image_processor`` entry of ``processor_config.json``
    (what transformers 5.x ``Processor.save_pretrained`` writes). Empty when neither is there."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        f = path / name
        if f.is_file():
            try:
                d = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"backbone.pretrained: {f} is not readable JSON ({e})") from None
            d = d.get(key, {}) if key else d
            if d:
                return d
    return {}


def read_image_stats(path: Path, default: tuple[tuple[float, ...], tuple[float, ...]]) -> tuple[tuple, tuple]:
    """Image mean/std from the directory's processor files, if present."""
    proc = read_processor(path)
    if not proc:
        warnings.warn(f"{path} has no preprocessor_config.json or processor_config.json; using the family's default "
                      f"image normalization {default}", stacklevel=3)
        return default
    return tuple(proc.get("image_mean", default[0])), tuple(proc.get("image_std", default[1]))


def read_hf_config(path: Path, expected: tuple[str, ...], family: str) -> dict[str, Any]:
    """``config.json`` of a ``pretrained`` directory, refused when its ``model_type`` is not the family's."""
    f = path / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"backbone.pretrained: {path} has no config.json (expected a directory written by "
                                f"save_pretrained)")
    try:
        hf = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"backbone.pretrained: {f} is not readable JSON ({e})") from None
    found = hf.get("model_type")
    if found not in expected:
        other = [n for n in BACKBONES.names() if found in getattr(BACKBONES.get(n), "model_types", ())]
        hint = f" (use --backbone.type={other[0]})" if other else ""
        raise ValueError(f"backbone.pretrained: {f} has model_type {found!r}, the '{family}' backbone expects "
                         f"{' or '.join(repr(e) for e in expected)}{hint}")
    return hf


def check_weight_files(path: Path) -> list[Path]:
    """The safetensors files of an HF directory (single file or index + shards), each header checked, so that a
    missing, truncated or corrupt file is named in one line instead of a loader traceback."""
    from safetensors import SafetensorError, safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
            raise ValueError(f"backbone.pretrained: {index} is not a safetensors index ({e})") from None
        files = [path / n for n in names]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        raise FileNotFoundError(f"backbone.pretrained: {path} has no model.safetensors or "
                                f"model.safetensors.index.json (found {found or 'no weight files'})")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"backbone.pretrained: {f} is listed in {index.name} but missing")
        try:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():  # noqa: SIM118 - reads every tensor's header entry
                    sf.get_slice(key)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"backbone.pretrained: {f} is not a readable safetensors file ({e})") from None
    return files


def stored_dtype(hf: dict[str, Any]) -> str | None:
    """The dtype a ``config.json`` says the weights are stored in (``dtype`` in transformers 5, else
    ``torch_dtype``), looking into the text config of composite models."""
    for d in (hf, hf.get("text_config") or {}, hf.get("llm_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if isinstance(d.get(key), str):
                return d[key]
    return None


def report_dtype(path: Path, stored: str | None, cfg: BackboneConfig) -> None:
    """Say which dtype the weights are used in (an upcast of bf16 weights is not silent)."""
    if stored is not None and stored != cfg.dtype:
        log.warning("backbone.pretrained: %s stores %s weights; using them as %s (backbone.dtype=%s; set "
                    "--backbone.dtype=%s to keep them)", path, stored, cfg.dtype, cfg.dtype, stored)
    else:
        log.info("backbone.pretrained: %s loaded as %s", path, cfg.dtype)


def from_pretrained_checked(model_cls: Any, path: Path, dtype: torch.dtype) -> nn.Module:
    """``model_cls.from_pretrained`` with the weight files checked first and every missing, unexpected or
    mis-shaped weight refused by name (transformers would initialise them randomly and go on)."""
    check_weight_files(path)
    try:
        model, info = model_cls.from_pretrained(str(path), dtype=dtype, output_loading_info=True,
                                                trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"backbone.pretrained: cannot load {path} as {model_cls.__name__}: {first}") from None
    bad = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        what = "; ".join(f"{k.replace('_keys', '')} {len(v)}: {[str(x) for x in v[:4]]}" for k, v in bad.items())
        raise ValueError(f"backbone.pretrained: the weights in {path} do not match {model_cls.__name__} ({what})")
    return model


def load_hf(cfg: BackboneConfig, assets: Path | None, model_cls: Any, config_cls: Any, tiny: Any,
            default_stats: tuple[tuple[float, ...], tuple[float, ...]], build_tokenizer: Any) -> Built:
    """The common three-way loader for families that are one HF ``PreTrainedModel``.

    ``tiny(cfg, tokenizer) -> config`` builds a random-init architecture for ``cfg.size``;
    ``build_tokenizer()`` makes the in-code tokenizer used with it.
    """
    dtype = DTYPES[cfg.dtype]
    if assets is not None:
        if cfg.arch is None:
            raise ValueError("backbone config has no 'arch'; cannot rebuild from a checkpoint")
        tokenizer = load_tokenizer(assets)
        model = model_cls(config_cls.from_dict(cfg.arch["hf_config"])).to(dtype)
        return Built(model, tokenizer, tuple(cfg.arch["image_mean"]), tuple(cfg.arch["image_std"]))
    if cfg.pretrained is not None:
        path = Path(cfg.pretrained)
        hf = read_hf_config(path, type(cfg).model_types or (config_cls.model_type,), cfg.type)
        tokenizer = load_tokenizer(path)
        model = from_pretrained_checked(model_cls, path, dtype)
        report_dtype(path, stored_dtype(hf), cfg)
        mean, std = read_image_stats(path, default_stats)
        return Built(model, tokenizer, mean, std)
    tokenizer = build_tokenizer()
    return Built(model_cls(tiny(cfg, tokenizer)).to(dtype), tokenizer, *default_stats)


def load_tokenizer(path: Path) -> Any:
    """``AutoTokenizer.from_pretrained`` of a local directory, with a one-line error naming it."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer directory is missing")
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)  # never run a directory's code
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot load the tokenizer ({first})") from None
