"""End to end: sample responses -> MC labels + judge labels -> consensus -> train a PRM -> evaluate it.

    python examples/label_and_train_prm.py                       # embedded SmolLM2-135M-Instruct (CPU)
    python examples/label_and_train_prm.py --tiny                # random tiny model: a one-minute smoke run
    python examples/label_and_train_prm.py --gsm8k ../shared/data/gsm8k/test.jsonl --problems 16

This is the recipe ``rlkit/recipes/prm_pipeline_embedded.yaml`` (``rlkit train prm_pipeline_embedded`` does the
same), run from Python so the settings can be changed with flags; the stages live in
``rlkit/trainers/prm_pipeline.py``. Every stage prints its counts and writes its file under the run folder
(``data/``, ``prm/final``, ``report/``). With a 135M policy as its own judge most verdicts are unparsable, so
consensus keeps few responses; below ``min_kept`` the PRM trains on the MC labels instead (printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="policy (default: the recipe's embedded SmolLM2)")
    ap.add_argument("--tiny", action="store_true", help="use a random tiny Qwen2 model (smoke test)")
    ap.add_argument("--gsm8k", default=None, help="GSM8K-style JSONL (question, answer); default builtin arithmetic")
    ap.add_argument("--problems", type=int, default=None, help="number of problems (recipe default 24)")
    ap.add_argument("--judge", default=None, help="judge model (default: the policy)")
    ap.add_argument("--out", default="runs", help="parent folder of the run folder")
    args = ap.parse_args()

    from rlkit.config import load_recipe
    from rlkit.launch import train

    sets: list[str] = []
    if args.tiny:
        from rlkit import testing

        tok = testing.tiny_tokenizer()
        tiny = testing.save_tiny(testing.tiny_causal_lm(tok), tok, Path(args.out) / "tiny_policy")
        sets += [f"model={tiny}", "data.num_train=8", "training.max_new_tokens=16",
                 "training.judge_max_new_tokens=16", "training.mc_rollouts=2", "training.num_train_epochs=1",
                 "training.report_to=[]"]
    elif args.model:
        sets.append(f"model={args.model}")
    if args.gsm8k:
        sets.append(f"data.train={Path(args.gsm8k).resolve()}")
    if args.problems:
        sets.append(f"data.num_train={args.problems}")
    if args.judge:
        sets.append(f"training.judge_model={args.judge}")
    run_dir = train(load_recipe("prm_pipeline_embedded", sets), output_dir=args.out)
    print(f"run folder: {run_dir}\nPRM: {run_dir / 'prm' / 'final'} (evaluate on ProcessBench with "
          f"python examples/evaluate_prm_processbench.py --prm {run_dir / 'prm' / 'final'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
