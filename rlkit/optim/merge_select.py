"""Which update entries an online-merging step keeps: Bernoulli masks (OnDARE) and per-tensor top-k (OnTIES).

Masks are functions of (seed, tag, step, tensor name, element index) only: element ``i`` of model tensor ``T``
belongs to chunk ``i // 2**20``, and each (T, chunk) has its own generator seeded by :func:`key`. A parameter
sharded by DeepSpeed ZeRO therefore gets the same mask as in one process. :func:`mask_positions_many` gives
the same positions as calling :func:`mask_positions` tensor by tensor (same generators, same draws), with
the arithmetic done once on one buffer instead of ~15 small ops per chunk.

Top-k: exactly ``k = max(1, ceil(p * numel))`` entries per model tensor, ties at the k-th value going to the
lowest flat index; exact also when the tensor is split over ranks (candidates and tie counts are gathered).
Candidates: a 4096-entry strided sample gives a lower bound for ~1.7k entries, which are found through the
column maxima of the tensor seen as 8 rows (:func:`_entries_ge`; compare and compaction via numpy on CPU,
:func:`where_ge`); the k-th value among them is ``torch.kthvalue``'s.

Example::

    >>> import torch
    >>> from rlkit.optim.online_merging import Segment
    >>> segs = [Segment("w", 0, 10, 0, 10)]
    >>> idx, vals = topk_select(dense_candidates(torch.arange(10.0), segs, 0.2), segs, 0.2)
    >>> sorted(idx.tolist())
    [8, 9]
"""

from __future__ import annotations

import math
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

CHUNK = 1 << 20  # mask RNG granularity (elements of a tensor): chunk c of tensor T has its own generator
Cands = Tuple[torch.Tensor, torch.Tensor]  # (flat positions, ascending; values there)


def key(*parts) -> int:
    b = "\x1f".join(str(x) for x in parts).encode()
    return (zlib.crc32(b) << 31) ^ zlib.crc32(b[::-1]) ^ (len(b) << 7)


def draws(n: int, p: float) -> int:
    """Uniforms drawn per chunk of n elements for the geometric-gap method (mean + 6 sigma of the keeps)."""
    return int(p * n + 6 * math.sqrt(p * n) + 16)


def kept_positions(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    """Indices in [0, n) kept independently with probability p (geometric gaps when p is small)."""
    if p > 0.1:
        return torch.nonzero(torch.rand(n, generator=gen, device=device) < p).view(-1)
    log1mp = math.log1p(-p)
    out, last = [], -1
    m = draws(n, p)
    while last < n - 1:
        u = torch.rand(m, generator=gen, device=device, dtype=torch.float64).clamp_min_(1e-300)
        pos = torch.log(u).mul_(1.0 / log1mp).to(torch.int64).add_(1).cumsum_(0).add_(last)  # floor: >= 0
        out.append(pos)
        last = int(pos[-1])
    pos = torch.cat(out)
    return pos[pos < n]


def _chunks(segs):
    """(segment, chunk index, chunk size) for every mask chunk a list of segments touches, in order."""
    for s in segs:
        if s.length:
            for c in range(s.start // CHUNK, (s.start + s.length - 1) // CHUNK + 1):
                yield s, c, min(CHUNK, s.numel - c * CHUNK)


def mask_positions(segs, p: float, seed: int, tag: str, step: int, device) -> torch.Tensor:
    """Flat positions kept by a Bernoulli(p) mask keyed by (seed, tag, step, name, element index)."""
    gen = torch.Generator(device=device)
    out = []
    for s, c, n in _chunks(segs):
        gen.manual_seed(key(seed, tag, step, s.name, c) % (1 << 62))
        g = kept_positions(n, p, gen, device).add_(c * CHUNK)
        g = g[(g >= s.start) & (g < s.start + s.length)]
        out.append(g.sub_(s.start - s.offset))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=device)


def mask_positions_many(segs_list: Sequence, p: float, seed: int, tag: str, step: int,
                        device) -> List[torch.Tensor]:
    """:func:`mask_positions` for several optimizer tensors at once (identical output).

    One generator per chunk still draws its uniforms (into one float64 buffer); the gaps, the per-chunk
    cumulative sums and the segment filter are computed once over the buffer. A chunk whose draws do not
    reach its end (the rare case where :func:`kept_positions` draws again) is redone by
    :func:`mask_positions`.
    """
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    if p > 0.1:  # dense draws (torch.rand(n) < p): per chunk work is the draw itself
        return [mask_positions(segs, p, seed, tag, step, device) for segs in segs_list]
    plan = [(i, s, c, n, draws(n, p)) for i, segs in enumerate(segs_list) for s, c, n in _chunks(segs)]
    if not plan:
        return [empty] * len(segs_list)
    sizes = [m for *_, m in plan]
    u = torch.empty(sum(sizes), dtype=torch.float64, device=device)
    gen, off = torch.Generator(device=device), 0
    for (_, s, c, _, m) in plan:
        gen.manual_seed(key(seed, tag, step, s.name, c) % (1 << 62))
        u.narrow(0, off, m).uniform_(generator=gen)  # the same values as torch.rand(m, generator=gen)
        off += m
    cs = u.clamp_min_(1e-300).log_().mul_(1.0 / math.log1p(-p)).to(torch.int64).add_(1).cumsum_(0)
    # cs is increasing over the whole buffer; chunk j's own positions are cs - before_j - 1 (kept_positions
    # starts its cumsum at -1), and its kept ones, lo_j <= pos < hi_j, form one contiguous run of it
    meta = torch.tensor([[n, s.start - c * CHUNK, min(n, s.start + s.length - c * CHUNK),
                          c * CHUNK - s.start + s.offset, m] for i, s, c, n, m in plan],
                        dtype=torch.int64, device=device)
    ends = meta[:, 4].cumsum(0)
    starts = ends - meta[:, 4]
    before = torch.cat([cs.new_zeros(1), cs.index_select(0, ends[:-1] - 1)]).add_(1)
    short = cs.index_select(0, ends - 1).sub_(before) < meta[:, 0] - 1  # draws ended before the chunk did
    a = torch.maximum(torch.searchsorted(cs, before + meta[:, 1]), starts)
    b = torch.minimum(torch.searchsorted(cs, before + meta[:, 2]), ends)
    rows = torch.stack([a, torch.maximum(a, b), meta[:, 3] - before, short.long()], 1).tolist()
    pieces: List[List[torch.Tensor]] = [[] for _ in segs_list]
    for (i, *_), (lo, hi, off, _) in zip(plan, rows):
        pieces[i].append(cs[lo:hi] + off)
    out = [torch.cat(x) if len(x) > 1 else (x[0] if x else empty) for x in pieces]
    for i in {plan[j][0] for j, r in enumerate(rows) if r[3]}:
        out[i] = mask_positions(segs_list[i], p, seed, tag, step, device)
    return out


# ---- top-k ----------------------------------------------------------------------------------------------
def k_of(numel: int, p: float) -> int:
    return min(numel, max(1, math.ceil(p * numel)))


def candidates(a: torch.Tensor, k: int) -> Cands:
    """Positions (ascending) and values of a superset of the k largest entries of a (1-D, >= 0). The values
    are copies, so ``a`` may be a scratch buffer that is overwritten afterwards."""
    n = a.numel()
    if k < n and n > (1 << 16) and k * 8 < n:  # cheap lower bound from a strided sample, verified below
        s = a[:: n >> 12].contiguous()  # 4096 entries
        ks = int(k / n * s.numel() * 1.5) + 8
        for _ in range(2):  # rarely too few candidates: then once more from twice as deep in the sample
            pos, val = _entries_ge(a, torch.topk(s, min(ks, s.numel()), sorted=False).values.min())
            if pos.numel() >= k:
                return pos, val
            ks *= 2
    return torch.arange(n, device=a.device), a.clone()


def _entries_ge(a: torch.Tensor, t: torch.Tensor, rows: int = 8) -> Cands:
    """Ascending positions and values of a >= t, found through the column maxima of ``a`` viewed as
    (rows, n / rows): only the ~1 - (1 - q)**rows of the columns that hold a hit (q: hit rate) are compared
    entry by entry (about 2x faster on CPU than one dense compare and nonzero for q ~ 1.5%)."""
    n = a.numel()
    w = n // rows
    body = a[: rows * w].view(rows, w)
    cols = where_ge(body.amax(0), t)
    sub = body.index_select(1, cols)
    f = where_ge(sub, t)  # row-major over (rows, len(cols)): ascending flat positions
    pos = (cols + torch.arange(0, rows * w, w, device=a.device)[:, None]).view(-1).index_select(0, f)
    val = sub.view(-1).index_select(0, f)
    if n == rows * w:
        return pos, val
    tail = where_ge(a[rows * w:], t).add_(rows * w)
    return torch.cat([pos, tail]), torch.cat([val, a.index_select(0, tail)])


def where_ge(x: torch.Tensor, t) -> torch.Tensor:
    """Ascending flat positions of ``x >= t`` (x contiguous). On CPU float32/64, numpy's compare and
    flatnonzero: ~3x faster there than torch's boolean compare and nonzero (0.74 vs 2.1 ms for 2**20 floats
    at 1.5% hits, measured), and the same positions (t is x's dtype, compared in it)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        thr = (t.to(x.dtype) if torch.is_tensor(t) else torch.tensor(t, dtype=x.dtype)).numpy()
        return torch.from_numpy(np.flatnonzero(x.numpy() >= thr))
    return torch.nonzero(x.reshape(-1) >= t).view(-1)


def topk_small(views: List[torch.Tensor], ks: List[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of several small 1-D tensors (>= 0) at once, by the rule: a stable descending sort of the rows
    (padded with -1) keeps equal values in index order, so each row's first k entries are exactly its pick.
    Returns (row, position in that row, value) of every kept entry."""
    rows = torch.nn.utils.rnn.pad_sequence(views, batch_first=True, padding_value=-1.0)
    sv, si = torch.sort(rows, dim=1, descending=True, stable=True)
    sel = torch.arange(rows.shape[1], device=rows.device) < torch.tensor(ks, device=rows.device)[:, None]
    r, c = sel.nonzero(as_tuple=True)
    return r, si[r, c], sv[r, c]


def dense_candidates(a: torch.Tensor, segs, p: float) -> List[Cands]:
    """:func:`candidates` of every segment of a (flat positions in a), local top-min(k, length) included."""
    out = []
    for s in segs:
        pos, val = candidates(a.narrow(0, s.offset, s.length), min(k_of(s.numel, p), s.length))
        out.append((pos.add_(s.offset), val))
    return out


def _gather_rows(rows: torch.Tensor, group) -> torch.Tensor:
    """all_gather of a (n_i, ...) tensor whose n_i differs per rank (padded with -1)."""
    dist = torch.distributed
    world = dist.get_world_size(group)
    size = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    pad = rows.new_full((max(int(x) for x in sizes),) + tuple(rows.shape[1:]), -1)
    pad[: rows.shape[0]] = rows
    got = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(got, pad, group=group)
    return torch.cat(got)


def _thresholds(cands: List[Cands], segs, p: float, group, ids_of) -> List[float]:
    """Per segment: the k-th largest value over the *whole* model tensor (exact, also when sharded)."""
    ks = [k_of(s.numel, p) for s in segs]
    dev = cands[0][1].device if cands else "cpu"
    vals = torch.cat([v.float() for _, v in cands] + [torch.zeros(0, device=dev)])
    ids = torch.cat([torch.full((v.numel(),), ids_of[s.name], dtype=torch.int64, device=dev)
                     for (_, v), s in zip(cands, segs)] + [torch.zeros(0, dtype=torch.int64, device=dev)])
    v, i = _gather_rows(vals, group), _gather_rows(ids, group)  # pads: value -1, id -1 (sorted first)
    order = torch.argsort(v, descending=True, stable=True)
    v, i = v[order], i[order]
    order = torch.argsort(i, stable=True)
    v, i = v[order], i[order]
    return [float(v[int(torch.searchsorted(i, torch.tensor([ids_of[s.name]], device=i.device))) + k - 1])
            for s, k in zip(segs, ks)]


def topk_select(cands: List[Cands], segs, p: float, group=None,
                ids_of: Optional[Dict[str, int]] = None) -> Cands:
    """Flat positions and values of the top-k per model tensor from per-segment candidates: exactly k, ties
    broken by the lowest index in the flattened tensor. ``ids_of`` (name -> id) and ``group``: sharded."""
    return _local_topk(cands, segs, p) if ids_of is None else _sharded_topk(cands, segs, p, group, ids_of)


def _sharded_topk(cands: List[Cands], segs, p: float, group, ids_of) -> Cands:
    """:func:`topk_select` across ranks: the k-th value from all ranks' candidates, then values above it and
    as many of the equal ones as fit, by ascending flat index (tie counts of lower-index pieces gathered)."""
    dev = cands[0][0].device if cands else "cpu"
    thr = _thresholds(cands, segs, p, group, ids_of)
    gt, eq = [], []
    for (pos, val), t in zip(cands, thr):
        g, e = val > t, val == t
        gt.append((pos[g], val[g]))
        eq.append((pos[e], val[e]))
    stats = torch.tensor([[ids_of[s.name], s.start, g.numel(), e.numel()]
                          for s, (g, _), (e, _) in zip(segs, gt, eq)], dtype=torch.int64, device=dev)
    allst = _gather_rows(stats.view(-1, 4), group)
    before = []
    for s in segs:
        same = allst[:, 0] == ids_of[s.name]
        before.append(int(allst[same, 2].sum()) + int(allst[same & (allst[:, 1] < s.start), 3].sum()))
    idx, vals = [], []
    for s, (gp, gv), (ep, ev), b in zip(segs, gt, eq, before):
        take = max(0, min(ep.numel(), k_of(s.numel, p) - b))
        idx += [gp, ep[:take]]
        vals += [gv, ev[:take]]
    if not idx:
        return torch.zeros(0, dtype=torch.int64, device=dev), torch.zeros(0, device=dev)
    return torch.cat(idx), torch.cat(vals)


def _local_topk(cands: List[Cands], segs, p: float) -> Cands:
    """:func:`topk_select` of unsharded tensors: the k-th largest value by ``torch.kthvalue``, then a mask
    over the candidates (kept positions stay ascending); the lowest-index rule where equal values straddle
    the cut."""
    dev = cands[0][0].device if cands else "cpu"
    idx, vals = [], []
    for (pos, val), s in zip(cands, segs):
        k = k_of(s.numel, p)
        if k < val.numel():
            thr = torch.kthvalue(val, val.numel() - k + 1).values
            i = where_ge(val, thr)
            if i.numel() != k:  # ties at the k-th (common: Adam's |Delta| saturates near lr): all above it,
                vi = val.index_select(0, i)  # then the first of the equal ones (i is ascending)
                above = i[vi > thr]
                i = torch.cat([above, i[vi == thr][: k - above.numel()]])
            pos, val = pos.index_select(0, i), val.index_select(0, i)
        idx.append(pos)
        vals.append(val)
    if not idx:
        return torch.zeros(0, dtype=torch.int64, device=dev), torch.zeros(0, device=dev)
    return torch.cat(idx), torch.cat(vals)
