"""The backbone contract: images + prompt (+ extra embeddings such as a proprio token) -> prefix :class:`Context`.

A family file (``smolvlm.py`` ...) only says how to build its HF model, how to embed images, which tokens wrap
each view and which image size and normalization its processor uses. Everything else — assembling the prefix,
the KV cache, ``extend`` for in-sequence heads, readout pooling, the action-token vocabulary — lives here once.

Prefix layout (one row of the batch; the prompt is right-padded, pads are masked out)::

    [bos] [view-1 wrapper, image tokens, wrapper] ... [view-V ...] [extra embeds] [prompt tokens] [pad ...]

Position ids are ``cumsum(mask) - 1``, so a suffix appended after the pads continues the real positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from vlaforge.config import Choice, ChoiceType, ConfigError
from vlaforge.registry import Registry
from vlaforge.types import ATTENTION_MASK, INPUT_IDS, Context

BACKBONES: Registry[type[BackboneConfig]] = Registry("backbones", lazy={"smolvlm": "vlaforge.backbones.smolvlm"})

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
READOUTS = ("last", "mean")


@dataclass(frozen=True)
class BackboneConfig(Choice, ChoiceType):
    """Options shared by every backbone family."""

    registry: ClassVar[Registry] = BACKBONES

    size: str = "tiny"  # a named architecture of the family (random init) when `pretrained` is not set
    pretrained: str | None = None  # local directory written by `save_pretrained` (weights + tokenizer)
    image_size: int | None = None  # override the family's input resolution (random-init sizes only)
    readout: str = "mean"  # pooled vector for readout heads: "last" token or masked "mean"
    prompt_template: str = "{task}"
    max_prompt_tokens: int = 48
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    # Resolved architecture (the HF config dict and processor numbers); filled in when a policy is saved so a
    # checkpoint rebuilds the model without `pretrained`. Not meant to be set by hand.
    arch: dict[str, Any] | None = None

    def validate(self) -> None:
        self.check(self.readout in READOUTS, "readout", f"one of {READOUTS}")
        self.check(self.dtype in DTYPES, "dtype", f"one of {sorted(DTYPES)}")
        self.check(self.max_prompt_tokens > 0, "max_prompt_tokens", "> 0")
        self.check("{task}" in self.prompt_template, "prompt_template", "a string containing '{task}'")
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError("image_size", "> 0 or null", self.image_size)

    def build(self, assets: Path | None = None) -> Backbone:
        """Build the module. ``assets`` is a checkpoint's ``tokenizer/`` dir (then ``arch`` must be set)."""
        raise NotImplementedError


class Backbone(nn.Module):
    """Base class; families set the attributes below in ``__init__`` and implement :meth:`embed_images`."""

    hidden_size: int
    vocab_size: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    supports_kv_cache: ClassVar[bool] = True

    def __init__(self, cfg: BackboneConfig, model: nn.Module, lm: nn.Module, lm_head: nn.Linear,
                 tokenizer: Any, view_prefix: list[int], view_suffix: list[int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model  # the whole HF model (saved/loaded as one state dict)
        self._lm = [lm]  # the causal decoder inside `model` (kept out of the module tree: it is registered there)
        self._lm_head = [lm_head]
        self.tokenizer = tokenizer
        self.register_buffer("_view_prefix", torch.tensor(view_prefix, dtype=torch.long), persistent=False)
        self.register_buffer("_view_suffix", torch.tensor(view_suffix, dtype=torch.long), persistent=False)
        bos = tokenizer.bos_token_id
        self.register_buffer("_bos", torch.tensor([] if bos is None else [bos], dtype=torch.long), persistent=False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()

    # ------------------------------------------------------------ family hooks
    def embed_images(self, pixel_values: Tensor) -> Tensor:
        """(N, 3, S, S) normalized pixels -> (N, n_tokens, hidden_size) embeddings in the LM's space."""
        raise NotImplementedError

    def resolved_config(self) -> BackboneConfig:
        """The config with ``arch`` filled in, as written into checkpoints."""
        raise NotImplementedError

    def save_assets(self, directory: Path) -> None:
        """Write what rebuilding needs besides the weights (the tokenizer) with ``save_pretrained``."""
        self.tokenizer.save_pretrained(str(directory))

    # ------------------------------------------------------------ helpers
    @property
    def lm(self) -> nn.Module:
        return self._lm[0]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self.lm.get_input_embeddings()(ids)

    def token_logits(self, hidden: Tensor, ids: Tensor | None = None) -> Tensor:
        """LM-head logits, restricted to vocabulary rows ``ids`` when given (cheap constrained decoding)."""
        head = self._lm_head[0]
        if ids is None:
            return head(hidden)
        w = head.weight[ids]
        b = head.bias[ids] if head.bias is not None else None
        return nn.functional.linear(hidden, w, b)

    def action_token_ids(self, n: int) -> Tensor:
        """The last ``n`` vocabulary ids (OpenVLA / LLaVA-VLA convention); errors if a prefix token lives there."""
        ids = torch.arange(self.vocab_size - n, self.vocab_size, device=self._bos.device)
        used = torch.cat([self._view_prefix, self._view_suffix, self._bos]).tolist()
        clash = [i for i in used if i >= self.vocab_size - n]
        if clash:
            raise ValueError(f"action tokens: the last {n} vocabulary ids overlap prefix tokens {clash}")
        return ids

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

    # ------------------------------------------------------------ contract
    def encode(self, images: Tensor, batch: dict[str, Any], extra: Tensor | None = None,
               use_cache: bool = False) -> Context:
        """Encode the prefix. ``images`` (B, V, 3, S, S) in [0, 1]; ``batch`` holds input_ids / attention_mask."""
        b, v = images.shape[:2]
        pixels = self.normalize_images(images).flatten(0, 1).to(self.dtype)
        feats = self.embed_images(pixels).view(b, v, -1, self.hidden_size)  # (B, V, n, D)
        emb = self.embed_tokens
        pre, suf = emb(self._view_prefix), emb(self._view_suffix)
        parts = [emb(self._bos).expand(b, -1, -1)]
        for i in range(v):
            parts += [pre.expand(b, -1, -1), feats[:, i], suf.expand(b, -1, -1)]
        if extra is not None:
            parts.append(extra.to(self.dtype))
        fixed = torch.cat(parts, 1)
        ids, text_mask = batch[INPUT_IDS], batch[ATTENTION_MASK]
        x = torch.cat([fixed, emb(ids)], 1)
        mask = torch.cat([text_mask.new_ones(b, fixed.shape[1]), text_mask], 1)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache() if use_cache else None
        out = self.lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, past_key_values=cache,
                      use_cache=use_cache)
        hidden = out.last_hidden_state
        if self.cfg.readout == "last":
            pooled = hidden[torch.arange(b, device=hidden.device), mask.sum(1) - 1]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1)
        return Context(hidden=hidden, mask=mask, kv_cache=out.past_key_values if use_cache else None,
                       pooled=pooled, prefix_len=x.shape[1], lm=self)

    def extend(self, ctx: Context, embeds: Tensor, mask: Tensor) -> Tensor:
        """Run suffix embeddings (B, K, D) through the LM on ``ctx.kv_cache``; the cache grows by K."""
        if ctx.kv_cache is None:
            raise ValueError("extend() needs a prefix encoded with use_cache=True")
        prev = ctx.extras.get("suffix_mask")
        full = torch.cat([ctx.mask] + ([prev] if prev is not None else []) + [mask.to(ctx.mask.dtype)], 1)
        pos = (full.cumsum(1) - 1).clamp(min=0)[:, -embeds.shape[1]:]
        out = self.lm(inputs_embeds=embeds.to(self.dtype), attention_mask=full, position_ids=pos,
                      past_key_values=ctx.kv_cache, use_cache=True)
        ctx.extras["suffix_mask"] = full[:, ctx.mask.shape[1]:]
        return out.last_hidden_state

    def reset(self, ctx: Context) -> None:
        """Drop everything ``extend`` appended, keeping the encoded prefix."""
        if ctx.kv_cache is not None:
            extra = ctx.kv_cache.get_seq_length() - ctx.prefix_len
            if extra > 0:
                ctx.kv_cache.crop(-extra)
        ctx.extras.pop("suffix_mask", None)
