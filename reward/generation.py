"""Batched text generation with a fixed HF causal LM: the one loop the LLM judge, the MC completer and the
run report's held-out evaluation share (left padding, token-budget batching, greedy or sampled), and
:func:`encode_prefix`, how every generator here (HF and vLLM, search and MC rollouts) encodes a prefix.

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


_PROBE = "A"  # a letter after a prefix's trailing whitespace makes the tokenizer split that whitespace as in text
_MAX_POPS = 4  # tokens dropped from the end at most to find where the probe starts (else: the plain encoding)


def encode_prefix(tokenizer: Any, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of ``text`` as the model reads them when more text follows.

    A prefix that ends in whitespace, such as a step separator, is otherwise encoded with a merged whitespace
    token the model hardly ever saw before a word: with SmolLM2's tokenizer "= 96\\n\\n" ends in the one token
    "\\n\\n", while "= 96\\n\\nThe answer" has "\\n", "\\n", "The". Continuations of such a prefix go off
    the rails (measured: the SFT policy, asked to go on after its last calculation and a blank line, wrote
    another calculation instead of its answer). The ids returned decode to ``text``; a tokenizer that does
    not round-trip the text gets its plain encoding. ``add_special_tokens``: put the tokens the tokenizer adds
    in front of a text (a BOS) in front, unless the text already starts with them (what vLLM does with a text
    prompt).

    Example:
        >>> from rlkit.testing import tiny_tokenizer
        >>> tok = tiny_tokenizer()
        >>> encode_prefix(tok, "2 + 2 = 4\\n\\n") == tok.encode("2 + 2 = 4\\n\\n", add_special_tokens=False)
        True
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    if text and text[-1].isspace():
        probed = tokenizer.encode(text + _PROBE, add_special_tokens=False)
        for _ in range(_MAX_POPS):  # the probe's tokens (and any whitespace merged into them)
            if not probed or text.startswith(tokenizer.decode(probed)):
                break
            probed.pop()
        if probed and text.startswith(tokenizer.decode(probed)):
            probed += tokenizer.encode(text[len(tokenizer.decode(probed)):], add_special_tokens=False)
            if tokenizer.decode(probed) == text:
                ids = probed
    if add_special_tokens:
        head = tokenizer.encode("", add_special_tokens=True)  # e.g. [BOS]; [] for most chat models
        if head and ids[:len(head)] != head:
            ids = head + ids
    return ids


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, *, n: int = 1,
                   temperature: float = 0.0, top_p: float = 1.0, batch_size: int | None = 16,
                   token_budget: int | None = None) -> list[list[str]]:
    """``n`` continuations of each prompt (already in its final text form, e.g. chat-templated), decoded
    without special tokens; greedy when ``temperature`` is 0.

    Prompts are batched in order by ``batch_size``, or longest first under ``token_budget`` (prompt +
    ``max_new_tokens`` tokens per row, see ``reward.batching.plan_batches``); results come back in prompt
    order. The model is put in eval mode for the call and restored after.
    """
    seqs = [encode_prefix(tokenizer, p) for p in prompts]
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
