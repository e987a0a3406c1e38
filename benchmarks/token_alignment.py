"""Step/token alignment cost: incremental detokenization vs decoding every prefix, at a given completion length.

    python benchmarks/token_alignment.py                      # 4,096 tokens, embedded SmolLM2 tokenizer
    python benchmarks/token_alignment.py --tokens 512 --tokenizer tiny

``reward.steps.token_char_ends`` maps each completion token to the characters it completes, so a step score
lands on the token that ends the step. It used to decode every prefix in one batched call (quadratic in the
length); it now decodes each token in a short window (linear) and falls back to the prefix rule only for text
with invalid bytes. Both are timed round-robin on the same ids (a worked-solution text repeated to the length),
medians of ``--repeats``, and their outputs are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import time

from reward.steps import _incremental_char_ends, _prefix_char_ends

TEXT = ("Step 1: Natalia sold 48 clips in April and half as many, 48 / 2 = 24, in May.\n\n"
        "Step 2: Altogether she sold 48 + 24 = 72 clips → ≥ 70 × 1 🙂.\n\n")


def load(name: str):
    if name == "tiny":
        from rlkit.testing import tiny_tokenizer

        return tiny_tokenizer()
    from rlkit.models import load_tokenizer

    return load_tokenizer(name)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--tokenizer", default="embedded:smollm2-135m-instruct", help="'tiny' or a model name/folder")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    tok = load(a.tokenizer)
    ids: list[int] = []
    while len(ids) < a.tokens:
        ids += tok(TEXT, add_special_tokens=False)["input_ids"]
    ids = ids[: a.tokens]
    text = tok.decode(ids, skip_special_tokens=True)
    times = {"prefix": [], "incremental": []}
    out = {}
    for _ in range(a.repeats):
        for name in times:
            t0 = time.perf_counter()
            out[name] = _prefix_char_ends(tok, ids, text) if name == "prefix" else _incremental_char_ends(tok, ids)[0]
            times[name].append(time.perf_counter() - t0)
    assert out["prefix"] == out["incremental"], "the two alignments disagree"
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"tokens {len(ids)}  tokenizer {a.tokenizer}  repeats {a.repeats}  (outputs equal)")
    for name in times:
        print(f"{name:<12} {med[name] * 1e3:10.1f} ms")
    print(f"speedup incremental vs prefix = {med['prefix'] / med['incremental']:.1f}x")


if __name__ == "__main__":
    main()
