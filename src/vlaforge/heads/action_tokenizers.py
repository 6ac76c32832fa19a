"""Action tokenizers: normalized action chunks (B, H, Da) <-> token ids in ``[0, vocab)``.

* :class:`UniformBinner` — ``n_bins`` equal bins per dimension over ``[low, high]`` (RT-2 / OpenVLA / LLaVA-VLA),
  or OpenVLA's edge convention on any fixed grid (LLaVA-VLA's non-uniform ``use_norm_bins``, processors.bins).
* :class:`QuantileBinner` — bins with equal training mass per dimension, fitted on the training actions.
* :class:`FastTokenizer` — pi0-FAST (Pertsch et al., 2025): DCT over time per dimension, coefficients scaled
  and rounded, flattened low-frequency first, then byte-pair encoded with a BPE trained on the training chunks
  (``tokenizers``). Variable length; the last id is end-of-sequence. Reference: ``physical-intelligence/fast``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, trainers
from torch import Tensor


class UniformBinner:
    """``n_bins`` equal bins over ``[low, high]``; encode clips, decode returns bin centres (error <= half a bin).

    ``edges=True`` is OpenVLA's (and LLaVA-VLA's) convention instead: ``n_bins`` *edges* ``linspace(low, high,
    n_bins)``, token ``k = digitize(x, edges) - 1`` in ``[0, n_bins)`` (``k = n_bins - 1`` only at ``x = high``),
    decoded to the ``n_bins - 1`` centres between edges with ``k`` clipped to ``n_bins - 2``. ``grid``: explicit
    increasing edges in that convention instead of the linspace (LLaVA-VLA's ``use_norm_bins``).
    """

    fixed_length = True

    def __init__(self, n_bins: int = 256, low: float = -1.0, high: float = 1.0, edges: bool = False,
                 grid: np.ndarray | None = None) -> None:
        if grid is not None:
            n_bins, low, high, edges = len(grid), float(grid[0]), float(grid[-1]), True
        if n_bins < 2 or not high > low:
            raise ValueError(f"binner: need n_bins >= 2 and high > low, got n_bins={n_bins}, [{low}, {high}]")
        self.n_bins, self.low, self.high, self.edges = n_bins, low, high, edges
        self.width = (high - low) / (n_bins - 1 if edges else n_bins)
        self.vocab = n_bins
        self._edges = (torch.linspace(low, high, n_bins, dtype=torch.float64) if grid is None
                       else torch.as_tensor(np.asarray(grid, dtype=np.float64)))

    def encode(self, x: Tensor) -> Tensor:
        if self.edges:  # np.digitize(x, edges) - 1 (right-open bins), on float64 edges as numpy computes them
            x = x.double().clamp(self.low, self.high)
            return (torch.bucketize(x, self._edges.to(x.device), right=True) - 1).clamp(0, self.n_bins - 1)
        idx = torch.floor((x.float() - self.low) / self.width).long()
        return idx.clamp(0, self.n_bins - 1)

    def decode(self, idx: Tensor) -> Tensor:
        if self.edges:
            e = self._edges.to(idx.device)
            centres = ((e[:-1] + e[1:]) / 2).float()
            return centres[idx.clamp(0, self.n_bins - 2)]
        return self.low + (idx.float() + 0.5) * self.width


class QuantileBinner:
    """Per-dimension bins holding equal shares of the training actions; ``edges`` is (n_bins + 1, Da)."""

    fixed_length = True

    def __init__(self, edges: Callable[[], Tensor]) -> None:
        self._edges = edges  # reads the head's buffer (saved with the weights; follows .to(device))
        self.vocab = self.n_bins = edges().shape[0] - 1

    @property
    def edges(self) -> Tensor:
        return self._edges()

    @staticmethod
    def fit_edges(actions: np.ndarray, n_bins: int) -> np.ndarray:
        """Quantile edges of (N, Da) actions; outer edges at the data's min and max."""
        qs = np.quantile(actions, np.linspace(0, 1, n_bins + 1), axis=0)
        return np.maximum.accumulate(qs, axis=0)  # monotone even where quantiles tie

    def encode(self, x: Tensor) -> Tensor:
        e = self.edges.to(x.device, torch.float32)
        flat = x.float().reshape(-1, e.shape[1])
        idx = torch.stack([torch.bucketize(flat[:, d].contiguous(), e[1:-1, d].contiguous(), right=True)
                           for d in range(e.shape[1])], dim=1)
        return idx.clamp(0, self.n_bins - 1).reshape(x.shape)

    def decode(self, idx: Tensor) -> Tensor:
        e = self.edges.to(idx.device, torch.float32)
        centres = (e[:-1] + e[1:]) / 2  # (n_bins, Da)
        flat = idx.reshape(-1, e.shape[1])
        out = torch.gather(centres, 0, flat.clamp(0, self.n_bins - 1))
        return out.reshape(idx.shape)


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis (n, n): ``coeffs = D @ x`` and ``x = D.T @ coeffs``."""
    k = np.arange(n)[:, None]
    t = np.arange(n)[None, :]
    d = np.cos(np.pi * (t + 0.5) * k / n) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


class FastTokenizer:
    """pi0-FAST: DCT + scale + round + BPE; ids ``0..vocab-2`` are BPE tokens, ``vocab-1`` is end-of-sequence."""

    fixed_length = False

    def __init__(self, vocab: int, chunk: int, action_dim: int, scale: float = 10.0) -> None:
        self.vocab, self.chunk, self.action_dim, self.scale = vocab, chunk, action_dim, scale
        self.eos = vocab - 1
        self._dct = dct_matrix(chunk)
        self.min_token = 0
        self.bpe: Tokenizer | None = None

    def _ints(self, chunks: np.ndarray) -> np.ndarray:
        coeffs = np.einsum("kt,btd->bkd", self._dct, chunks)  # DCT over time, per dimension
        return np.rint(coeffs * self.scale).astype(np.int64).reshape(len(chunks), -1)  # frequency-major

    def fit(self, chunks: np.ndarray) -> None:
        """Train the BPE on normalized training chunks (N, H, Da)."""
        ints = self._ints(chunks)
        self.min_token = int(ints.min())
        span = int(ints.max()) - self.min_token + 1
        if span >= self.vocab - 1:
            raise ValueError(f"FAST: {span} distinct coefficient values need a vocabulary larger than "
                             f"{self.vocab - 1}; raise head.n_bins (and backbone.num_action_tokens)")
        bpe = Tokenizer(models.BPE())
        bpe.decoder = decoders.Fuse()
        alphabet = [chr(i) for i in range(span)]
        trainer = trainers.BpeTrainer(vocab_size=self.vocab - 1, initial_alphabet=alphabet, show_progress=False,
                                      max_token_length=10000)
        bpe.train_from_iterator([self._text(row) for row in ints], trainer)
        self.bpe = bpe

    def _text(self, row: np.ndarray) -> str:
        return "".join(chr(max(int(v) - self.min_token, 0)) for v in row)

    def encode_chunks(self, chunks: np.ndarray) -> list[list[int]]:
        """Token ids per chunk, ending with EOS."""
        if self.bpe is None:
            raise RuntimeError("FAST tokenizer is not fitted: train through vlaforge (it fits on the data first)")
        return [[*self.bpe.encode(self._text(row)).ids, self.eos] for row in self._ints(chunks)]

    def decode_ids(self, ids: list[int]) -> np.ndarray:
        """Ids (EOS and anything after it dropped) -> a chunk (H, Da); malformed streams are zero-filled."""
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        text = self.bpe.decode(ids) if ids else ""
        vals = np.array([ord(c) + self.min_token for c in text], dtype=np.float64)
        n = self.chunk * self.action_dim
        vals = np.pad(vals[:n], (0, max(0, n - len(vals))))
        coeffs = vals.reshape(self.chunk, self.action_dim) / self.scale
        return (self._dct.T @ coeffs).astype(np.float32)

    def state(self) -> bytes:
        if self.bpe is None:
            return b""
        return json.dumps({"min_token": self.min_token, "bpe": self.bpe.to_str()}).encode()

    def load_state(self, data: bytes) -> None:
        if not data:
            return
        d = json.loads(data.decode())
        self.min_token = int(d["min_token"])
        self.bpe = Tokenizer.from_str(d["bpe"])
