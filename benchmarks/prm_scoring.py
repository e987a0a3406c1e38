"""PRM scoring throughput: the batched path vs a one-response-at-a-time loop, same inputs, same run.

Model: a random Qwen2 token classifier (hidden 256, 4 layers, 2-label head: the qwen-prm layout) with the
tiny test tokenizer; 32 responses of ~200 tokens with the PRM prompt (3-7 steps each, mixed lengths). Both paths score through
``QwenPRM`` (same formatting, tokenization and read-out); the loop calls ``score`` once per response, the
batched path once for all 32 (length-sorted padding under ``--token-budget``). Scores are checked equal.

Usage:
    python benchmarks/prm_scoring.py [--responses 32] [--hidden 256] [--layers 4] [--repeats 5] [--threads N] [--token-budget N]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--responses", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--token-budget", type=int, default=None, help="default: the reward's (2048 on CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()

    import torch

    from reward.models.qwen_prm import QwenPRM
    from rlkit import testing

    if args.threads:
        torch.set_num_threads(args.threads)
    tok = testing.tiny_tokenizer()
    model = testing.tiny_token_classifier(tok, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                          num_hidden_layers=args.layers, num_attention_heads=8,
                                          num_key_value_heads=4, max_position_embeddings=2048)
    rm = QwenPRM(model, tokenizer=tok, device=args.device, token_budget=args.token_budget)
    prompts, responses = make_inputs(args.responses)
    lengths = [len(rm.encode(p, [s.text for s in rm.splitter.split(r)])) for p, r in zip(prompts, responses)]
    print(f"model: Qwen2 token classifier, hidden {args.hidden}, {args.layers} layers, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"inputs: {len(responses)} responses, {min(lengths)}-{max(lengths)} tokens "
          f"(mean {sum(lengths) / len(lengths):.0f}) with the PRM prompt")

    def batched():
        return rm.score(prompts, responses)

    def loop():
        return [rm.score([p], [r])[0] for p, r in zip(prompts, responses)]

    a, b = batched(), loop()   # warm-up, and the two paths must agree
    worst = max(abs(x - y) for sa, sb in zip(a, b) for x, y in zip(sa.scores, sb.scores))
    assert worst < 1e-4, f"batched and one-at-a-time scores differ by {worst}"

    # alternate the two paths and keep each one's best time, so load from other processes hits both alike
    t_loop = t_batch = float("inf")
    for _ in range(args.repeats):
        for which, fn in (("loop", loop), ("batch", batched)):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if which == "loop":
                t_loop = min(t_loop, dt)
            else:
                t_batch = min(t_batch, dt)

    r_loop, r_batch = len(responses) / t_loop, len(responses) / t_batch
    print(f"one-at-a-time loop: {r_loop:8.1f} responses/s ({t_loop * 1000:.0f} ms)")
    print(f"batched:            {r_batch:8.1f} responses/s ({t_batch * 1000:.0f} ms)")
    print(f"speed-up: {r_batch / r_loop:.2f}x (max |score difference| {worst:.1e})")


if __name__ == "__main__":
    main()
