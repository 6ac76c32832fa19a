"""Prompt step: instruction -> token ids with the backbone's tokenizer and prompt template.

State as text (LLaVA-VLA): the normalized state is binned on a grid of :mod:`vlaforge.processors.bins`, the bins
are mapped to the backbone's action-token ids, *decoded to text* by the tokenizer and written into the template's
``{state}`` slot, so the prompt re-tokenises that text (which need not give back the same ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vlaforge.processors.base import STEPS, Step
from vlaforge.processors.bins import bin_edges, digitize
from vlaforge.types import ATTENTION_MASK, INPUT_IDS, OBS_STATE, REASONING, REASONING_IDS, REASONING_MASK, TASK


def token_id(tokenizer: Any, token: str) -> int:
    """A vocabulary token's id, by its string; a ValueError names it when the tokenizer does not have it."""
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or (i == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
    return int(i)


def state_bins_text(state: np.ndarray, bins: int) -> str:
    """A normalized state in [-1, 1] as space-separated bin indices: ``digitize(s, linspace(-1, 1, bins + 1)[:-1])
    - 1`` (pi0.5 / pi0-FAST write the state into the prompt this way)."""
    idx = np.digitize(np.asarray(state, dtype=np.float64).reshape(-1), np.linspace(-1, 1, bins + 1)[:-1]) - 1
    return " ".join(str(int(i)) for i in idx)


def normalize_instruction(text: str) -> str:
    """Lower-case, collapse whitespace, drop a trailing period (instructions arrive in many spellings)."""
    return " ".join(str(text).strip().lower().split()).rstrip(".")


@STEPS.register("tokenize")
@dataclass
class Tokenize(Step):
    template: str = "{task}"
    max_tokens: int = 48
    lowercase: bool = True  # normalize_instruction (lower-case, whitespace, trailing period) before the template
    suffix: str = ""  # a token (by its string) appended after the prompt, e.g. OpenVLA's "▁" after "Out:"
    # State as text: "" (off) or the bin grid ("uniform_edges" | "norm_bins"); bin k is token id state_ids[k]
    state_text: str = ""
    state_ids: list[int] = field(default_factory=list)
    special_tokens: bool = False  # the tokenizer's own special tokens (BOS ...) as its __call__ adds them (LeRobot)
    state_bins: int = 0  # > 0: the normalized state, as that many bins, fills the template's "{state}" (pi0.5)

    resources: ClassVar[tuple[str, ...]] = ("tokenizer",)

    def __post_init__(self) -> None:
        self._tokenizer: Any = None
        self._cache: dict[str, np.ndarray] = {}
        self._edges = bin_edges(self.state_text, len(self.state_ids)) if self.state_text else None
        if self.state_text and "{state}" not in self.template:
            raise ValueError(f"tokenize: state_text={self.state_text!r} needs a '{{state}}' slot in the template "
                             f"{self.template!r}")

    def state_to_text(self, state: np.ndarray) -> str:
        """The normalized state (D,) -> its bins' tokens decoded to text (LLaVA-VLA's proprio in the prompt)."""
        assert self._edges is not None
        bins = digitize(np.asarray(state).reshape(-1), self._edges)
        return self._tokenizer.decode([self.state_ids[int(k)] for k in bins])

    def bind(self, tokenizer: Any = None, **_: Any) -> None:
        self._tokenizer = tokenizer
        self._cache.clear()
        if self.state_text and tokenizer is not None and max(self.state_ids) >= len(tokenizer):
            raise ValueError(f"tokenize: state as text needs ids the tokenizer can decode (< {len(tokenizer)}), got "
                             f"up to {max(self.state_ids)} (use backbone.action_tokens=count_down or add)")

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        if self._tokenizer is None:
            raise RuntimeError("tokenize step has no tokenizer; load the pipeline with tokenizer=...")
        task = item.get(TASK)
        if not isinstance(task, str):
            raise TypeError(f"'{TASK}': expected an instruction string, got {type(task).__name__}")
        fields = {"task": normalize_instruction(task) if self.lowercase else task}
        if self._edges is not None or self.state_bins:
            if OBS_STATE not in item:
                raise KeyError(f"tokenize: the prompt template {self.template!r} needs '{OBS_STATE}'")
            state = np.asarray(item[OBS_STATE])
            state = state.reshape(-1, state.shape[-1])[-1]  # the newest frame of a history window
            fields["state"] = self.state_to_text(state) if self._edges is not None else \
                state_bins_text(state, self.state_bins)
        elif "{state}" in self.template:
            fields["state"] = ""  # a stateless policy: the slot stays empty
        key = f"{task}\0{fields.get('state', '')}"
        ids = self._cache.get(key)
        if ids is None:
            text = self.template.format(**fields)
            ids = self._tokenizer(text, add_special_tokens=self.special_tokens)["input_ids"]
            if self.suffix:
                ids = [*ids, token_id(self._tokenizer, self.suffix)]
            ids = np.asarray(ids, dtype=np.int64)
            if len(ids) > self.max_tokens:
                raise ValueError(f"instruction is {len(ids)} tokens, more than max_prompt_tokens={self.max_tokens}: "
                                 f"{task!r}")
            if len(self._cache) < 4096:
                self._cache[key] = ids
        item[INPUT_IDS] = ids
        item[ATTENTION_MASK] = np.ones(len(ids), dtype=np.int64)
        reasoning = item.pop(REASONING, None)
        if isinstance(reasoning, str):  # DexVLA-style sub-step reasoning target, ended by EOS
            r = self._tokenizer(normalize_instruction(reasoning), add_special_tokens=False)["input_ids"]
            eos = self._tokenizer.eos_token_id
            r = np.asarray([*r, eos] if eos is not None else r, dtype=np.int64)
            item[REASONING_IDS] = r
            item[REASONING_MASK] = np.ones(len(r), dtype=np.int64)
        return item
