"""Discrete action tokens decoded by the VLM itself (RT-2 / OpenVLA / LLaVA-VLA / pi0-FAST style).

The chunk is turned into tokens by an action tokenizer (``binning``): ``uniform`` — 256 equal bins per
dimension over the normalized range; ``quantile`` — bins with equal training mass; ``fast`` — pi0-FAST's DCT +
BPE (variable length, ended by an end-of-sequence token). Token ``k`` is written with the backbone's k-th
reserved action id (the last vocabulary ids, or added tokens). Training is teacher-forced cross-entropy over the
action-token rows of the LM head; sampling decodes greedily on the prefix KV cache, one prefix encode per call.
Differences from OpenVLA: bin centres are the midpoints of ``n_bins`` equal bins (OpenVLA uses 255 centres
between 256 edges), the softmax is restricted to action tokens, and a whole chunk is decoded per call. The
originals' conventions are options: ``binning`` "uniform_edges" (OpenVLA's edges) or "norm_bins" (LLaVA-VLA's
fixed non-uniform grid), ``decode_over="vocab"``, and LLaVA-VLA's reply parsing (``max_new_tokens`` + ``keep``):
generate until EOS, keep ``ids[keep[0]:keep[1]]``, decode each id, truncate or zero-pad to the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vlaforge.heads.action_tokenizers import FastTokenizer, QuantileBinner, UniformBinner
from vlaforge.heads.base import HEADS, ActionHead, HeadConfig, target_and_mask
from vlaforge.processors.bins import bin_edges
from vlaforge.types import Context, LMSpec

BINNINGS = ("uniform", "uniform_edges", "norm_bins", "quantile", "fast")
DECODES = ("actions", "vocab")


@HEADS.register("tokens")
@dataclass(frozen=True)
class TokenHeadConfig(HeadConfig):
    """Discrete action tokens on the VLM's vocabulary: uniform (256 bins) | quantile bins | FAST (DCT + BPE)."""

    binning: str = "uniform"
    n_bins: int = 256  # bins per dimension, or the FAST vocabulary size (BPE tokens + end-of-sequence)
    low: float = -1.0  # uniform bins cover [low, high] of the normalized range
    high: float = 1.0
    fast_scale: float = 10.0  # DCT coefficients are multiplied by this before rounding (pi0-FAST: 10)
    max_tokens: int = 0  # FAST: longest decoded sequence (0: 2 x chunk x action_dim)
    # "actions": softmax / argmax over the action-token rows only; "vocab": over the whole vocabulary, as OpenVLA's
    # generate() and HybridVLA's confidence do (an id outside the action ids decodes to the nearest action bin)
    decode_over: str = "actions"
    # LLaVA-VLA's reply parsing: > 0 generates until EOS or this many tokens (its server: 128), keeps the ids
    # ids[keep[0]:keep[1]] (its server: [2:-1]), decodes each and truncates / zero-pads to chunk x action_dim
    # (its client). 0: exactly chunk x action_dim tokens are decoded.
    max_new_tokens: int = 0
    keep: tuple[int, int] | None = None

    def validate(self) -> None:
        self.check(self.binning in BINNINGS, "binning", f"one of {BINNINGS}")
        self.check(self.decode_over in DECODES, "decode_over", f"one of {DECODES}")
        self.check(self.max_new_tokens >= 0, "max_new_tokens", ">= 0")
        self.check(self.max_new_tokens == 0 or self.binning != "fast", "max_new_tokens", "0 with binning=fast")
        self.check(self.keep is None or (self.max_new_tokens > 0 and len(self.keep) == 2), "keep",
                   "null, or (start, stop) with max_new_tokens > 0")
        if self.binning == "norm_bins":
            self.check((self.n_bins, self.low, self.high) == (256, -1.0, 1.0), "n_bins",
                       "256 over [-1, 1] with binning=norm_bins (LLaVA-VLA's fixed grid)")
        self.check(self.n_bins >= 2, "n_bins", ">= 2")
        self.check(self.high > self.low, "high", f"> low ({self.low})")
        self.check(self.fast_scale > 0, "fast_scale", "> 0")

    def build(self, *, action_dim: int, chunk: int, state_dim: int, lm: LMSpec) -> TokenHead:
        return TokenHead(self, action_dim, chunk)


class TokenHead(ActionHead):
    in_sequence = True
    uses_action_tokens = True

    def __init__(self, cfg: TokenHeadConfig, action_dim: int, chunk: int) -> None:
        super().__init__(cfg, action_dim, chunk)
        self.needs_fit = cfg.binning in ("quantile", "fast")
        if cfg.binning in ("uniform", "uniform_edges"):
            self.tokenizer: Any = UniformBinner(cfg.n_bins, cfg.low, cfg.high, edges=cfg.binning == "uniform_edges")
        elif cfg.binning == "norm_bins":
            self.tokenizer = UniformBinner(grid=bin_edges("norm_bins"))
        elif cfg.binning == "quantile":  # starts uniform; fit() moves the edges to the data's quantiles
            self.register_buffer("edges", torch.linspace(-1, 1, cfg.n_bins + 1)[:, None].repeat(1, action_dim))
            self.tokenizer = QuantileBinner(lambda: self.edges)
        else:
            self.tokenizer = FastTokenizer(cfg.n_bins, chunk, action_dim, cfg.fast_scale)
        self.max_tokens = cfg.max_tokens or 2 * chunk * action_dim

    # ------------------------------------------------------------ fitting and state
    def fit(self, actions: np.ndarray) -> None:
        if self.cfg.binning == "quantile":
            edges = QuantileBinner.fit_edges(actions.reshape(-1, self.action_dim), self.cfg.n_bins)
            self.edges.copy_(torch.from_numpy(edges).float())
        elif self.cfg.binning == "fast":
            self.tokenizer.fit(actions)

    def get_extra_state(self) -> Tensor:  # the FAST BPE travels inside model.safetensors as bytes
        data = self.tokenizer.state() if self.cfg.binning == "fast" else b""
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)

    def set_extra_state(self, state: Tensor) -> None:
        if self.cfg.binning == "fast":
            self.tokenizer.load_state(bytes(state.to(torch.uint8).cpu().numpy().tobytes()))

    # ------------------------------------------------------------ tokens
    def _targets(self, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Token indices (B, K) and a weight per token."""
        if self.tokenizer.fixed_length:
            bins = self.tokenizer.encode(target).flatten(1)
            return bins, valid.repeat_interleave(self.action_dim, 1).float()
        seqs = self.tokenizer.encode_chunks(target.cpu().numpy())
        k = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), k), self.tokenizer.eos, dtype=torch.long)
        w = torch.zeros(len(seqs), k)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            w[i, : len(s)] = 1.0
        return ids.to(target.device), w.to(target.device)

    @staticmethod
    def _last_prefix_hidden(ctx: Context) -> Tensor:
        return ctx.hidden[torch.arange(ctx.hidden.shape[0], device=ctx.hidden.device), ctx.last_index]

    def loss(self, ctx: Context, batch: dict[str, Any]) -> dict[str, Tensor]:
        lm = ctx.lm
        target, valid = target_and_mask(batch, self.chunk, self.action_dim)
        bins, weight = self._targets(target, valid)
        vocab = lm.action_token_ids(self.tokenizer.vocab)
        emb = lm.embed_tokens(vocab[bins[:, :-1]])
        hidden = lm.extend(ctx, emb, torch.ones_like(bins[:, :-1]))
        lm.reset(ctx)
        inputs = torch.cat([self._last_prefix_hidden(ctx)[:, None], hidden], 1)  # position j predicts token j
        if self.cfg.decode_over == "vocab":  # the LM's own loss over every row, targets are the action ids
            logits, targets = lm.token_logits(inputs).float(), vocab[bins]
        else:
            logits, targets = lm.token_logits(inputs, vocab).float(), bins  # (B, K, n action ids)
        ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        loss = (ce * weight).sum() / weight.sum().clamp(min=1)
        acc = ((logits.argmax(-1) == targets).float() * weight).sum() / weight.sum().clamp(min=1)
        return {"loss": loss, "token_accuracy": acc.detach()}

    @staticmethod
    def _nearest_bin(ids: Tensor, vocab: Tensor) -> Tensor:
        """Vocabulary ids -> action-bin indices; an id outside the action ids takes the bin of the nearest one
        (OpenVLA clips ``vocab_size - id - 1`` into its bin range the same way)."""
        sorted_ids, order = vocab.sort()
        pos = torch.searchsorted(sorted_ids, ids).clamp(max=len(vocab) - 1)
        below = (pos > 0) & ((ids - sorted_ids[(pos - 1).clamp(min=0)]).abs() < (sorted_ids[pos] - ids).abs())
        return order[torch.where(below, pos - 1, pos)]

    @torch.no_grad()
    def sample(self, ctx: Context, batch: dict[str, Any], generator: torch.Generator | None = None,
               temperature: float = 0.0, start: Tensor | None = None) -> Tensor:
        """Greedy (or ``temperature``) decoding on the cached prefix; ``start`` (B, D): the hidden state to decode
        from when the caller extended the prefix first (HybridVLA's tokens after the diffusion block)."""
        lm = ctx.lm
        vocab = lm.action_token_ids(self.tokenizer.vocab)
        b = ctx.hidden.shape[0]
        fixed = self.tokenizer.fixed_length
        k = self.chunk * self.action_dim if fixed else self.max_tokens
        until_eos = self.cfg.max_new_tokens > 0
        if until_eos:
            k, eos = self.cfg.max_new_tokens, lm.eos_token_id
        h = self._last_prefix_hidden(ctx) if start is None else start
        toks, conf, chosen = [], [], []
        ones = torch.ones(b, 1, dtype=ctx.mask.dtype, device=ctx.mask.device)
        full = self.cfg.decode_over == "vocab"
        finite = torch.ones((), dtype=torch.bool, device=ctx.hidden.device)
        for step in range(k):
            probs = lm.token_logits(h, None if full else vocab).float().softmax(-1)
            finite &= torch.isfinite(probs).all()  # argmax would read NaN logits as bin 0; checked once below
            if temperature > 0:
                choice = torch.multinomial((probs.log() / temperature).softmax(-1), 1, generator=generator).squeeze(1)
            else:
                choice = probs.argmax(-1)
            conf.append(probs.gather(1, choice[:, None]).squeeze(1))
            ids = choice if full else vocab[choice]  # vocabulary id fed back to the LM
            tok = self._nearest_bin(ids, vocab) if full else choice
            toks.append(tok)
            chosen.append(ids)
            if not fixed and bool((torch.stack(toks, 1) == self.tokenizer.eos).any(1).all()):
                break
            if until_eos and bool((torch.stack(chosen, 1) == eos).any(1).all()):
                break
            if step + 1 < k:
                h = lm.extend(ctx, lm.embed_tokens(ids)[:, None], ones)[:, -1]
        lm.reset(ctx)
        if not bool(finite):
            raise ValueError("tokens head: the language model produced non-finite (NaN/inf) action-token logits")
        ids = torch.stack(toks, 1)
        ctx.extras["token_ids"] = torch.stack(chosen, 1)  # the vocabulary ids the LM produced
        if until_eos:
            return self._parse_reply(ctx, ids, torch.stack(conf, 1), eos)
        if fixed:
            ctx.extras["token_confidence"] = torch.stack(conf, 1).view(b, self.chunk, self.action_dim)
            return self.tokenizer.decode(ids).view(b, self.chunk, self.action_dim)
        chunks = [self.tokenizer.decode_ids(row.tolist()) for row in ids.cpu()]
        ctx.extras["token_confidence"] = torch.stack(conf, 1)
        return torch.from_numpy(np.stack(chunks)).to(ctx.hidden.device)

    def _parse_reply(self, ctx: Context, bins: Tensor, conf: Tensor, eos: int | None) -> Tensor:
        """LLaVA-VLA's parsing of a generated reply: each row's ids up to and including its first EOS, then
        ``[keep[0]:keep[1]]``, each id decoded to its bin centre, truncated or zero-padded to chunk x action_dim."""
        ids, b, n = ctx.extras["token_ids"], bins.shape[0], self.chunk * self.action_dim
        values = self.tokenizer.decode(bins).float()
        out = torch.zeros(b, n, device=values.device)
        kept_conf = torch.zeros(b, n, device=values.device)
        start, stop = self.cfg.keep if self.cfg.keep is not None else (None, None)
        for r in range(b):
            hits = (ids[r] == eos).nonzero() if eos is not None else ids.new_zeros(0, 1)
            end = int(hits[0, 0]) + 1 if len(hits) else ids.shape[1]
            keep = slice(start, stop)
            v, c = values[r, :end][keep][:n], conf[r, :end][keep][:n]
            out[r, : len(v)], kept_conf[r, : len(c)] = v, c
        ctx.extras["token_confidence"] = kept_conf.view(b, self.chunk, self.action_dim)
        return out.view(b, self.chunk, self.action_dim)
