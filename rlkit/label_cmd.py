"""``rlkit label``: make PRM step labels (MC estimation, LLM judge) and filter them by consensus.

    rlkit label --method mc --input responses.jsonl --output mc.jsonl --completer embedded:smollm2-135m-instruct \\
        [--backend hf|vllm] [--n 8] [--soft] [--max-new-tokens 256] [--temperature 0.7]
    rlkit label --method judge --input responses.jsonl --output judge.jsonl --judge MODEL [--judge-arg k=v ...]
    rlkit label --method consensus --mc mc.jsonl --judge-labels judge.jsonl --output kept.jsonl [--report r.md]

MC and judge labelling append one line per finished response and skip ids already in ``--output``, so an
interrupted run continues where it stopped. Input rows: ``{"id", "problem", "response" | "steps",
"reference"}`` (see reward/labeling/io.py). Bad input gives a one-line error and exit code 2 before any model
loads or any output is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from reward.base import RewardError
from reward.labeling.consensus import consensus, format_report
from reward.labeling.io import (
    LabelDataError,
    ResumableWriter,
    atomic_write_jsonl,
    atomic_write_text,
    read_items,
    read_jsonl,
)
from reward.labeling.judge import run_judge
from reward.labeling.mc import build_completer, run_mc
from reward.registry import build_reward
from rlkit.models import ModelError, check_model_name, resolve_model

METHODS = ("mc", "judge", "consensus")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("label", help="make PRM step labels: mc | judge | consensus",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--input", help="responses to label (JSONL; mc and judge)")
    p.add_argument("--output", required=True, help="labelled records (JSONL)")
    g = p.add_argument_group("mc")
    g.add_argument("--completer", help="causal LM that rolls out completions (path, hub id or embedded:NAME)")
    g.add_argument("--backend", default="hf", choices=("hf", "vllm"), help="vllm when importable, else hf")
    g.add_argument("--n", type=int, default=8, help="completions per step (default 8)")
    g.add_argument("--soft", action="store_true", help="soft labels (fraction right) instead of hard (any right)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--batch-size", type=int, default=4, help="prefixes (mc) / responses (judge) per call")
    g.add_argument("--items-per-call", type=int, default=1,
                   help="responses whose step prefixes share one completer call (bigger batches, faster)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("judge")
    g.add_argument("--judge", help="critic model for llm-judge (path, hub id or embedded:NAME)")
    g.add_argument("--judge-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra llm-judge argument (value read as YAML), repeatable")
    g = p.add_argument_group("consensus")
    g.add_argument("--mc", help="MC-labelled records")
    g.add_argument("--judge-labels", help="judge-labelled records")
    g.add_argument("--report", help="write the consensus report (markdown) here too")
    p.add_argument("--limit", type=int, help="label at most this many new responses")
    p.set_defaults(func=run)
    return p


class UsageError(ValueError):
    pass


def parse_kv(pairs: list[str], what: str) -> dict[str, Any]:
    out = {}
    for item in pairs:
        if "=" not in item:
            raise UsageError(f"{what} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def _resolve(name: str) -> str:
    return resolve_model(name)


def _check_model(name: str, flag: str) -> None:
    problem = check_model_name(name)
    if problem:
        raise UsageError(f"{flag}: {problem}")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (UsageError, LabelDataError, RewardError, ModelError, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"rlkit label: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlkit label: interrupted; finished responses are saved, re-run to continue", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.method == "consensus":
        return _consensus(args)
    if not args.input:
        raise UsageError(f"--method {args.method} needs --input")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must be >= 0")
    items = read_items(args.input)  # every line checked before any model loads
    if args.method == "mc":
        if not args.completer:
            raise UsageError("--method mc needs --completer MODEL")
        if args.n < 1:
            raise UsageError("--n must be >= 1")
        if args.items_per_call < 1:
            raise UsageError("--items-per-call must be >= 1")
        _check_model(args.completer, "--completer")

        ResumableWriter(args.output).close()  # refuses a foreign output file before loading the model
        comp = build_completer(args.completer, backend=args.backend, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, batch_size=args.batch_size, seed=args.seed)
        stats = run_mc(items, comp, args.output, n=args.n, mode="soft" if args.soft else "hard",
                       progress=lambda s: print(s, file=sys.stderr), limit=args.limit,
                       items_per_call=args.items_per_call)
    else:
        if not args.judge:
            raise UsageError("--method judge needs --judge MODEL")
        _check_model(args.judge, "--judge")
        jargs = parse_kv(args.judge_arg, "--judge-arg")

        ResumableWriter(args.output).close()
        judge = build_reward("llm-judge", model=_resolve(args.judge), **jargs)
        stats = run_judge(items, judge, args.output, batch_size=args.batch_size,
                          progress=lambda s: print(s, file=sys.stderr), limit=args.limit)
    print(json.dumps({"method": args.method, "output": args.output, **stats}))
    return 0


def _consensus(args: argparse.Namespace) -> int:
    if not args.mc or not args.judge_labels:
        raise UsageError("--method consensus needs --mc FILE and --judge-labels FILE")
    mc = [{k: v for k, v in r.items() if k != "_line"} for r in read_jsonl(args.mc)]
    jd = [{k: v for k, v in r.items() if k != "_line"} for r in read_jsonl(args.judge_labels)]
    kept, report = consensus(mc, jd)
    text = format_report(report)
    atomic_write_jsonl(args.output, kept)
    if args.report:
        atomic_write_text(args.report, "# Consensus filtering\n\n" + text + "\n")
    print(text)
    print(json.dumps({"method": "consensus", "output": args.output, "kept": report["kept"],
                      "total": report["total"]}))
    return 0
