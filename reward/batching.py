"""Batched forward passes for reward models: length-sorted padding under a token budget.

Every HF-backed reward scores through :func:`batched_forward`: sequences are sorted by length (longest first,
so an out-of-memory batch shows up at once), grouped so that ``batch_size * longest_length <= token_budget``,
right-padded, run under ``torch.inference_mode`` with the model in eval mode on the model's device, reduced
to small per-sequence results on the device (so full logits never travel to the CPU) and returned in the
caller's original order. The model's train/eval mode is restored afterwards.

Example:
    >>> import torch
    >>> from rlkit import testing
    >>> tok = testing.tiny_tokenizer(); model = testing.tiny_token_classifier(tok)
    >>> seqs = [[5, 6, 7], [8, 9], [10]]
    >>> last = batched_forward(model, seqs, lambda b: [
    ...     b.logits[r, n - 1].tolist() for r, n in enumerate(b.attention_mask.sum(1).tolist())], pad_token_id=0)
    >>> len(last), len(last[0])
    (3, 2)
    >>> at = batched_forward(model, seqs, lambda b: gather_positions(b.logits[..., 1], b.select),
    ...                      pad_token_id=0, positions=[[0, 2], [1], []])
    >>> [len(v) for v in at]
    [2, 1, 0]
    >>> plan_batches([5, 100, 7, 90], token_budget=200)
    [[1, 3], [2, 0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from reward.models._hf import output_logits


@dataclass
class ForwardBatch:
    """One forward batch as a reducer sees it (all tensors on the model's device, rows right-padded).

    ``index[r]`` is the caller's index of row ``r``; ``select`` (B, T, bool) marks the positions the caller
    asked for with ``positions=`` (None when it gave none).
    """

    logits: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    index: list[int]
    select: torch.Tensor | None = None


#: reduce(batch) -> one result per row of the batch, in row order
Reducer = Callable[[ForwardBatch], Sequence[Any]]


#: default padded tokens per batch: large on accelerators; on CPU moderate batches keep activations in cache
#: and measured as fast as or faster than big ones (see benchmarks/prm_scoring.py)
DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "other": 16384}


def default_token_budget(device: torch.device | str | None) -> int:
    """The token budget used when a reward is given ``token_budget=None``: 2048 on CPU, 16384 elsewhere."""
    kind = torch.device(device).type if device is not None else "cpu"
    return DEFAULT_TOKEN_BUDGET["cpu" if kind == "cpu" else "other"]


def plan_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int | None = None) -> list[list[int]]:
    """Group indices into batches, longest first, with ``len(batch) * max_len(batch) <= token_budget``.

    A sequence longer than the budget on its own gets a batch of its own (it is never dropped).
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        n = max(int(lengths[i]), 1)
        full = max_batch_size is not None and len(cur) >= max_batch_size
        if cur and (full or max(cur_max, n) * (len(cur) + 1) > token_budget):
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, n)
    if cur:
        batches.append(cur)
    return batches


def pad_sequences(seqs: Sequence[Sequence[int]], pad_token_id: int,
                  side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) as long tensors, padded on ``side`` to the longest sequence."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if not len(s):
            continue
        t = torch.as_tensor(list(s), dtype=torch.long)
        if side == "right":
            ids[r, : len(s)] = t
            mask[r, : len(s)] = 1
        elif side == "left":
            ids[r, width - len(s):] = t
            mask[r, width - len(s):] = 1
        else:
            raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    return ids, mask


def batched_forward(model: torch.nn.Module, sequences: Sequence[Sequence[int]], reduce: Reducer, *,
                    pad_token_id: int, device: torch.device | str | None = None, token_budget: int | None = None,
                    max_batch_size: int | None = None,
                    positions: Sequence[Sequence[int]] | None = None,
                    rounds: Callable[[int], int] | None = None) -> list[Any]:
    """Run ``model`` on every sequence in length-sorted, right-padded batches; ``reduce`` each batch's logits.

    Args:
        model: any HF-style model whose output has ``.logits`` (or logits as its first element).
        sequences: token ids per sequence (no padding). Empty sequences are not run; their result is None.
        reduce: called per batch with a :class:`ForwardBatch`; returns one result per row, in the batch's row
            order. Row ``r`` holds real tokens at positions ``0 .. len - 1`` (right padding), so token positions
            are the same as in an unpadded forward.
        pad_token_id: id used for padding (masked out; positions after a row's end are never read).
        device: where to run; default the model's device.
        token_budget: upper bound on ``rows * longest_row`` per batch (padded tokens count); default
            :func:`default_token_budget` of the device.
        max_batch_size: optional cap on rows per batch.
        positions: optional token positions per sequence, given to the reducer as ``batch.select``
            (positions outside a sequence are ignored).
        rounds: for a model sharded across processes (DeepSpeed ZeRO-3 gathers each layer's weights from every
            rank during a forward, so all ranks must run equally many forwards): called with this rank's number
            of batches, returns how many forwards to run (e.g. the maximum over ranks); the extra forwards run
            on one padding token and are discarded.

    Returns:
        The per-sequence results in the order of ``sequences``.
    """
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    device = torch.device(device)
    if token_budget is None:
        token_budget = default_token_budget(device)
    results: list[Any] = [None] * len(sequences)
    todo = [i for i, s in enumerate(sequences) if len(s)]
    was_training = model.training
    model.eval()
    batches = plan_batches([len(sequences[i]) for i in todo], token_budget, max_batch_size)
    extra = (rounds(len(batches)) - len(batches)) if rounds is not None else 0
    # a sharded model's hooks write gathered weights into its parameters: no inference tensors there
    grad_off = torch.no_grad() if rounds is not None else torch.inference_mode()
    try:
        with grad_off:
            for _ in range(extra):
                model(input_ids=torch.full((1, 1), pad_token_id, device=device))
            for batch in batches:
                idx = [todo[b] for b in batch]
                ids, mask = pad_sequences([sequences[i] for i in idx], pad_token_id, "right")
                ids, mask = ids.to(device), mask.to(device)
                logits = output_logits(model(input_ids=ids, attention_mask=mask))
                select = None
                if positions is not None:
                    sel = torch.zeros(ids.shape, dtype=torch.bool)
                    for r, i in enumerate(idx):
                        ok = [p for p in positions[i] if 0 <= p < len(sequences[i])]
                        sel[r, ok] = True
                    select = sel.to(device)
                values = list(reduce(ForwardBatch(logits, ids, mask, idx, select)))
                if len(values) != len(idx):
                    raise RuntimeError(f"reducer returned {len(values)} results for a batch of {len(idx)}")
                for i, v in zip(idx, values):
                    results[i] = v
    finally:
        model.train(was_training)
    return results


def gather_positions(values: torch.Tensor, select: torch.Tensor) -> list[list[float]]:
    """Per row, the entries of ``values`` (B, T) where ``select`` (B, T, bool) is true, as Python floats.

    One device->host copy per batch, however many rows.
    """
    counts = select.sum(dim=1).tolist()
    flat = values[select].float().cpu().tolist()
    out, pos = [], 0
    for c in counts:
        out.append(flat[pos: pos + c])
        pos += c
    return out
