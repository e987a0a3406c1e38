"""Step-time overhead of PRMGRPOTrainer over plain TRL GRPOTrainer, same inputs, same run.

Both trainers get the same model, prompts, seed and the same rule-based `arithmetic` scorer (no PRM forward,
so the comparison isolates rlkit's own work: step segmentation, token-span mapping, gathering, credit). The
plain trainer receives the scorer's min-aggregated score as an ordinary sequence reward.

    python benchmarks/grpo_overhead.py [--steps 6] [--completion 64] [--hidden 256]

Prints mean step time of each (first step dropped as warm-up) and the ratio (goal: <= 1.15).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternate the two trainers this many times")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reward.base import aggregate
    from reward.registry import build_reward
    from rlkit import testing
    from rlkit.data import load_prompts
    from rlkit.trainers.grpo_trainer import PRMGRPOTrainer

    tok = testing.tiny_tokenizer()
    scorer = build_reward("arithmetic", verify_final=True)
    ds = load_prompts("builtin:arithmetic", n=64)

    def sequence_reward(prompts, completions, answer, **_):
        texts = [c[-1]["content"] for c in completions]
        qs = [p[-1]["content"] for p in prompts]
        return [aggregate(s.scores, "min") for s in scorer.score(qs, texts, answer)]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, *a, **k):
            self._t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self._t)

    def run(kind: str) -> list[float]:
        cfg = GRPOConfig(output_dir=tempfile.mkdtemp(), max_steps=args.steps, num_generations=args.generations,
                         per_device_train_batch_size=args.generations, max_completion_length=args.completion,
                         generation_kwargs={"min_new_tokens": args.completion}, learning_rate=1e-5, report_to=[], use_cpu=True,
                         bf16=False, save_strategy="no", gradient_checkpointing=False, logging_steps=1, seed=0,
                         disable_tqdm=True)
        model = testing.tiny_causal_lm(tok, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                                       num_attention_heads=4, num_hidden_layers=4)
        timer = Timer()
        if kind == "trl":
            trainer = GRPOTrainer(model=model, processing_class=tok, args=cfg, train_dataset=ds,
                                  reward_funcs=[sequence_reward], callbacks=[timer])
        else:
            trainer = PRMGRPOTrainer(model=model, processing_class=tok, args=cfg, train_dataset=ds,
                                     step_reward=scorer, credit="process_grpo", callbacks=[timer])
        trainer.train()
        return timer.times[1:]

    run("trl")  # untimed warm-up: first-use costs (thread pools, lazy imports) would land on one side only
    times = {"trl": [], "rlkit": []}
    for _ in range(args.repeats):
        for kind in ("trl", "rlkit"):
            times[kind] += run(kind)
    print("step times:", {k: [round(x, 3) for x in v] for k, v in times.items()})
    trl_t, ours_t = statistics.median(times["trl"]), statistics.median(times["rlkit"])
    print(f"TRL GRPOTrainer + sequence reward : median step {trl_t:.3f}s over {len(times['trl'])} steps")
    print(f"rlkit PRMGRPOTrainer (process)    : median step {ours_t:.3f}s over {len(times['rlkit'])} steps")
    print(f"ratio rlkit / TRL = {ours_t / trl_t:.3f}  (goal <= 1.15)")


if __name__ == "__main__":
    main()
