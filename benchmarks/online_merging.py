"""Optimizer step time and memory of OnDARE / OnTIES vs the fastest torch AdamW, all in the same run.

    python benchmarks/online_merging.py                       # CPU, ~24M-parameter Qwen2, p=0.01
    python benchmarks/online_merging.py --device cuda --hidden 1024 --layers 8

Only ``optimizer.step()`` is timed (no forward/backward): torch AdamW in its three forms (``fused=True``,
``foreach=True``, for-loop), OnDARE and OnTIES step round-robin (the order rotates every round, so cache state
and machine noise hit all alike), each on its own copy of the model with the same gradients. Gradients cycle
through ``--grad-sets`` random sets (default 2: they change every step as in training; 1 = the same gradient
every step, which keeps OnTIES in its many-ties regime, like step 1 of training). Reported: the median of
``--reps`` steps after ``--warmup`` (the first step also builds tau), each optimizer's ratio to the fastest
AdamW form, and memory: optimizer state bytes (exact) plus what the merging optimizers cache outside it, and
on CUDA the peak allocated during a step. Goals (issue 18): OnDARE <= 1.5x, OnTIES <= 3x the fastest AdamW,
memory <= one extra parameter-sized tensor (tau).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

ADAMW = {"adamw-fused": {"fused": True}, "adamw-foreach": {"foreach": True}, "adamw-loop": {"foreach": False}}


def state_bytes(opt) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--p", type=float, default=0.01)
    ap.add_argument("--alpha", type=float, default=1e-7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--grad-sets", type=int, default=2, help="gradient sets cycled through (1: constant)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    from rlkit import testing
    from rlkit.optim import OnDAREAdamW, OnTIESAdamW, TensorReference

    tok = testing.tiny_tokenizer()
    model = testing.tiny_causal_lm(tok, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                                   num_hidden_layers=a.layers, num_attention_heads=8,
                                   num_key_value_heads=4).to(a.device)
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator(device="cpu").manual_seed(0)
    base = {n: (p.detach().cpu() - 0.01 * torch.randn(p.shape, generator=g)).to(a.device)
            for n, p in model.named_parameters()}
    grads = [[torch.randn(p.shape, generator=g).mul_(1e-3).to(a.device) for p in model.parameters()]
             for _ in range(a.grad_sets)]

    def make(kind):
        m = copy.deepcopy(model)
        for p, gr in zip(m.parameters(), grads[0]):
            p.grad = gr.clone()
        if kind in ADAMW:
            return m, torch.optim.AdamW(m.parameters(), lr=1e-5, weight_decay=0.01, **ADAMW[kind])
        cls = OnDAREAdamW if kind == "ondare" else OnTIESAdamW
        return m, cls(m.parameters(), lr=1e-5, weight_decay=0.01, p=a.p, alpha=a.alpha,
                      reference=TensorReference(m, base))

    kinds = [*ADAMW, "ondare", "onties"]
    runs = {k: make(k) for k in kinds}
    times = {k: [] for k in kinds}
    peak = {}
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for i in range(a.warmup + a.reps):
        for k in kinds[i % len(kinds):] + kinds[: i % len(kinds)]:
            m, opt = runs[k]
            for p, gr in zip(m.parameters(), grads[i % a.grad_sets]):
                p.grad.copy_(gr)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            sync()
            t = time.perf_counter()
            opt.step()
            sync()
            if i >= a.warmup:
                times[k].append(time.perf_counter() - t)
            if cuda:
                peak[k] = max(peak.get(k, 0), torch.cuda.max_memory_allocated() - before)

    print(f"model: Qwen2 hidden={a.hidden} layers={a.layers}, {n_params / 1e6:.1f}M params, device={a.device}, "
          f"threads={torch.get_num_threads()}, p={a.p}, alpha={a.alpha}, grad sets={a.grad_sets}, "
          f"reps={a.reps}")
    med = {k: statistics.median(v) for k, v in times.items()}
    fastest = min(ADAMW, key=med.get)
    t0, s0 = med[fastest], state_bytes(runs[fastest][1])
    for k in kinds:
        opt = runs[k][1]
        sb, cb = state_bytes(opt), getattr(opt, "cache_bytes", lambda: 0)()
        line = (f"{k:13s} step {med[k] * 1e3:8.2f} ms  ratio {med[k] / t0:5.2f}x  "
                f"(min {min(times[k]) * 1e3:.2f} ms) | state {sb / 2**20:7.1f} MiB "
                f"+{(sb - s0) / (4 * n_params):.2f} params, cache {cb / 2**20:5.1f} MiB "
                f"+{cb / (4 * n_params):.3f} params")
        if k in peak:
            line += f" | step peak {peak[k] / 2**20:.1f} MiB ratio {peak[k] / max(peak[fastest], 1):.2f}x"
        print(line)
    print(f"fastest AdamW: {fastest} ({t0 * 1e3:.2f} ms); goals: ondare <= 1.5x ({med['ondare'] / t0:.2f}x), "
          f"onties <= 3x ({med['onties'] / t0:.2f}x)")


if __name__ == "__main__":
    main()
