"""PRM scoring throughput: the batched path vs a one-response-at-a-time loop, same inputs, same run.

Model: a random Qwen2 token classifier (the qwen-prm layout: 2-label head) with the tiny test tokenizer;
32 responses of ~130-200 tokens with the PRM prompt (3-7 steps each, mixed lengths). Both paths score through
``QwenPRM`` (same formatting, tokenization and read-out); the loop calls ``score`` once per response, the
batched path once for all 32 (length-sorted padding under ``--token-budget``). Scores are checked equal.

Besides the two rates and their ratio it prints the share of the loop's time spent inside the model's forward
(measured with forward hooks). Batching can only remove what lies outside that share plus the forward's own
per-call overhead, so ``1 / forward share`` is roughly the ceiling of the speed-up when the forward is
compute-bound (as it is on a CPU at any realistic PRM size). ``--sweep`` runs several model sizes, from an
overhead-dominated toy to the SmolLM2-135M shape.

Usage:
    python benchmarks/prm_scoring.py [--responses 32] [--hidden 256] [--layers 4] [--heads 8] [--kv-heads 4]
                                     [--intermediate N] [--repeats 5] [--threads N] [--token-budget N]
                                     [--device cpu|cuda] [--sweep]
    python benchmarks/prm_scoring.py --device cuda --hidden 1536 --layers 28 --heads 12 --kv-heads 2 \
        --intermediate 8960                                  # the Qwen2.5-1.5B body (benchmarks/device_check.py)
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_inputs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    prompts, responses = [], []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        prompts.append(f"Natalia sold {a} clips in April and {b} times as many in May. How many clips? ({i})")
        steps = []
        for k in range(rng.randint(2, 6)):
            x, y = rng.randint(10, 999), rng.randint(2, 99)
            steps.append(f"Step {k + 1}: {x} * {y} = {x * y} clips.")
        steps.append(f"The answer is \\boxed{{{a * b + a}}}.")
        responses.append("\n\n".join(steps))
    return prompts, responses


#: --sweep sizes: (hidden, layers, heads, kv heads, intermediate); the last is SmolLM2-135M's shape
SWEEP = [(64, 2, 4, 2, 256), (256, 4, 8, 4, 1024), (576, 8, 9, 3, 1536), (576, 30, 9, 3, 1536)]


def measure(size: tuple[int, int, int, int, int], args, prompts, responses) -> dict:
    """Best-of-``repeats`` times of the loop and the batched path for one model size."""
    import torch

    from reward.models.qwen_prm import QwenPRM
    from rlkit import testing

    hidden, layers, heads, kv, inter = size
    tok = testing.tiny_tokenizer()
    with torch.device(args.device):  # built where it runs (a 1.5B body initialises in seconds on a GPU)
        model = testing.tiny_token_classifier(tok, hidden_size=hidden, intermediate_size=inter,
                                              num_hidden_layers=layers, num_attention_heads=heads,
                                              num_key_value_heads=kv, max_position_embeddings=2048)
    rm = QwenPRM(model, tokenizer=tok, device=args.device, token_budget=args.token_budget)
    forward_s = [0.0]
    started: list[float] = []
    sync = torch.cuda.synchronize if rm.device.type == "cuda" else (lambda: None)

    def pre(*_):
        sync()
        started.append(time.perf_counter())

    def post(*_):
        sync()
        forward_s[0] += time.perf_counter() - started.pop()

    model.register_forward_pre_hook(pre)
    model.register_forward_hook(post)

    def batched():
        out = rm.score(prompts, responses)
        sync()
        return out

    def loop():
        out = [rm.score([p], [r])[0] for p, r in zip(prompts, responses)]
        sync()
        return out

    a, b = batched(), loop()   # warm-up, and the two paths must agree
    worst = max(abs(x - y) for sa, sb in zip(a, b) for x, y in zip(sa.scores, sb.scores))
    # bf16 (the reward's "auto" dtype on a GPU) rounds padded and unpadded inputs differently
    tolerance = 1e-4 if next(rm.model.parameters()).dtype == torch.float32 else 5e-2
    assert worst < tolerance, f"batched and one-at-a-time scores differ by {worst}"

    # alternate the two paths and keep each one's best time, so load from other processes hits both alike
    best = {"loop": float("inf"), "batch": float("inf")}
    fwd = {"loop": 0.0, "batch": 0.0}
    for _ in range(args.repeats):
        for which, fn in (("loop", loop), ("batch", batched)):
            forward_s[0] = 0.0
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if dt < best[which]:
                best[which], fwd[which] = dt, forward_s[0]
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n) / 1e6
    return {"size": f"{hidden}x{layers}", "params_m": params, "loop_s": best["loop"], "batch_s": best["batch"],
            "speedup": best["loop"] / best["batch"], "loop_forward_share": fwd["loop"] / best["loop"],
            "batch_forward_share": fwd["batch"] / best["batch"], "max_diff": worst,
            "dtype": str(next(rm.model.parameters()).dtype).replace("torch.", "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--responses", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=None, help="MLP width (default 4 x hidden)")
    ap.add_argument("--token-budget", type=int, default=None, help="default: the reward's (2048 on CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--sweep", action="store_true",
                    help="run " + ", ".join(f"{h}x{n}" for h, n, *_ in SWEEP) + " (hidden x layers) instead")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts, responses = make_inputs(args.responses)
    sizes = SWEEP if args.sweep else [(args.hidden, args.layers, args.heads, args.kv_heads,
                                       args.intermediate or 4 * args.hidden)]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {len(responses)} responses "
          "(random Qwen2 token classifiers, tiny tokenizer, best of "
          f"{args.repeats} alternating runs)")
    print(f"{'hidden x layers':>15} {'params(M)':>9} {'loop resp/s':>11} {'batch resp/s':>12} {'speed-up':>8} "
          f"{'loop fwd share':>14} {'batch fwd share':>15}")
    for size in sizes:
        r = measure(size, args, prompts, responses)
        n = len(responses)
        print(f"{r['size']:>15} {r['params_m']:>9.1f} {n / r['loop_s']:>11.1f} {n / r['batch_s']:>12.1f} "
              f"{r['speedup']:>7.2f}x {r['loop_forward_share']:>14.0%} {r['batch_forward_share']:>15.0%}",
              flush=True)
    print("speed-up = loop time / batched time; fwd share = time inside the model's forward "
          "(the rest is formatting, tokenization, padding, read-out)")


if __name__ == "__main__":
    main()
