"""End to end: sample responses -> MC labels + judge labels -> consensus -> train a PRM -> evaluate it.

    python examples/label_and_train_prm.py                       # embedded SmolLM2-135M-Instruct (CPU, slow)
    python examples/label_and_train_prm.py --tiny                # random tiny model: a 1-minute smoke run
    python examples/label_and_train_prm.py --gsm8k ../shared/data/gsm8k/test.jsonl --problems 16

Every stage prints its counts; every stage's output is a file under --out, and labelling is resumable (re-run
the same command after an interruption). With a 135M policy the judge is weak (many unparsable verdicts), so
consensus keeps few responses; when it keeps fewer than --min-kept the PRM is trained on the MC labels instead
(printed). The trained PRM lands in <out>/prm and loads with build_reward("qwen-prm", model=<out>/prm).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--tiny", action="store_true", help="use a random tiny Qwen2 model (smoke test)")
    ap.add_argument("--gsm8k", default=None, help="GSM8K-style JSONL (question, answer); default builtin arithmetic")
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--samples", type=int, default=4, help="responses per problem")
    ap.add_argument("--n", type=int, default=4, help="MC completions per step")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--min-kept", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--out", default="runs/prm_data")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from reward.labeling.consensus import consensus, format_report
    from reward.labeling.io import atomic_write_jsonl, read_items, read_jsonl
    from reward.labeling.judge import run_judge
    from reward.labeling.mc import HFCompleter, load_causal_lm, run_mc
    from reward.models.judge import LLMJudge
    from reward.steps import StepSplitter

    # ---- model
    if args.tiny:
        from rlkit import testing

        tok = testing.tiny_tokenizer()
        model_dir = testing.save_tiny(testing.tiny_causal_lm(tok), tok, out / "tiny_policy")
        args.max_new_tokens = min(args.max_new_tokens, 24)
    else:
        from rlkit.models import resolve_model

        model_dir = resolve_model(args.model)
    model, tok = load_causal_lm(model_dir)
    completer = HFCompleter(model, tok, max_new_tokens=args.max_new_tokens, temperature=0.8, batch_size=8)

    # ---- problems and sampled responses
    if args.gsm8k:
        rows = [json.loads(x) for x in Path(args.gsm8k).read_text().splitlines() if x.strip()]
        random.Random(0).shuffle(rows)
        problems = [{"question": r["question"], "answer": r["answer"]} for r in rows[: args.problems]]
    else:
        from rlkit.data import arithmetic_problems

        problems = arithmetic_problems(args.problems, seed=0)
    resp_file = out / "responses.jsonl"
    if not resp_file.exists():
        samples = completer([completer.prompt(p["question"]) for p in problems], args.samples)
        rows, split = [], StepSplitter()
        for i, (p, outs) in enumerate(zip(problems, samples)):
            for j, text in enumerate(outs):
                if split.split(text):
                    rows.append({"id": f"p{i}-s{j}", "problem": p["question"], "response": text,
                                 "reference": p["answer"]})
        atomic_write_jsonl(resp_file, rows)
    items = read_items(resp_file)
    print(f"[1/5] responses: {len(items)} from {len(problems)} problems x {args.samples} samples "
          f"({sum(len(i['steps']) for i in items)} steps)")

    # ---- labels
    mc_file, judge_file = out / "mc.jsonl", out / "judge.jsonl"
    s = run_mc(items, completer, str(mc_file), n=args.n)
    print(f"[2/5] MC labels: {json.dumps(s)}")
    judge = LLMJudge(model=model, tokenizer=tok, max_new_tokens=min(256, args.max_new_tokens * 2))
    s = run_judge(items, judge, str(judge_file), batch_size=8)
    print(f"[3/5] judge labels: {json.dumps(s)}")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "_line"} for r in rs]  # noqa: E731
    mc, jd = strip(read_jsonl(mc_file)), strip(read_jsonl(judge_file))
    kept, report = consensus(mc, jd)
    atomic_write_jsonl(out / "consensus.jsonl", kept)
    print("[4/5] consensus: " + format_report(report).replace("\n", "\n      "))
    train_recs = kept if len(kept) >= args.min_kept else mc
    source = "consensus" if train_recs is kept else f"MC (consensus kept {len(kept)} < --min-kept {args.min_kept})"

    # ---- PRM training, with a held-out fifth of the records
    from transformers import TrainingArguments

    from rlkit.trainers.prm import PRMTrainer, build_prm_dataset, prm_from_causal_lm, step_accuracy

    recs = [r for r in train_recs if r["labels"]]
    random.Random(0).shuffle(recs)
    k = max(1, len(recs) // 5)
    prm, ptok = prm_from_causal_lm(model_dir)
    train_ds, st = build_prm_dataset(recs[k:], ptok, max_length=1024, return_stats=True)
    held = build_prm_dataset(recs[:k], ptok, max_length=1024)
    print(f"[5/5] PRM training on {source}: {json.dumps(st)}; held-out examples {len(held)}")
    before = step_accuracy(prm, held, pad_token_id=ptok.pad_token_id)
    targs = TrainingArguments(output_dir=str(out / "prm_ckpt"), num_train_epochs=args.epochs,
                              per_device_train_batch_size=8, learning_rate=2e-5 if not args.tiny else 1e-3,
                              logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = PRMTrainer(model=prm, args=targs, train_dataset=train_ds, processing_class=ptok)
    trainer.train()
    after = step_accuracy(trainer.model, held, pad_token_id=ptok.pad_token_id)
    trainer.save_model(str(out / "prm"))
    ptok.save_pretrained(str(out / "prm"))
    print(f"held-out step accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, "
          f"CE {before['cross_entropy']:.3f} -> {after['cross_entropy']:.3f} (n={after['n']})")
    print(f"PRM saved to {out / 'prm'}; evaluate with: python examples/evaluate_prm_processbench.py "
          f"--prm {out / 'prm'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
