"""Optimizer step time and memory of OnDARE / OnTIES vs the fastest torch AdamW, all in the same run.

    python benchmarks/online_merging.py                       # CPU, ~25M-parameter Qwen2, p=0.01
    python benchmarks/online_merging.py --device cuda --hidden 1024 --layers 8
    python benchmarks/online_merging.py --device cuda --hidden 1536 --layers 28 --heads 12 --kv-heads 2 \
        --intermediate 8960 --vocab 151936                   # Qwen2.5-1.5B's shape (benchmarks/device_check.py)

Only ``optimizer.step()`` is timed (no forward/backward): torch AdamW in its three forms (``fused=True``,
``foreach=True``, for-loop; ``--adamw-forms`` picks), OnDARE and OnTIES step round-robin, the order rotating
every round so cache state and machine noise hit all alike, each on its own copy of the model. Gradients
cycle through ``--grad-sets`` random sets (default 2: they change every step as in training; 1 = the same
gradient every step, OnTIES' many-ties regime of training's first step). Reported: the median of ``--reps``
steps after ``--warmup`` (the first step also builds tau), each optimizer's ratio to the *fastest* AdamW form
(the baseline, ``adamw`` in ``run``'s result), and memory: optimizer state bytes (exact), and on CUDA the
peak allocated during a step. Goals (issue 18): OnDARE <= 1.5x, OnTIES <= 3x the fastest AdamW; one extra
parameter-sized tensor (tau).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

ADAMW_FORMS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


def state_bytes(opt) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=None, help="MLP width (default 4 x hidden)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default the tiny tokenizer's)")
    ap.add_argument("--adamw-forms", default="fused,foreach,loop",
                    help="torch AdamW forms timed; the fastest is the baseline (default all three)")
    ap.add_argument("--fused", action="store_true", help="shorthand for --adamw-forms fused")
    ap.add_argument("--grad-sets", type=int, default=2, help="gradient sets cycled through (1: constant)")
    ap.add_argument("--p", type=float, default=0.01)
    ap.add_argument("--alpha", type=float, default=1e-7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    return ap.parse_args(argv)


def run(a: argparse.Namespace) -> dict:
    """Step times (median, s), optimizer state bytes and (CUDA) the peak allocated during a step above what was
    allocated before it, per optimizer; plus the model's parameter count and shape."""
    from rlkit import testing
    from rlkit.optim import OnDAREAdamW, OnTIESAdamW, TensorReference

    tok = testing.tiny_tokenizer()
    extra = {"vocab_size": a.vocab} if a.vocab else {}
    with torch.device(a.device):  # built where it runs: a 1.5B model initialises in seconds on a GPU
        model = testing.tiny_causal_lm(tok, hidden_size=a.hidden, intermediate_size=a.intermediate or 4 * a.hidden,
                                       num_hidden_layers=a.layers, num_attention_heads=a.heads,
                                       num_key_value_heads=a.kv_heads, **extra)
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator(device=a.device).manual_seed(0)
    base = {n: p.detach() - 0.01 * torch.randn(p.shape, generator=g, device=a.device)
            for n, p in model.named_parameters()}
    grads = [[torch.randn(p.shape, generator=g, device=a.device).mul_(1e-3) for p in model.parameters()]
             for _ in range(max(1, a.grad_sets))]
    forms = ["fused"] if a.fused else [f.strip() for f in a.adamw_forms.split(",") if f.strip()]
    if not forms or any(f not in ADAMW_FORMS for f in forms):
        raise SystemExit(f"--adamw-forms: choose from {', '.join(ADAMW_FORMS)}, got {a.adamw_forms!r}")

    def make(kind):
        m = copy.deepcopy(model)
        for p, gr in zip(m.parameters(), grads[0]):
            p.grad = gr.clone()
        if kind.startswith("adamw-"):
            return m, torch.optim.AdamW(m.parameters(), lr=1e-5, weight_decay=0.01, **ADAMW_FORMS[kind[6:]])
        cls = OnDAREAdamW if kind == "ondare" else OnTIESAdamW
        return m, cls(m.parameters(), lr=1e-5, weight_decay=0.01, p=a.p, alpha=a.alpha,
                      reference=TensorReference(m, base))

    kinds = [f"adamw-{f}" for f in forms] + ["ondare", "onties"]
    runs = {k: make(k) for k in kinds}
    times = {k: [] for k in kinds}
    peak = {}
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    for i in range(a.warmup + a.reps):
        for k in kinds[i % len(kinds):] + kinds[: i % len(kinds)]:
            m, opt = runs[k]
            for p, gr in zip(m.parameters(), grads[i % len(grads)]):
                p.grad.copy_(gr)
            if a.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            sync()
            t = time.perf_counter()
            opt.step()
            sync()
            if i >= a.warmup:
                times[k].append(time.perf_counter() - t)
            if a.device.startswith("cuda"):
                peak[k] = max(peak.get(k, 0), torch.cuda.max_memory_allocated() - before)

    out = {"params": n_params, "hidden": a.hidden, "layers": a.layers, "device": a.device, "p": a.p, "alpha": a.alpha,
           "grad_sets": len(grads), "reps": a.reps}
    for k in kinds:
        out[k] = {"step_s": statistics.median(times[k]), "min_step_s": min(times[k]),
                  "state_bytes": state_bytes(runs[k][1]), "peak_step_bytes": peak.get(k)}
    fastest = min((k for k in kinds if k.startswith("adamw-")), key=lambda k: out[k]["step_s"])
    out["adamw"] = {**out[fastest], "form": fastest[6:]}  # the baseline: the fastest AdamW form of this run
    del runs  # frees the optimizers and their model copies
    return out


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    r = run(a)
    kinds = [k for k in r if k.startswith("adamw-")] + ["ondare", "onties"]
    n_params = r["params"]
    print(f"model: Qwen2 hidden={a.hidden} layers={a.layers}, {n_params / 1e6:.1f}M params, device={a.device}, "
          f"threads={torch.get_num_threads()}, p={a.p}, alpha={a.alpha}, grad sets={r['grad_sets']}, reps={a.reps}")
    t0, s0 = r["adamw"]["step_s"], r["adamw"]["state_bytes"]
    peak = {k: r[k]["peak_step_bytes"] for k in kinds if r[k]["peak_step_bytes"] is not None}
    for k in kinds:
        t, sb = r[k]["step_s"], r[k]["state_bytes"]
        line = (f"{k:13s} step {t * 1e3:8.2f} ms  ratio {t / t0:5.2f}x | optimizer state {sb / 2**20:8.1f} MiB "
                f"ratio {sb / s0:4.2f}x (+{(sb - s0) / (4 * n_params):.2f} fp32 param-sized tensors)")
        if k in peak:
            line += f" | step peak {peak[k] / 2**20:.1f} MiB ratio {peak[k] / max(r['adamw']['peak_step_bytes'], 1):.2f}x"
        print(line)
    total = {k: r[k]["state_bytes"] + 2 * 4 * n_params for k in kinds}  # + params + grads
    print("memory ratio (params + grads + optimizer state): "
          + ", ".join(f"{k} {total[k] / (r['adamw']['state_bytes'] + 8 * n_params):.2f}x" for k in ("ondare", "onties")))
    print(f"fastest AdamW: adamw-{r['adamw']['form']} ({t0 * 1e3:.2f} ms); goals: ondare <= 1.5x "
          f"({r['ondare']['step_s'] / t0:.2f}x), onties <= 3x ({r['onties']['step_s'] / t0:.2f}x)")


if __name__ == "__main__":
    main()
