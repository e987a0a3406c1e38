"""End to end: sample N responses per problem -> verifier labels -> listwise outcome RM -> rm@N vs its init.

    python examples/train_listwise_rm.py                 # embedded SmolLM2-135M-Instruct samples (CPU, slow)
    python examples/train_listwise_rm.py --tiny          # synthetic groups + random tiny model: ~1-minute smoke run
    python examples/train_listwise_rm.py --problems 64 --samples 8 --max-new-tokens 256

Steps (each prints its counts; every output is a file under --out):
1. sampling: `reward.selection.rejection_sample` draws --samples responses per builtin arithmetic problem with
   the policy (vLLM when importable and --backend vllm, else HF generate; resumable) and writes them grouped to
   groups.jsonl, plus the best verifier-correct one per problem to sft.jsonl (rejection-sampling SFT data).
   --tiny skips this and writes synthetic groups instead (a random tiny policy never answers right).
2. training: `rlkit.trainers.orm.train_orm` through an `algorithm: orm` recipe; problems whose responses are
   all right or all wrong are dropped (counted).
3. evaluation: rm@N / maj@N / pass@N / pairwise accuracy on held-out problems, for the untrained
   initialisation and the trained RM, both scored through the `orm` reward; then the trained RM inside
   `qwen-math-shaping` on one problem.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_groups(n_problems: int, seed: int, n: int = 6) -> list[dict]:
    """'What is a + b?' with n responses; a right sum is written 'good', a wrong one 'bad' (a learnable cue)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_problems):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        flags = [rng.random() < 0.5 for _ in range(n)]
        resps = []
        for ok in flags:
            x = a + b if ok else a + b + rng.choice([-2, -1, 1, 2])
            resps.append(f"{a} + {b} = {x} {'good' if ok else 'bad'}.\n\nThe answer is \\boxed{{{x}}}.")
        rows.append({"id": f"s{seed}-{i}", "problem": f"What is {a} + {b}?", "reference": str(a + b),
                     "responses": resps})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct", help="policy and RM backbone")
    ap.add_argument("--tiny", action="store_true", help="random tiny Qwen2 model + synthetic groups")
    ap.add_argument("--problems", type=int, default=48)
    ap.add_argument("--samples", type=int, default=6, help="responses per problem (Qwen2.5-Math RM: 6)")
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    ap.add_argument("--held-out", type=float, default=0.25, help="share of problems kept for evaluation")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--out", default="runs/orm_data")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from reward.labeling.io import atomic_write_jsonl
    from reward.registry import build_reward
    from rlkit.config import recipe_from_dict
    from reward.evaluation.ranking import evaluate_outcome_rm
    from rlkit.trainers.orm_trainer import label_groups, orm_from_causal_lm, read_group_rows, train_orm

    model, lr = args.model, args.lr
    groups_file = out / "groups.jsonl"
    if args.tiny:
        from rlkit import testing

        tok = testing.tiny_tokenizer()
        model = testing.save_tiny(testing.tiny_causal_lm(tok), tok, out / "tiny_policy")
        lr = 2e-3
        atomic_write_jsonl(groups_file, synthetic_groups(args.problems, seed=1, n=args.samples))
        print(f"[1/3] synthetic groups: {args.problems} problems x {args.samples} -> {groups_file}")
    else:
        from reward.labeling.mc import build_completer
        from reward.selection import read_prompts, rejection_sample
        from rlkit.data import arithmetic_problems

        prompts = out / "prompts.jsonl"
        atomic_write_jsonl(prompts, [dict(p, id=f"p{i}") for i, p in enumerate(arithmetic_problems(args.problems))])
        comp = build_completer(model, backend=args.backend, max_new_tokens=args.max_new_tokens, temperature=0.8)
        stats = rejection_sample(read_prompts(prompts), comp, out / "sft.jsonl", n=args.samples,
                                 require_correct=True, samples_output=groups_file,
                                 progress=lambda s: print(s, file=sys.stderr))
        print(f"[1/3] sampled: {json.dumps(stats)}")

    rows = read_group_rows(groups_file)
    cut = max(1, int(len(rows) * (1 - args.held_out)))
    train_rows, held_rows = rows[:cut], rows[cut:]
    atomic_write_jsonl(out / "train_groups.jsonl", train_rows)
    atomic_write_jsonl(out / "held_groups.jsonl", held_rows)
    held, hstats = label_groups(held_rows)
    print(f"[2/3] held-out groups: {json.dumps(hstats)}")

    recipe = recipe_from_dict({
        "name": "orm_listwise_example", "model": model, "algorithm": {"name": "orm"},
        "data": {"train": str(out / "train_groups.jsonl"), "num_eval": 0},
        "training": {"num_train_epochs": args.epochs, "per_device_train_batch_size": 4, "learning_rate": lr,
                     "warmup_steps": 2, "logging_steps": 5, "max_length": 512, "report_to": []}})
    try:
        summary = train_orm(recipe, out / "orm_run")
    except ValueError as e:  # e.g. every sampled problem all right / all wrong
        print(f"[2/3] cannot train: {e}")
        return 1
    print(f"[2/3] trained: {summary['global_step']} steps, loss {summary['first_logged_loss']} -> "
          f"{summary['last_logged_loss']}; model in {summary['model_dir']}")

    if not held:
        print("[3/3] no held-out problem has both a right and a wrong response; nothing to evaluate")
        return 0
    init_model, init_tok = orm_from_causal_lm(model)
    init_dir = out / "orm_init"
    init_model.save_pretrained(str(init_dir))
    init_tok.save_pretrained(str(init_dir))
    print("[3/3]            rm@N    maj@N   pass@N  pairwise")
    for name, path in (("init", init_dir), ("trained", summary["model_dir"])):
        m = evaluate_outcome_rm({"name": "orm", "args": {"model": str(path)}}, held)
        print(f"      {name:<9} {m['rm@n']:.3f}   {m['maj@n']:.3f}   {m['pass@n']:.3f}   {m['pairwise_accuracy']:.3f}")
    shaping = build_reward("qwen-math-shaping", reward_model={"name": "orm", "args": {"model": summary["model_dir"]}})
    g = held[0]
    res = shaping.score([g["problem"]] * len(g["responses"]), g["responses"], [g["reference"]] * len(g["responses"]))
    print("      qwen-math-shaping on one problem (correct, r):",
          [(c, round(s.meta["response_score"], 3)) for c, s in zip(g["correct"], res)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
