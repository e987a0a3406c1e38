"""Fused OnDARE / OnTIES equal the pre-fused implementation (tests/online_merging_reference.py), update for update.

Several param groups (own lr and weight decay), tensors large enough for OnTIES' sampled top-k candidates
(> 2**16 elements) and for several mask chunks (> 2**20), p < 1 and alpha > 0, merge_every, resample_tau, and
flat partitions (one optimizer tensor holding several model tensors plus padding, as under DeepSpeed ZeRO),
and the packed path of tensors up to 2**16 elements.
Masks: the bulk generator draws the same per-chunk random stream, so no mask is injected; positions are
compared exactly. Parameters: to 1e-6 (lr = 1e-2, so one wrongly kept entry would be off by ~1e-2). The fused
kernel's second moment and Delta differ from the old eager math by an ulp here and there, so OnTIES' top-k
differs from the old one where |Delta| values within an ulp straddle the k-th: at step 1 with eps << |g| every
|Delta| is lr * (1 - eps / |g|), a few dozen ulps for the whole top 5% (the docstring's sign-like step 1), and
which of those near-equal entries win was decided by rounding in the old code as well. The OnTIES cases use
eps = 1e-3 (as the ZeRO test does), which spreads |Delta|; the tie rule itself (exactly k, lowest flat index
first among equal values) is compared on the same values, with massive ties, in
``test_topk_selection_equals_reference_with_ties``.
"""

from __future__ import annotations

import online_merging_reference as ref
import pytest
import torch

from rlkit.optim import OnDAREAdamW, OnTIESAdamW, Segment, TensorReference
from rlkit.optim import merge_select as ms

SHAPES = {"big": (1100, 1000), "mid": (300, 300), "bias": (300,), "small": (5, 3), "norm": (64,)}


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for n, s in SHAPES.items()}


def _groups(ps):
    return [{"params": [ps["big"], ps["small"], ps["norm"]], "weight_decay": 0.1},  # two small ones: packed
            {"params": [ps["mid"], ps["bias"]], "weight_decay": 0.0, "lr": 5e-3}]


def _grads(step, scale=1e-3):
    g = torch.Generator().manual_seed(100 + step)
    return {n: torch.randn(s, generator=g) * scale * (1 + step % 3) for n, s in SHAPES.items()}


def _base(ps):
    g = torch.Generator().manual_seed(7)
    return {n: p.detach() - 0.02 * torch.randn(p.shape, generator=g) for n, p in ps.items()}


CASES = [
    (OnDAREAdamW, {"p": 0.05, "alpha": 0.05}),
    (OnDAREAdamW, {"p": 0.3, "alpha": 0.05, "rescale": False}),  # p > 0.1: dense mask draws
    (OnDAREAdamW, {"p": 0.05, "alpha": 0.05, "resample_tau": True}),
    (OnDAREAdamW, {"p": 0.05, "alpha": 0.05, "merge_every": 2}),
    (OnTIESAdamW, {"p": 0.05, "alpha": 0.05, "eps": 1e-3}),
    (OnTIESAdamW, {"p": 0.3, "alpha": 0.05, "eps": 1e-3}),
    (OnTIESAdamW, {"p": 0.02, "alpha": 0.05, "eps": 1e-3, "merge_every": 2}),
]


@pytest.mark.parametrize("cls,kw", CASES, ids=lambda x: x.__name__ if isinstance(x, type) else str(x))
def test_step_equals_reference(cls, kw):
    new_ps, old_ps = _params(), _params()
    base = _base(new_ps)
    old_cls = getattr(ref, cls.__name__)
    new = cls(_groups(new_ps), lr=1e-2, reference=TensorReference(new_ps, base), **kw)
    old = old_cls(_groups(old_ps), lr=1e-2, reference=TensorReference(old_ps, base), **kw)
    w0 = new_ps["big"].detach().clone()
    for step in range(1, 7):  # an even count: with merge_every=2 the last step is a merge
        grads = _grads(step)
        for ps in (new_ps, old_ps):
            for n, p in ps.items():
                p.grad = grads[n].clone()
        new.step()
        old.step()
        for n in SHAPES:
            torch.testing.assert_close(new_ps[n], old_ps[n], rtol=0, atol=1e-6, msg=f"step {step} {n}")
    for n in SHAPES:
        assert torch.equal(new.state[new_ps[n]]["tau"], old.state[old_ps[n]]["tau"]), n
    changed = (new_ps["mid"].detach() != _params()["mid"].detach()).float().mean()
    assert 0 < changed < 0.95  # sparse merged updates (no weight decay in that group), not AdamW's dense one
    assert not torch.equal(new_ps["big"].detach(), w0)


@pytest.mark.parametrize("p", [0.003, 0.05, 0.3])
def test_bulk_masks_equal_reference_masks(p):
    n_big = 2_500_000  # three chunks
    segs_list = [[Segment("a", 0, n_big, 0, n_big)],
                 [Segment("b", 5, 700_000, 1_000_000, 2_000_000), Segment("c", 700_010, 0, 0, 9),
                  Segment("d", 700_010, 9, 0, 9)],  # a ZeRO-like shard, an empty piece, a tiny tensor
                 [], [Segment("e", 3, 1, 0, 1)]]
    old = ref.OnDAREAdamW([torch.nn.Parameter(torch.zeros(1))], p=p, seed=11)
    got = ms.mask_positions_many(segs_list, p, 11, "delta", 4, "cpu")
    for segs, g in zip(segs_list, got):
        assert torch.equal(g, old._mask_positions(segs, "delta", 4, "cpu")), segs
    assert abs(got[0].numel() / n_big - p) < 5 * (p / n_big) ** 0.5


def test_bulk_masks_redo_chunks_whose_draws_run_short(monkeypatch):
    monkeypatch.setattr(ms, "draws", lambda n, p: 4)  # far too few uniforms: every chunk needs more draws
    segs_list = [[Segment("a", 0, 5000, 0, 5000)], [Segment("b", 0, 3000, 2000, 9000)]]
    got = ms.mask_positions_many(segs_list, 0.05, 3, "tau", 0, "cpu")
    for segs, g in zip(segs_list, got):
        assert torch.equal(g, ms.mask_positions(segs, 0.05, 3, "tau", 0, "cpu"))
    assert 150 < got[0].numel() < 350


class FlatReference(TensorReference):
    """One flat optimizer tensor holding the model tensors at given offsets (gaps = padding), unsharded."""

    def __init__(self, flat, offsets, base):
        super().__init__({}, base)
        self.flat, self.segs = flat, [Segment(n, off, _numel(n), 0, _numel(n)) for n, off in offsets.items()]
        self.names = {n: i for i, n in enumerate(offsets)}

    def segments(self, p):
        assert p is self.flat
        return self.segs

    def name_ids(self):
        return self.names


def _numel(n):
    out = 1
    for d in SHAPES[n]:
        out *= d
    return out


@pytest.mark.parametrize("cls,kw", [(OnDAREAdamW, {"p": 0.05, "alpha": 0.05}),
                                    (OnTIESAdamW, {"p": 0.05, "alpha": 0.05, "eps": 1e-3})],
                         ids=["ondare", "onties"])
def test_flat_partition_equals_reference_and_per_tensor(cls, kw):
    ps = _params()
    base = _base(ps)
    offsets, at = {}, 0
    for n in SHAPES:
        offsets[n] = at
        at += _numel(n) + 13  # padding after each tensor
    flats = []
    for _ in range(2):
        f = torch.nn.Parameter(torch.zeros(at))
        for n, off in offsets.items():
            f.data[off: off + _numel(n)] = ps[n].detach().reshape(-1)
        flats.append(f)
    new = cls([flats[0]], lr=1e-2, weight_decay=0.1, reference=FlatReference(flats[0], offsets, base), **kw)
    old = getattr(ref, cls.__name__)([flats[1]], lr=1e-2, weight_decay=0.1,
                                     reference=FlatReference(flats[1], offsets, base), **kw)
    per_tensor = cls(list(ps.values()), lr=1e-2, weight_decay=0.1, reference=TensorReference(ps, base), **kw)
    for step in range(1, 5):
        grads = _grads(step)
        flat_g = torch.randn(at) * 1e-3  # the padding gets gradients too (its moments must still update)
        for n, off in offsets.items():
            flat_g[off: off + _numel(n)] = grads[n].reshape(-1)
            ps[n].grad = grads[n].clone()
        for f in flats:
            f.grad = flat_g.clone()
        for o in (new, old, per_tensor):
            o.step()
        torch.testing.assert_close(flats[0], flats[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(new.state[flats[0]]["exp_avg_sq"], old.state[flats[1]]["exp_avg_sq"])
        for n, off in offsets.items():
            torch.testing.assert_close(flats[0].detach()[off: off + _numel(n)], ps[n].detach().reshape(-1),
                                       rtol=0, atol=1e-6)


@pytest.mark.parametrize("p", [0.01, 0.2])
def test_topk_selection_equals_reference_with_ties(p):
    g = torch.Generator().manual_seed(1)
    n = 300_000  # sampled candidates path; values on 40 levels: ties at every threshold
    a = torch.cat([torch.randint(0, 40, (n,), generator=g).float(), torch.rand(77, generator=g),
                   torch.full((500,), 3.0)])
    segs = [Segment("x", 0, n, 0, n), Segment("y", n, 77, 0, 77), Segment("z", n + 77, 500, 0, 500)]
    old = ref.OnTIESAdamW([torch.nn.Parameter(torch.zeros(1))], p=p)
    want = old._topk_positions(a, segs)
    idx, vals = ms.topk_select(ms.dense_candidates(a, segs, p), segs, p)
    assert torch.equal(idx.sort().values, want.sort().values) and torch.equal(vals, a[idx])
    assert idx.numel() == sum(ms.k_of(s.numel, p) for s in segs)


def test_sharded_selection_equals_local_selection(monkeypatch):
    """The multi-rank path on one process: a tensor split into pieces (as ZeRO shards it), collectives
    replaced by the identity (world size 1), must keep exactly what the unsplit selection keeps, ties too."""
    monkeypatch.setattr(ms, "_gather_rows", lambda rows, group: rows)
    g = torch.Generator().manual_seed(2)
    a = torch.cat([torch.randint(0, 30, (200_000,), generator=g).float(), torch.rand(5000, generator=g)])
    whole = [Segment("x", 0, 200_000, 0, 200_000), Segment("y", 200_000, 5000, 0, 5000)]
    pieces = [Segment("x", 0, 70_000, 0, 200_000), Segment("y", 200_000, 5000, 0, 5000),
              Segment("x", 70_000, 130_000, 70_000, 200_000)]
    for p in (0.01, 0.3):
        want = ms.topk_select(ms.dense_candidates(a, whole, p), whole, p)[0].sort().values
        got, vals = ms.topk_select(ms.dense_candidates(a, pieces, p), pieces, p, None, {"x": 0, "y": 1})
        assert torch.equal(got.sort().values, want) and torch.equal(vals, a[got])
