"""Online merging optimizers: OnDARE-AdamW and OnTIES-AdamW (Lu et al. 2024, arXiv 2405.17931).

Each step runs AdamW on the raw gradient (moments, bias correction, eps exactly as ``torch.optim.AdamW``),
then the Adam update ``Delta`` is sparsified and merged with the reference task vector
``tau = theta_ref - theta_base`` (theta_ref = the policy at step 0, i.e. the SFT model) before it is applied::

    p <- p * (1 - lr * weight_decay)                     # decoupled weight decay, outside the merge
    p <- p + (1 - alpha) * Delta' + alpha * tau'          # the merged update

* OnDARE: ``Delta' = Delta * m / p`` with ``m ~ Bernoulli(p)`` drawn fresh every merge;
  ``tau' = tau * m_tau / p`` with one mask drawn at the first step (``resample_tau=True`` redraws it every
  merge). ``rescale=False`` drops the ``1 / p`` factor on both.
* OnTIES: ``Delta'`` keeps the k largest ``|Delta|`` of each model tensor, ``k = max(1, ceil(p * numel))``
  (ties at the k-th value go to the lowest flat index); ``tau'`` is the same top-p of ``tau`` (computed
  once). Sign election per entry: ``s = +1 if tau' + Delta' >= 0 else -1`` (unweighted sum); entries of
  ``Delta'`` and ``tau'`` whose sign differs from ``s`` are dropped (zeros have no sign, contribute nothing).

Implementation (why it is fast): the Adam part is torch's fused AdamW kernel (``torch._fused_adamw_``, one
pass per element). OnDARE calls it with ``eps = inf``, which updates the moments and applies the weight decay
but makes the dense update exactly 0 (an entry whose moments are not finite becomes NaN, as in AdamW); Adam's
update is then computed only at the ~p*n kept positions (from the gathered moments) and added there. OnTIES
lets the kernel write ``Delta`` into a scratch buffer (one model tensor at a time, reused), finds top-k
candidates in it (:mod:`rlkit.optim.merge_select`) and merges at the kept positions. Tensors of at most
2**16 elements are stepped packed together. ``tau'`` is added only at its nonzero positions when it
is sparse (positions and values cached, 2 * p * n numbers). Consequences: OnDARE with ``p=1, alpha=0`` is
bit-for-bit ``torch.optim.AdamW(fused=True)`` (and the for-loop AdamW to rounding: the kernel's second
moment differs from ``mul_().addcmul_()`` by an ulp here and there); OnTIES with ``p=1, alpha=0`` equals it
only when ``tau = 0`` (the sign election still uses tau). OnTIES' top-k is over the kernel's ``Delta``, so
versus eager-math AdamW the kept set can differ only where two ``|Delta|`` lie within an ulp of the k-th.

``merge_every=K > 1``: the K-1 steps in between apply plain AdamW updates and accumulate them; the K-th step
rolls them back and applies the merge of the accumulated update (the released code's bug, where non-merge
steps updated only the first parameter, is absent: every parameter is handled every step).
``alpha_follows_lr=True`` scales alpha by ``lr / initial_lr`` (default: constant alpha, as released).

Masks and top-k thresholds are functions of (seed, step, tensor name, element index) only, so a parameter
sharded by DeepSpeed ZeRO gets the same update as in one process, and replicas (DDP/ZeRO-0) agree
(:mod:`rlkit.optim.merge_select`). Sharding is described by a *reference* object (see
:class:`TensorReference`, and ``rlkit.optim.zero_mapping.SafetensorsReference`` for HF folders and ZeRO-2/3
flat partitions).

Example::

    >>> import torch
    >>> from rlkit.optim import OnDAREAdamW, TensorReference
    >>> model = torch.nn.Linear(4, 2)
    >>> base = {n: t.detach() - 0.01 for n, t in model.named_parameters()}   # pretrained weights
    >>> opt = OnDAREAdamW(model.parameters(), lr=1e-3, p=0.5, alpha=1e-3,
    ...                   reference=TensorReference(model, base))
    >>> model(torch.randn(3, 4)).sum().backward(); opt.step()
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch

import rlkit.optim.merge_select as ms

__all__ = ["Segment", "TensorReference", "OnlineMergingAdamW", "OnDAREAdamW", "OnTIESAdamW"]

_SMALL = 1 << 16  # tensors up to this size are stepped packed together (per-tensor op overhead dominates)


class Segment(NamedTuple):
    """A piece of model tensor ``name`` held by an optimizer tensor (flattened views on both sides).

    ``offset``: where it starts in the optimizer tensor; ``length``: elements; ``start``: where it starts
    in the flattened model tensor; ``numel``: the model tensor's full size.
    """

    name: str
    offset: int
    length: int
    start: int
    numel: int


class TensorReference:
    """Plain (unsharded) reference: maps each optimizer tensor to its model name and gives base weights.

    ``base``: name -> tensor of base (pretrained) weights, or a callable ``(name, start, length) -> 1-D
    tensor`` reading a flat slice. Used by the optimizer at the first step; tau = (value then) - base.
    """

    sharded = False
    group = None

    def __init__(self, model_or_names, base):
        named = model_or_names.named_parameters() if hasattr(model_or_names, "named_parameters") \
            else model_or_names
        self.names = {id(t): n for n, t in (named.items() if isinstance(named, dict) else named)}
        self._base = base

    def segments(self, p: torch.Tensor) -> List[Segment]:
        if id(p) not in self.names:
            raise KeyError("online merging: an optimizer tensor is not a named model parameter")
        n = p.numel()
        return [Segment(self.names[id(p)], 0, n, 0, n)]

    def base_flat(self, p: torch.Tensor, segs: List[Segment]) -> torch.Tensor:
        out = p.detach().reshape(-1).clone()  # entries without a base counterpart get tau = 0
        for s in segs:
            if callable(self._base):
                v = self._base(s.name, s.start, s.length)
            else:
                v = self._base[s.name].reshape(-1).narrow(0, s.start, s.length)
            out.narrow(0, s.offset, s.length).copy_(v)
        return out

    def name_ids(self) -> Dict[str, int]:
        return {n: i for i, n in enumerate(sorted(self.names.values()))}



class _Item(NamedTuple):
    """One optimizer tensor in a step: flattened data and grad, its state, its segments."""

    flat: torch.Tensor
    grad: torch.Tensor
    st: dict
    segs: List[Segment]


class _Hyper(NamedTuple):
    step: int
    step_t: torch.Tensor  # the step as the 0-d float tensor torch's fused kernel reads
    lr: float
    b1: float
    b2: float
    eps: float
    wd: float
    alpha: float


def _fused_adamw(params, grads, ms_, vs, h: _Hyper, wd: float, eps: float) -> None:
    """torch's fused AdamW kernel on lists of flat tensors (all at step ``h.step``): moments, decoupled decay
    and update in one pass per element. ``eps = inf`` makes the update exactly 0 (moments and decay only)."""
    torch._fused_adamw_(params, grads, ms_, vs, [], [h.step_t] * len(params), lr=h.lr, beta1=h.b1,
                        beta2=h.b2, weight_decay=wd, eps=eps, amsgrad=False, maximize=False)


def _delta_at(m: torch.Tensor, v: torch.Tensor, h: _Hyper) -> torch.Tensor:
    """Adam's update from (gathered) moments: ``-lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``."""
    bc1, bc2 = 1 - h.b1 ** h.step, 1 - h.b2 ** h.step
    return torch.mul(m, -h.lr / bc1).div_((v.sqrt() / math.sqrt(bc2)).add_(h.eps))


class OnlineMergingAdamW(torch.optim.Optimizer):
    """AdamW whose update is sparsified and merged with a reference task vector (base of both variants).

    Args:
        params: parameters or groups (each group may override lr, betas, eps, weight_decay).
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decoupled decay, applied before the update).
        p: reserve rate (fraction of update entries kept). Paper default 0.01.
        alpha: merge weight of tau. Paper default ~1e-7 (retune with fp32 master weights).
        reference: object with ``segments(param)``, ``base_flat(param, segments)``, ``sharded``, ``group``
            and ``name_ids()`` (:class:`TensorReference` or ``zero_mapping.SafetensorsReference``); may be set
            later as ``opt.reference = ...`` but before the first step.
        merge_every: merge every K steps (plain AdamW steps in between, rolled back at the merge).
        seed: seed of the random masks (OnDARE).
        alpha_follows_lr: scale alpha by lr / initial_lr (set by LR schedulers).

    Memory: AdamW's two moments plus ``tau`` (one parameter-sized tensor), plus, when tau' is sparse, its
    nonzero positions and values packed (2 * p * numel 4-byte numbers: 2% of a tensor at p = 0.01; see
    :meth:`cache_bytes`), so that adding alpha * tau' reads 8 bytes per kept entry instead of gathering from
    the cold dense tau. During a step: a scratch buffer of the largest model tensor (OnTIES) and the
    gathered p * numel entries.
    """

    method = ""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, p: float = 0.01, alpha: float = 1e-7, reference=None,
                 merge_every: int = 1, seed: int = 0, alpha_follows_lr: bool = False,
                 rescale: bool = True, resample_tau: bool = False):
        if not 0.0 < p <= 1.0:
            raise ValueError(f"reserve rate p must be in (0, 1], got {p}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if int(merge_every) < 1:
            raise ValueError(f"merge_every must be >= 1, got {merge_every}")
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.p, self.alpha, self.reference = float(p), float(alpha), reference
        self.merge_every, self.seed, self.alpha_follows_lr = int(merge_every), int(seed), alpha_follows_lr
        self.rescale, self.resample_tau = bool(rescale), bool(resample_tau)
        self._segs: Dict[int, List[Segment]] = {}
        self._tau_pos: Dict[int, tuple] = {}  # id(tau) -> (tau, (positions, values) of its nonzeros or None)

    # ---- layout -----------------------------------------------------------------------------------------
    def _segments(self, p) -> List[Segment]:
        if id(p) not in self._segs:
            if self.reference is None:
                raise RuntimeError(f"{type(self).__name__}: no reference set (pass reference=..., e.g. "
                                   "rlkit.optim.build_optimizer builds one from base_model)")
            self._segs[id(p)] = list(self.reference.segments(p))
        return self._segs[id(p)]

    def _sharded(self) -> bool:
        return bool(getattr(self.reference, "sharded", False)) and torch.distributed.is_available() \
            and torch.distributed.is_initialized()

    def _dist(self) -> tuple:
        """(group, name ids) for :func:`merge_select.topk_select` when sharded, else (None, None)."""
        return (self.reference.group, self.reference.name_ids()) if self._sharded() else (None, None)

    def _is_small(self, it: "_Item") -> bool:
        """A whole unsharded tensor of at most 2**16 elements (handled packed with the others like it)."""
        s = it.segs
        return it.flat.numel() <= _SMALL and len(s) == 1 and s[0].offset == 0 and s[0].start == 0 \
            and s[0].length == s[0].numel == it.flat.numel() and not self._sharded()

    def _mask_positions(self, segs: List[Segment], tag: str, step: int, device) -> torch.Tensor:
        """Flat positions kept by a Bernoulli(p) mask keyed by (seed, tag, step, name, element index)."""
        return ms.mask_positions(segs, self.p, self.seed, tag, step, device)

    def _masks(self, items: List[_Item], tag: str, step: int) -> List[torch.Tensor]:
        if not items:
            return []
        return ms.mask_positions_many([it.segs for it in items], self.p, self.seed, tag, step,
                                      items[0].flat.device)

    # ---- tau ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_tau(self, p, flat, segs) -> torch.Tensor:
        tau = flat.detach().float() - self.reference.base_flat(p, segs).to(flat.device, torch.float32)
        covered = torch.zeros_like(tau, dtype=torch.bool)
        for s in segs:
            covered.narrow(0, s.offset, s.length).fill_(True)
        tau.masked_fill_(~covered, 0.0)  # padding of flat partitions
        if self.p >= 1.0 or (self.method == "dare" and self.resample_tau):
            return tau.to(flat.dtype)
        if self.method == "ties":
            idx = ms.topk_select(ms.dense_candidates(tau.abs(), segs, self.p), segs, self.p, *self._dist())[0]
        else:
            idx = self._mask_positions(segs, "tau", 0, flat.device)
        out = torch.zeros_like(tau)
        scale = 1.0 / self.p if (self.method == "dare" and self.rescale) else 1.0
        out[idx] = tau[idx] * scale
        return out.to(flat.dtype)

    def _sparse_tau(self, tau: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(positions, values) of tau's nonzeros, contiguous, when at most 1/16 of it is nonzero; else None.
        Cached at first use (tau is constant; a loaded state dict clears the cache)."""
        hit = self._tau_pos.get(id(tau))
        if hit is None or hit[0] is not tau:
            nz = torch.nonzero(tau).view(-1)
            sparse = None
            if nz.numel() * 16 <= tau.numel():
                small = tau.numel() < 2 ** 31
                sparse = (nz.to(torch.int32 if small else torch.int64), tau.index_select(0, nz))
            hit = (tau, sparse)
            self._tau_pos[id(tau)] = hit
        return hit[1]

    def _add_tau(self, it: _Item, alpha: float) -> None:
        """flat += alpha * tau, touching only tau's nonzero entries when it is sparse."""
        sparse = self._sparse_tau(it.st["tau"])
        if sparse is None:
            it.flat.add_(it.st["tau"], alpha=alpha)
        else:
            it.flat.index_add_(0, sparse[0], sparse[1], alpha=alpha)

    def cache_bytes(self) -> int:
        """Bytes held outside ``state`` across steps: positions and values of sparse tau' (8 * p * numel)."""
        return sum(t.numel() * t.element_size() for _, sp in self._tau_pos.values() if sp for t in sp)

    def load_state_dict(self, state_dict: dict) -> None:
        self._tau_pos.clear()
        super().load_state_dict(state_dict)

    # ---- step -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = float(group["lr"]), group["betas"], group["eps"], group["weight_decay"]
            alpha = self.alpha
            if self.alpha_follows_lr and group.get("initial_lr"):
                alpha = alpha * lr / group["initial_lr"]
            buckets: Dict[tuple, List[_Item]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("online merging optimizers do not support sparse gradients")
                flat, st, segs = p.data.view(-1), self.state[p], self._segments(p)
                if "step" not in st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(flat)
                    st["exp_avg_sq"] = torch.zeros_like(flat)
                    if self.merge_every > 1:
                        st["accum"] = torch.zeros_like(flat)
                if "tau" not in st:  # after a resume it comes from the state dict
                    st["tau"] = self._init_tau(p, flat, segs)
                st["step"] += 1
                it = _Item(flat, p.grad.reshape(-1), st, segs)
                buckets.setdefault((flat.device, flat.dtype, st["step"]), []).append(it)
            for (dev, _, step), items in buckets.items():
                step_t = torch.full((), float(step), dtype=torch.float32, device=dev)
                h = _Hyper(step, step_t, lr, b1, b2, eps, wd, alpha)
                if self.merge_every > 1:
                    self._accumulating_step(items, h)
                else:
                    self._merge_step(items, h)
        return loss

    def _dense_delta(self, it: _Item, h: _Hyper) -> torch.Tensor:
        """Adam's update as a new dense tensor (updates the moments; no decay)."""
        delta = torch.zeros_like(it.flat)
        _fused_adamw([delta], [it.grad], [it.st["exp_avg"]], [it.st["exp_avg_sq"]], h, 0.0, h.eps)
        return delta

    def _accumulating_step(self, items: List[_Item], h: _Hyper) -> None:
        """merge_every > 1: plain AdamW steps, accumulated; the K-th rolls them back and merges their sum."""
        for it in items:
            delta = self._dense_delta(it, h)
            if h.wd:
                it.flat.mul_(1 - h.lr * h.wd)
            acc = it.st["accum"]
            if h.step % self.merge_every:
                acc.add_(delta)
                it.flat.add_(delta)
                continue
            it.flat.sub_(acc)  # roll back the plain steps since the last merge
            delta.add_(acc)
            acc.zero_()
            self._merge_dense(it, delta, h)

    def _merge_step(self, items: List[_Item], h: _Hyper) -> None:
        """One merge step of tensors sharing device, dtype and step count (merge_every = 1)."""
        raise NotImplementedError

    def _merge_dense(self, it: _Item, delta: torch.Tensor, h: _Hyper) -> None:
        """Apply the merge of a dense update ``delta`` (weight decay already applied)."""
        raise NotImplementedError


class OnDAREAdamW(OnlineMergingAdamW):
    """OnDARE-AdamW: random update dropout (keep prob ``p``) merged with the dropped-out tau.

    ``rescale`` (default True, as the released code): kept entries of Delta and tau are divided by p, so
    the update is unbiased for AdamW's. ``resample_tau`` (default False, as released): the tau mask is drawn
    once at the first step (and saved with the state); True redraws it every merge.

    Example::

        opt = OnDAREAdamW(model.parameters(), lr=1e-6, p=0.01, alpha=1e-7,
                          reference=rlkit.optim.SafetensorsReference(model, "path/to/base"))
    """

    method = "dare"

    def _merge_step(self, items, h):
        if self.p >= 1.0 and not h.alpha:  # plain AdamW
            m, v = [it.st["exp_avg"] for it in items], [it.st["exp_avg_sq"] for it in items]
            _fused_adamw([it.flat for it in items], [it.grad for it in items], m, v, h, h.wd, h.eps)
            return
        if self.p >= 1.0:
            for it in items:
                delta = self._dense_delta(it, h)
                if h.wd:
                    it.flat.mul_(1 - h.lr * h.wd)
                self._merge_dense(it, delta, h)
            return
        small = [it for it in items if self._is_small(it)]
        if small:
            self._merge_small(small, h)
        big = [it for it in items if not self._is_small(it)]
        scale = (1 - h.alpha) * self._scale()
        tau_idx = self._masks(big, "tau", h.step) if h.alpha and self.resample_tau else [None] * len(big)
        for it, i, ti in zip(big, self._masks(big, "delta", h.step), tau_idx):
            # one tensor at a time, so its moments and values are still in cache for the sparse part
            m, v = it.st["exp_avg"], it.st["exp_avg_sq"]
            _fused_adamw([it.flat], [it.grad], [m], [v], h, h.wd, math.inf)  # moments, decay; update 0
            # scatter_add_: the same sums as index_add_, faster on CPU (no duplicate positions here)
            it.flat.scatter_add_(0, i, _delta_at(m.index_select(0, i), v.index_select(0, i), h).mul_(scale))
            self._merge_tau(it, h, ti)

    def _merge_small(self, items, h):
        """Tensors of at most 2**16 elements, packed end to end: a few ops for all of them."""
        flats, sizes = [it.flat for it in items], [it.flat.numel() for it in items]
        m, v = [it.st["exp_avg"] for it in items], [it.st["exp_avg_sq"] for it in items]
        _fused_adamw(flats, [it.grad for it in items], m, v, h, h.wd, math.inf)
        starts = [0]
        for n in sizes[:-1]:
            starts.append(starts[-1] + n)
        packed_segs = [[s._replace(offset=s.offset + o) for it, o in zip(items, starts) for s in it.segs]]
        dev = flats[0].device
        pos = ms.mask_positions_many(packed_segs, self.p, self.seed, "delta", h.step, dev)[0]
        d = _delta_at(torch.cat(m).index_select(0, pos), torch.cat(v).index_select(0, pos), h)
        packed = torch.cat(flats).index_add_(0, pos, d.mul_((1 - h.alpha) * self._scale()))
        if h.alpha:
            tau = torch.cat([it.st["tau"] for it in items])
            if self.resample_tau:
                ti = ms.mask_positions_many(packed_segs, self.p, self.seed, "tau", h.step, dev)[0]
                packed.index_add_(0, ti, tau[ti].mul_(h.alpha * self._scale()))
            else:
                packed.add_(tau, alpha=h.alpha)
        torch._foreach_copy_(flats, list(packed.split(sizes)))

    def _scale(self) -> float:
        return (1.0 / self.p) if self.rescale else 1.0

    def _merge_tau(self, it, h, tau_idx=None):
        """+ alpha * tau' (resample_tau: tau at the positions ``tau_idx`` of this merge's fresh mask)."""
        if not h.alpha:
            return
        if self.resample_tau:
            if tau_idx is None:
                tau_idx = self._mask_positions(it.segs, "tau", h.step, it.flat.device)
            it.flat.index_add_(0, tau_idx, it.st["tau"][tau_idx].mul_(h.alpha * self._scale()))
        else:
            self._add_tau(it, h.alpha)

    def _merge_dense(self, it, delta, h):
        if self.p >= 1.0:
            if h.alpha:
                delta.mul_(1 - h.alpha).add_(it.st["tau"], alpha=h.alpha)
            it.flat.add_(delta)
            return
        idx = self._mask_positions(it.segs, "delta", h.step, it.flat.device)
        it.flat.index_add_(0, idx, delta[idx].mul_((1 - h.alpha) * self._scale()))
        self._merge_tau(it, h)


class OnTIESAdamW(OnlineMergingAdamW):
    """OnTIES-AdamW: per-tensor top-p magnitude pruning of the update, sign election with tau, merge.

    The top-k is exact per model tensor also under ZeRO sharding (candidates are gathered across ranks);
    exactly k entries are kept, ties at the k-th magnitude going to the lowest flat index. (At step 1 Adam's
    update is ~lr * sign(g) everywhere, so many magnitudes tie there.)

    Example::

        opt = OnTIESAdamW(model.parameters(), lr=1e-6, p=0.01, alpha=1e-7, reference=ref)
    """

    method = "ties"

    def __init__(self, *args, **kw):
        if kw.pop("rescale", False) or kw.pop("resample_tau", False):
            raise ValueError("OnTIES has no rescale / resample_tau options (they are OnDARE's)")
        super().__init__(*args, rescale=False, **kw)

    def _merge_step(self, items, h):
        if self.p >= 1.0:
            for it in items:
                delta = self._dense_delta(it, h)
                if h.wd:
                    it.flat.mul_(1 - h.lr * h.wd)
                self._merge_dense(it, delta, h)
            return
        small = [it for it in items if self._is_small(it)]
        if small:
            self._merge_small(small, h)
        big = [it for it in items if not self._is_small(it)]
        pieces = {id(it): it.segs + self._gaps(it) for it in big}
        dist = self._dist()
        buf = big[0].flat.new_empty(max(s.length for x in pieces.values() for s in x)) if big else None
        for it in big:  # one tensor at a time: a scratch of the largest, and its values still in cache
            if h.wd:
                it.flat.mul_(1 - h.lr * h.wd)
            m, v, g = it.st["exp_avg"], it.st["exp_avg_sq"], it.grad
            cands = []
            for s in pieces[id(it)]:  # the gaps (flat-partition padding) still update the moments
                sc = buf[: s.length]
                if s.length:
                    sc.zero_()  # the kernel adds Adam's update to it: sc = Delta
                    whole = s.length == it.flat.numel()
                    gmv = ([x] if whole else [x.narrow(0, s.offset, s.length)] for x in (g, m, v))
                    _fused_adamw([sc], *gmv, h, 0.0, h.eps)
                if s.name is not None:
                    pos, val = ms.candidates(sc.abs_(), min(ms.k_of(s.numel, self.p), s.length))
                    cands.append((pos.add_(s.offset) if s.offset else pos, val))
            idx, a = ms.topk_select(cands, it.segs, self.p, *dist)
            d = a.copysign_(m.index_select(0, idx)).neg_()  # sign(Delta) = -sign(m): lr / bc1, denom > 0
            u = self._election(d, it.st["tau"].index_select(0, idx), h.alpha)
            if h.alpha:
                self._add_tau(it, h.alpha)
            it.flat.scatter_add_(0, idx, u)

    def _merge_small(self, items, h):
        """Tensors of at most 2**16 elements, packed end to end: a few ops for all of them, the top-k of each
        by one stable sort of the padded rows (see :func:`merge_select.topk_small`)."""
        flats, sizes = [it.flat for it in items], [it.flat.numel() for it in items]
        m, tau = [it.st["exp_avg"] for it in items], [it.st["tau"] for it in items]
        if h.wd:
            torch._foreach_mul_(flats, 1 - h.lr * h.wd)
        buf = flats[0].new_zeros(sum(sizes))
        sc = list(buf.split(sizes))
        _fused_adamw(sc, [it.grad for it in items], m, [it.st["exp_avg_sq"] for it in items], h, 0.0, h.eps)
        buf.abs_()
        row, col, a = ms.topk_small(sc, [ms.k_of(n, self.p) for n in sizes])
        starts = torch.tensor([0] + sizes[:-1], device=buf.device).cumsum(0)
        pos = starts.index_select(0, row).add_(col)
        d = a.copysign_(torch.cat(m).index_select(0, pos)).neg_()
        tau_all, packed = torch.cat(tau), torch.cat(flats)
        u = self._election(d, tau_all.index_select(0, pos), h.alpha)
        if h.alpha:
            packed.add_(tau_all, alpha=h.alpha)
        packed.index_add_(0, pos, u)
        torch._foreach_copy_(flats, list(packed.split(sizes)))

    @staticmethod
    def _gaps(it: _Item) -> List[Segment]:
        """The parts of a flat tensor no segment covers, as Segments named None."""
        if len(it.segs) == 1 and it.segs[0].offset == 0 and it.segs[0].length == it.flat.numel():
            return []
        out, at = [], 0
        for s in sorted(it.segs, key=lambda s: s.offset):
            if s.offset > at:
                out.append(Segment(None, at, s.offset - at, 0, 0))
            at = max(at, s.offset + s.length)
        if at < it.flat.numel():
            out.append(Segment(None, at, it.flat.numel() - at, 0, 0))
        return out

    def _merge_dense(self, it, delta, h):
        if self.p >= 1.0:
            idx = torch.arange(it.flat.numel(), device=it.flat.device)
        else:
            cands = ms.dense_candidates(delta.abs(), it.segs, self.p)
            idx = ms.topk_select(cands, it.segs, self.p, *self._dist())[0]
        u = self._election(delta[idx], it.st["tau"][idx], alpha=h.alpha)
        if h.alpha:
            self._add_tau(it, h.alpha)
        it.flat.index_add_(0, idx, u)

    @staticmethod
    def _election(d: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
        """The merged update at the kept positions from Delta' (d) and tau' (t) there, given that alpha * tau'
        is added everywhere: entries whose sign differs from s = sign(tau' + Delta') (+1 at 0) are dropped.

        Without boolean masks (slow on CPU): with s = +-1, ``s * relu(x * s)`` is x where x agrees with s and
        0 elsewhere, exactly (multiplying by +-1 does not round). A sum of -0.0 only comes from two zeros."""
        s = torch.ones((), dtype=d.dtype, device=d.device).copysign(t + d)
        kept_d = d.mul_(s).clamp_min_(0).mul_(s)
        if not alpha:
            return kept_d
        dropped_t = t - t.mul(s).clamp_min_(0).mul_(s)
        return kept_d.mul_(1 - alpha).sub_(dropped_t, alpha=alpha)
