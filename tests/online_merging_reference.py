"""Test reference: the online merging step logic as it was before the fused rewrite (rlkit commit 1674efa).

Copied from ``rlkit/optim/online_merging.py`` at that commit with only the multi-process branches (all_gather of
top-k candidates and tie counts) removed: single-process semantics, per-tensor Python math. The tests compare
the fused optimizers against these classes update for update; do not "fix" or speed up this file.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, Iterable, List, Optional

import torch

from rlkit.optim.online_merging import Segment

_CHUNK = 1 << 20


def _key(*parts) -> int:
    b = "\x1f".join(str(x) for x in parts).encode()
    return (zlib.crc32(b) << 31) ^ zlib.crc32(b[::-1]) ^ (len(b) << 7)


def _kept_positions(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    """Indices in [0, n) kept independently with probability p (geometric gaps when p is small)."""
    if p > 0.1:
        return torch.nonzero(torch.rand(n, generator=gen, device=device) < p).view(-1)
    log1mp = math.log1p(-p)
    out, last = [], -1
    m = int(p * n + 6 * math.sqrt(p * n) + 16)
    while last < n - 1:
        u = torch.rand(m, generator=gen, device=device, dtype=torch.float64).clamp_min_(1e-300)
        pos = torch.log(u).mul_(1.0 / log1mp).to(torch.int64).add_(1).cumsum_(0).add_(last)  # floor: >= 0
        out.append(pos)
        last = int(pos[-1])
    pos = torch.cat(out)
    return pos[pos < n]



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
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.p, self.alpha, self.reference = float(p), float(alpha), reference
        self.merge_every, self.seed, self.alpha_follows_lr = int(merge_every), int(seed), alpha_follows_lr
        self.rescale, self.resample_tau = bool(rescale), bool(resample_tau)
        self._segs = {}

    # ---- layout -----------------------------------------------------------------------------------------
    def _segments(self, p) -> List[Segment]:
        if id(p) not in self._segs:
            if self.reference is None:
                raise RuntimeError(f"{type(self).__name__}: no reference set (pass reference=..., e.g. "
                                   "rlkit.optim.build_optimizer builds one from base_model)")
            self._segs[id(p)] = list(self.reference.segments(p))
        return self._segs[id(p)]

    # ---- top-k ------------------------------------------------------------------------------------------
    @staticmethod
    def _k(numel: int, p: float) -> int:
        return min(numel, max(1, math.ceil(p * numel)))

    @staticmethod
    def _candidates(a: torch.Tensor, k: int) -> torch.Tensor:
        """A superset of the k largest values of a (1-D, >= 0)."""
        n = a.numel()
        if k >= n:
            return a
        if n > (1 << 16) and k * 8 < n:  # cheap lower bound from a strided sample, verified below
            s = a[:: n >> 14]
            ks = min(s.numel(), int(k / n * s.numel() * 1.5) + 16)
            t = torch.topk(s, ks, sorted=False).values.min()
            cand = a[a >= t]
            if cand.numel() >= k:
                return cand
        return torch.topk(a, k, sorted=False).values

    def _thresholds(self, a: torch.Tensor, segs: List[Segment]) -> List[float]:
        """Per segment: the k-th largest value of a over the *whole* model tensor (exact, also when sharded)."""
        ks = [self._k(s.numel, self.p) for s in segs]
        cands = [self._candidates(a.narrow(0, s.offset, s.length), min(k, s.length)) if s.length else
                 a.new_zeros(0) for s, k in zip(segs, ks)]
        return [torch.topk(c, k, sorted=False).values.min().item() for c, k in zip(cands, ks)]

    def _topk_positions(self, a: torch.Tensor, segs: List[Segment]) -> torch.Tensor:
        """Flat positions of the top-k of a per model tensor: exactly k, ties at the threshold broken by the
        lowest index in the flattened tensor (so the choice does not depend on sharding)."""
        thr = self._thresholds(a, segs)
        gt, eq = [], []
        for s, t in zip(segs, thr):
            v = a.narrow(0, s.offset, s.length)
            ge = torch.nonzero(v >= t).view(-1)
            tie = v[ge] == t
            gt.append(ge[~tie].add_(s.offset))
            eq.append(ge[tie].add_(s.offset))
        n_gt = [x.numel() for x in gt]
        before = n_gt
        out = []
        for s, g, e, b in zip(segs, gt, eq, before):
            take = max(0, min(e.numel(), self._k(s.numel, self.p) - b))
            out += [g, e[:take]]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=a.device)

    # ---- random masks -----------------------------------------------------------------------------------
    def _mask_positions(self, segs: List[Segment], tag: str, step: int, device) -> torch.Tensor:
        """Flat positions kept by a Bernoulli(p) mask keyed by (seed, tag, step, name, element index)."""
        gen = torch.Generator(device=device)
        out = []
        for s in segs:
            if not s.length:
                continue
            for c in range(s.start // _CHUNK, (s.start + s.length - 1) // _CHUNK + 1):
                gen.manual_seed(_key(self.seed, tag, step, s.name, c) % (1 << 62))
                n = min(_CHUNK, s.numel - c * _CHUNK)
                g = _kept_positions(n, self.p, gen, device).add_(c * _CHUNK)
                g = g[(g >= s.start) & (g < s.start + s.length)]
                out.append(g.sub_(s.start - s.offset))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=device)

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
        idx = (self._topk_positions(tau.abs(), segs) if self.method == "ties"
               else self._mask_positions(segs, "tau", 0, flat.device))
        out = torch.zeros_like(tau)
        scale = 1.0 / self.p if (self.method == "dare" and self.rescale) else 1.0
        out[idx] = tau[idx] * scale
        return out.to(flat.dtype)

    # ---- step -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            alpha = self.alpha
            if self.alpha_follows_lr and group.get("initial_lr"):
                alpha = alpha * lr / group["initial_lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("online merging optimizers do not support sparse gradients")
                flat, grad = p.data.view(-1), p.grad.reshape(-1)
                st = self.state[p]
                segs = self._segments(p)
                if "step" not in st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(flat)
                    st["exp_avg_sq"] = torch.zeros_like(flat)
                    if self.merge_every > 1:
                        st["accum"] = torch.zeros_like(flat)
                if "tau" not in st:  # after a resume it comes from the state dict
                    st["tau"] = self._init_tau(p, flat, segs)
                st["step"] += 1
                step = st["step"]
                m, v = st["exp_avg"], st["exp_avg_sq"]
                if wd:
                    flat.mul_(1 - lr * wd)
                m.lerp_(grad, 1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step

                def delta_at(idx=None, m=m, v=v, bc1=bc1, bc2=bc2, lr=lr, eps=eps):
                    """Adam's update, dense or only at flat positions idx (same float ops either way)."""
                    mm, vv = (m, v) if idx is None else (m[idx], v[idx])
                    denom = (vv.sqrt() / math.sqrt(bc2)).add_(eps)
                    return torch.mul(mm, -lr / bc1).div_(denom)

                if self.merge_every > 1:
                    delta, acc = delta_at(), st["accum"]
                    if step % self.merge_every:
                        acc.add_(delta)
                        flat.add_(delta)
                        continue
                    flat.sub_(acc)           # roll back the plain steps since the last merge
                    delta.add_(acc)
                    acc.zero_()
                    delta_at = (lambda idx=None, d=delta: d if idx is None else d[idx])  # noqa: E731
                self._apply(flat, delta_at, st["tau"], segs, step, alpha)
        return loss

    def _apply(self, flat, delta_at, tau, segs, step, alpha):
        """Apply the merged update; ``delta_at(idx=None)`` gives Adam's update (dense, or at positions)."""
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

    def _apply(self, flat, delta_at, tau, segs, step, alpha):
        if self.p >= 1.0:
            delta = delta_at()
            if alpha:
                delta.mul_(1 - alpha).add_(tau, alpha=alpha)
            flat.add_(delta)
            return
        scale = (1.0 / self.p) if self.rescale else 1.0
        idx = self._mask_positions(segs, "delta", step, flat.device)
        flat.index_add_(0, idx, delta_at(idx).mul_((1 - alpha) * scale))  # Adam only where kept
        if alpha:
            if self.resample_tau:
                ti = self._mask_positions(segs, "tau", step, flat.device)
                flat.index_add_(0, ti, tau[ti].mul_(alpha * scale))
            else:
                flat.add_(tau, alpha=alpha)


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

    def _apply(self, flat, delta_at, tau, segs, step, alpha):
        delta = delta_at()
        if self.p >= 1.0:
            idx = torch.arange(flat.numel(), device=flat.device)
        else:
            idx = self._topk_positions(delta.abs(), segs)
        d, t = delta[idx], tau[idx]
        up = (t + d) >= 0
        keep_d = torch.where(up, d > 0, d < 0)
        if alpha:
            keep_t = torch.where(up, t > 0, t < 0)
            # tau' entries outside idx agree with themselves; inside idx they may lose the election
            flat.add_(tau, alpha=alpha)
            flat.index_add_(0, idx, d.mul_(keep_d).mul_(1 - alpha).sub_(t.mul_(~keep_t), alpha=alpha))
        else:
            flat.index_add_(0, idx, d.mul_(keep_d))
