"""reward/batching.py: batch planning, padding, and batched == one-at-a-time forwards."""

from __future__ import annotations

import pytest
import torch

from reward.batching import ForwardBatch, batched_forward, gather_positions, pad_sequences, plan_batches


def test_plan_batches_longest_first_under_budget():
    lengths = [5, 100, 7, 90, 50, 300]
    batches = plan_batches(lengths, token_budget=200)
    assert sorted(i for b in batches for i in b) == list(range(6))  # every index exactly once
    assert batches[0] == [5]                                       # over-budget sequence alone, first
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200
    assert batches[1] == [1, 3]                                    # 2 * 100 <= 200
    assert plan_batches([3] * 10, token_budget=1000, max_batch_size=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert plan_batches([], 10) == []
    with pytest.raises(ValueError):
        plan_batches([1], 0)


def test_pad_sequences_both_sides():
    ids, mask = pad_sequences([[1, 2, 3], [4]], pad_token_id=0, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_sequences([[1, 2, 3], [4]], pad_token_id=9, side="left")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_gather_positions_splits_rows():
    values = torch.arange(12.0).view(3, 4)
    select = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    assert gather_positions(values, select) == [[0.0, 3.0], [], [9.0, 10.0]]


def test_batched_equals_unbatched_mixed_lengths(prm_model):
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(5, 300, (n,), generator=g).tolist() for n in (3, 40, 17, 1, 64, 9, 33)] + [[]]

    def all_logits(b: ForwardBatch):
        return [b.logits[r, : int(n)].clone().cpu() for r, n in enumerate(b.attention_mask.sum(1).tolist())]

    batched = batched_forward(prm_model, seqs, all_logits, pad_token_id=0, token_budget=128)
    single = batched_forward(prm_model, seqs, all_logits, pad_token_id=0, token_budget=128, max_batch_size=1)
    assert batched[-1] is None and single[-1] is None  # empty sequences are not run
    for a, b, s in zip(batched[:-1], single[:-1], seqs):
        assert a.shape == (len(s), 2)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # the reference: a plain forward of each sequence on its own
    with torch.no_grad():
        ref = prm_model(input_ids=torch.tensor([seqs[1]])).logits[0]
    torch.testing.assert_close(batched[1], ref, atol=1e-5, rtol=0)


def test_batched_forward_restores_train_mode_and_uses_inference_mode(prm_model):
    prm_model.train()
    seen = {}

    def reduce(b: ForwardBatch):
        seen["inference"] = torch.is_inference_mode_enabled()
        seen["training"] = prm_model.training
        return [None] * len(b.index)

    batched_forward(prm_model, [[5, 6], [7]], reduce, pad_token_id=0)
    assert seen == {"inference": True, "training": False}
    assert prm_model.training  # restored


def test_positions_select(prm_model):
    got = batched_forward(prm_model, [[5, 6, 7], [8, 9]], lambda b: b.select.sum(1).tolist(), pad_token_id=0,
                          positions=[[0, 2, 7], [1]])
    assert got == [2, 1]  # out-of-range position 7 is ignored


def test_rounds_pads_this_ranks_forwards_to_the_agreed_count(prm_model):
    # a ZeRO-3-sharded model needs every rank to run equally many forwards: `rounds` (e.g. the max over ranks)
    # adds forwards on one padding token whose results are dropped
    calls = []
    hook = prm_model.register_forward_pre_hook(lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)),
                                               with_kwargs=True)
    seqs = [[5, 6, 7], [8, 9], [10]]
    try:
        plain = batched_forward(prm_model, seqs, lambda b: b.logits[:, 0].tolist(), pad_token_id=0, max_batch_size=1)
        n_plain = len(calls)
        agreed = batched_forward(prm_model, seqs, lambda b: b.logits[:, 0].tolist(), pad_token_id=0,
                                 max_batch_size=1, rounds=lambda n: n + 2)
    finally:
        hook.remove()
    assert n_plain == 3 and len(calls) == 3 + 5 and calls[3:5] == [(1, 1), (1, 1)]
    assert agreed == plain
