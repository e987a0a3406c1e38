"""Evaluate a PRM (or any registered reward model) on ProcessBench and write a report folder.

    python examples/evaluate_prm_processbench.py --prm runs/prm_data/prm
    python examples/evaluate_prm_processbench.py --prm Qwen/Qwen2.5-Math-PRM-7B --trust-remote-code \\
        --data Qwen/ProcessBench

The threshold is tuned on the gsm8k split, which is then not reported (it is never tuned on a test split);
pass --threshold to fix it and report all four splits. Same as:
    rlkit eval processbench --data DATA --reward qwen-prm --reward-arg model=PRM --threshold-split gsm8k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prm", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "processbench"))
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--threshold-split", default="gsm8k")
    ap.add_argument("--limit", type=int, default=50, help="items per split (0 = all)")
    ap.add_argument("--trust-remote-code", action="store_true")
    ap.add_argument("--out", default="runs/eval-processbench")
    args = ap.parse_args()

    from reward.evaluation.processbench import evaluate_processbench, load_processbench, pct
    from reward.evaluation.report import write_processbench_report
    from reward.registry import build_reward

    limit = args.limit or None
    data = load_processbench(args.data, limit=limit)
    cal = None
    if args.threshold is None:
        cal = data.pop(args.threshold_split)
    rm = build_reward("qwen-prm", model=args.prm, trust_remote_code=args.trust_remote_code)
    res = evaluate_processbench(rm, data, threshold=args.threshold, threshold_data=cal,
                                threshold_split=None if cal is None else args.threshold_split)
    write_processbench_report(res, args.out, title=f"ProcessBench: {args.prm}")
    for name, m in res["splits"].items():
        print(f"{name:<14} acc(error) {pct(m['error_acc']):>5}  acc(correct) {pct(m['correct_acc']):>5}  "
              f"F1 {pct(m['f1']):>5}")
    print(f"mean F1 {pct(res['mean']['f1'])} (threshold {res['threshold']}); report in {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
