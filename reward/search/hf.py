""":class:`HFGenerator`: the search policy through transformers ``generate`` (the default backend).

All prefixes of one call (every beam of every problem, ``n`` samples each) are generated as rows of padded
batches of ``batch_size``; a stop string ends a row through transformers' ``stop_strings`` criterion, which
checks the decoded text, so a separator split across tokens is still found.

Example:
    >>> gen = HFGenerator("embedded:smollm2-135m-instruct", temperature=0.8)          # doctest: +SKIP
    >>> gen.generate([gen.chat([{"role": "user", "content": "2+3?"}])], n=2, stop="\\n\\n")  # doctest: +SKIP
    [[Continuation(text='2 + 3 = 5', tokens=8, finish='stop'), Continuation(...)]]
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from reward.batching import pad_sequences
from reward.generation import encode_prefix
from reward.labeling.mc import load_causal_lm
from reward.search.generator import Continuation, Finish


class HFGenerator:
    """Samples continuations with ``model.generate``.

    Args:
        model, tokenizer: a causal LM and its tokenizer, or ``model`` as a path / hub id / ``embedded:NAME``.
        temperature: 0 is greedy. top_p: nucleus sampling. batch_size: rows (prefix x sample) per generate call.
        seed: torch's RNG is seeded with it here and by :meth:`reseed`.
    """

    def __init__(self, model: Any, tokenizer: Any = None, temperature: float = 0.8, top_p: float = 1.0,
                 batch_size: int = 64, seed: int = 0) -> None:
        if isinstance(model, str):
            model, tokenizer = load_causal_lm(model)
        if tokenizer is None:
            raise ValueError("HFGenerator needs a tokenizer with a model object")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.temperature, self.top_p, self.batch_size = temperature, top_p, batch_size
        eos = model.generation_config.eos_token_id
        self._eos = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._eos.discard(None)
        pad = tokenizer.pad_token_id
        self._pad = pad if pad is not None else next(iter(self._eos))
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for chat ``messages`` (the tokenizer's chat template, generation turn opened)."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prefixes: Sequence[str], n: int, stop: str | None = None,
                 max_new_tokens: int = 128) -> list[list[Continuation]]:
        encoded = [encode_prefix(self.tokenizer, p) for p in prefixes]  # a trailing separator as in running text
        rows = [ids for ids in encoded for _ in range(n)]
        out: list[Continuation] = []
        sample = self.temperature > 0
        kw: dict[str, Any] = dict(do_sample=sample, max_new_tokens=max_new_tokens, pad_token_id=self._pad)
        if sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        if stop:
            kw.update(stop_strings=[stop], tokenizer=self.tokenizer)
        for i in range(0, len(rows), self.batch_size):
            ids, mask = pad_sequences(rows[i:i + self.batch_size], self._pad, side="left")
            with torch.inference_mode():
                gen = self.model.generate(input_ids=ids.to(self.model.device),
                                          attention_mask=mask.to(self.model.device), **kw)
            for row in gen[:, ids.shape[1]:].tolist():
                out.append(self._continuation(row, stop))
        return [out[j * n:(j + 1) * n] for j in range(len(prefixes))]

    def _continuation(self, ids: list[int], stop: str | None) -> Continuation:
        """Text, generated-token count and finish reason of one generated row (padding after the row's end
        is not counted; the EOS token is)."""
        end = next((k for k, t in enumerate(ids) if t in self._eos or t == self._pad), None)
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        finish: Finish
        if stop and stop in text:
            text, finish, tokens = text.split(stop, 1)[0], "stop", len(ids) if end is None else end
        elif end is not None and ids[end] in self._eos:
            finish, tokens = "eos", end + 1
        else:
            finish, tokens = "length", len(ids) if end is None else end
        return Continuation(text, tokens, finish)
