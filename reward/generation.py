"""Batched text generation with a fixed HF causal LM: the one loop the LLM judge, the MC completer and the
run report's held-out evaluation share (left padding, token-budget batching, greedy or sampled).

Example:
    >>> from rlkit.testing import tiny_causal_lm, tiny_tokenizer
    >>> tok = tiny_tokenizer(); model = tiny_causal_lm(tok)
    >>> out = generate_texts(model, tok, ["48 / 2 =", "good"], max_new_tokens=3, n=2, temperature=1.0)
    >>> [len(o) for o in out]
    [2, 2]
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from reward.batching import pad_sequences, plan_batches
from reward.models._hf import pad_id_of


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, *, n: int = 1,
                   temperature: float = 0.0, top_p: float = 1.0, batch_size: int | None = 16,
                   token_budget: int | None = None) -> list[list[str]]:
    """``n`` continuations of each prompt (already in its final text form, e.g. chat-templated), decoded
    without special tokens; greedy when ``temperature`` is 0.

    Prompts are batched in order by ``batch_size``, or longest first under ``token_budget`` (prompt +
    ``max_new_tokens`` tokens per row, see ``reward.batching.plan_batches``); results come back in prompt
    order. The model is put in eval mode for the call and restored after.
    """
    seqs = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    pad = pad_id_of(tokenizer, model)
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad, "num_return_sequences": n}
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        kw["eos_token_id"] = eos
    if token_budget is not None:
        batches = plan_batches([len(s) + max_new_tokens for s in seqs], token_budget, batch_size)
    else:
        step = batch_size or max(len(seqs), 1)
        batches = [list(range(i, min(i + step, len(seqs)))) for i in range(0, len(seqs), step)]
    device = next(model.parameters()).device
    out: list[list[str]] = [[] for _ in seqs]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                ids, mask = pad_sequences([seqs[i] for i in batch], pad, side="left")
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
                new = gen[:, ids.shape[1]:].cpu()
                for r, i in enumerate(batch):
                    out[i] = [tokenizer.decode(new[r * n + j].tolist(), skip_special_tokens=True) for j in range(n)]
    finally:
        model.train(was_training)
    return out
