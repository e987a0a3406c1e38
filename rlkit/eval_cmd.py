"""``rlkit eval``: judge a reward model at the step level (ProcessBench) and the response level (Best-of-N).

    rlkit eval processbench --data ../shared/data/processbench --reward qwen-prm --reward-arg model=runs/prm/final \\
        [--splits math,olympiadbench,omnimath] [--threshold 0.5 | --threshold-split gsm8k [--threshold-data PATH]] \\
        [--limit N] [--out runs/eval-pb]
    rlkit eval bon --data bon.jsonl --reward qwen-prm --reward-arg model=runs/prm/final [--out runs/eval-bon]

``--data`` for processbench: a folder of ``<split>.json``/``.jsonl`` files, one file, or a hub id
(``Qwen/ProcessBench``). The threshold (PRMs) is fixed, or tuned on ``--threshold-split``: that split is
never also a test split (it is left out of the default test splits, and naming it in ``--splits`` is an
error). Critics (``llm-judge``) are judged by their verdicts. For bon, each JSONL row is ``{"problem",
"reference", "responses": [str | {"text", "correct"}, ...]}``.

Each run writes a report folder (report.md, metrics.json, PNG plots); bad input gives a one-line error and
exit code 2 before any model loads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from reward.base import AGGREGATIONS, RewardError
from reward.evaluation.bon import best_of_n, score_candidates
from reward.evaluation.processbench import DataError, evaluate_processbench, load_processbench, pct
from reward.evaluation.report import write_bon_report, write_processbench_report
from reward.labeling.io import LabelDataError, read_jsonl
from reward.registry import build_reward, check_reward_args, get_reward_class
from rlkit.label_cmd import UsageError, parse_kv
from rlkit.models import ModelError, check_model_name, resolve_model


def _reward_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reward", required=True, help="registered reward model name (see `rlkit rewards`)")
    p.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="reward constructor argument, value read as YAML (repeatable), e.g. model=runs/prm/final")
    p.add_argument("--reward-args", default=None, metavar="JSON", help="all reward arguments as one JSON object")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="report folder (default runs/eval-<kind>-<time>)")
    p.add_argument("--title", default=None)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate a reward model: processbench | bon", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="eval_command", required=True)
    pb = sub.add_parser("processbench", help="earliest-error prediction (acc on erroneous/correct items, F1)")
    pb.add_argument("--data", required=True, help="folder / file in the ProcessBench schema, or a hub id")
    pb.add_argument("--splits", default=None, help="comma-separated test splits (default: all but the threshold split)")
    g = pb.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None, help="fixed PRM threshold (default 0.5)")
    g.add_argument("--threshold-split", default=None, help="tune the threshold on this split (not a test split)")
    pb.add_argument("--threshold-data", default=None,
                    help="where --threshold-split lives (default: --data); a file's stem names its split")
    pb.add_argument("--limit", type=int, default=None, help="first N items of each split (quick runs)")
    _reward_args(pb)
    bon = sub.add_parser("bon", help="Best-of-N accuracy under min/last/product/mean, maj@N, pass@N")
    bon.add_argument("--data", required=True, help="JSONL of {problem, reference, responses: [...]}")
    bon.add_argument("--aggregations", default="min,last,product,mean")
    bon.add_argument("--limit", type=int, default=None, help="first N problems")
    _reward_args(bon)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        if args.eval_command == "processbench":
            return _processbench(args)
        return _bon(args)
    except (UsageError, DataError, LabelDataError, RewardError, ModelError, KeyError, ValueError, OSError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"rlkit eval: error: {msg.splitlines()[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2


def _reward_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.reward_args:
        try:
            kw = json.loads(args.reward_args)
        except json.JSONDecodeError as e:
            raise UsageError(f"--reward-args: not valid JSON ({e.msg})") from None
        if not isinstance(kw, dict):
            raise UsageError("--reward-args: expected a JSON object")
    kw.update(parse_kv(args.reward_arg, "--reward-arg"))
    get_reward_class(args.reward)  # KeyError naming the registered rewards
    problems = check_reward_args(args.reward, kw)
    if problems:
        raise UsageError(problems[0])
    model = kw.get("model")
    if isinstance(model, str):
        problem = check_model_name(model)
        if problem:
            raise UsageError(f"reward model: {problem}")
        kw["model"] = resolve_model(model)
    return kw


def _build(args: argparse.Namespace, kw: dict[str, Any]):
    return build_reward(args.reward, **kw)


def _out_dir(args: argparse.Namespace, kind: str) -> Path:
    return Path(args.out or f"runs/eval-{kind}-{time.strftime('%Y%m%d-%H%M%S')}")


def _processbench(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    splits = [s for s in args.splits.split(",") if s] if args.splits else None
    tsplit = args.threshold_split
    if args.threshold_data and not tsplit:
        raise UsageError("--threshold-data needs --threshold-split NAME")
    if tsplit and splits and tsplit in splits:
        raise UsageError(f"--threshold-split {tsplit!r} is also in --splits: the threshold is never tuned on a "
                         "test split")
    data = load_processbench(args.data, splits, args.limit)
    if tsplit and not splits and not args.threshold_data:
        data.pop(tsplit, None)  # tuned on it, so not reported
    if not data:
        raise UsageError("no test split left to evaluate")
    cal = None
    if tsplit:
        src = args.threshold_data or args.data
        try:
            cal_all = load_processbench(src, [tsplit], args.limit)
        except Exception:
            cal_all = load_processbench(src, None, args.limit)  # a single file: its stem names the split
        if tsplit not in cal_all:
            raise UsageError(f"threshold split {tsplit!r} not found in {src}")
        cal = cal_all[tsplit]
    kw = _reward_kwargs(args)
    model = _build(args, kw)
    print(f"[eval] processbench: {', '.join(f'{k} ({len(v)})' for k, v in data.items())}"
          + (f"; threshold tuned on {tsplit} ({len(cal)})" if cal else ""), file=sys.stderr)
    res = evaluate_processbench(model, data, threshold=args.threshold, threshold_split=tsplit,
                                threshold_data=cal, batch_size=args.batch_size, progress=sys.stderr.isatty())
    out = _out_dir(args, "processbench")
    config = {"data": str(args.data), "splits": list(data), "reward": args.reward,
              "reward_args": {k: str(v) for k, v in kw.items()}, "threshold": res["threshold"],
              "threshold_split": tsplit, "limit": args.limit}
    write_processbench_report(res, out, title=args.title or f"ProcessBench: {args.reward}", config=config)
    for name, m in res["splits"].items():
        print(f"{name}: acc_error {pct(m['error_acc'])} acc_correct {pct(m['correct_acc'])} F1 {pct(m['f1'])} "
              f"(n={m['n']})")
    print(f"mean F1 {pct(res['mean']['f1'])}; report: {out}/report.md")
    return 0


def _bon(args: argparse.Namespace) -> int:
    aggs = [a for a in args.aggregations.split(",") if a]
    for a in aggs:
        if a not in AGGREGATIONS:
            raise UsageError(f"--aggregations: unknown aggregation {a!r} (allowed: {', '.join(AGGREGATIONS)})")
    rows = read_jsonl(args.data)
    for r in rows:
        where = f"{args.data}:{r['_line']}"
        for k in ("problem", "reference", "responses"):
            if k not in r:
                raise UsageError(f"{where}: missing field {k!r}")
        if not isinstance(r["responses"], list) or not r["responses"]:
            raise UsageError(f"{where}: field 'responses' must be a non-empty list")
        for x in r["responses"]:
            if not (isinstance(x, str) or (isinstance(x, dict) and isinstance(x.get("text"), str))):
                raise UsageError(f"{where}: each response must be a string or {{'text': ..., 'correct': ...}}")
    if args.limit is not None:
        rows = rows[: args.limit]
    kw = _reward_kwargs(args)
    model = _build(args, kw)
    cands = score_candidates(model, rows, batch_size=args.batch_size)
    res = best_of_n(cands, aggregations=aggs)
    out = _out_dir(args, "bon")
    config = {"data": str(args.data), "reward": args.reward, "reward_args": {k: str(v) for k, v in kw.items()}}
    write_bon_report(res, out, title=args.title or f"Best-of-N: {args.reward}", config=config)
    print("  ".join([f"BoN[{k}] {pct(v)}" for k, v in res["bon"].items()]
                    + [f"maj@N {pct(res['maj@n'])}", f"pass@N {pct(res['pass@n'])}",
                       f"min-on-last {pct(res['min_on_last'])}"]))
    print(f"report: {out}/report.md")
    return 0
