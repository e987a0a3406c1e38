"""``rlkit select``: pick training data with a policy and a reward model.

    rlkit select rejection --input prompts.jsonl --output sft.jsonl --policy embedded:smollm2-135m-instruct \\
        [--reward orm --reward-arg model=runs/orm/final] [--require-correct] [--n 8] \\
        [--samples-output groups.jsonl] [--backend auto|hf|vllm] [--max-new-tokens 512] [--temperature 0.7]
    rlkit select filter --input prompts.jsonl --output rl_prompts.jsonl --policy MODEL [--n 8] \\
        [--min-correct 2] [--max-correct 5]

``rejection`` samples N responses per prompt and keeps the best one under the reward (and/or only
verifier-correct ones with ``--require-correct``), writing ``{"messages": [...]}`` rows that TRL's SFTTrainer
(and the ``sft`` algorithm) read. ``--samples-output`` also keeps every sample grouped per prompt: the input
of ``rlkit eval bon`` and of listwise ORM training (``algorithm.name: orm``).

``filter`` keeps the prompts whose accuracy over N policy samples lies in [--min-correct, --max-correct]
(default 2-5 of 8), as the input rows plus ``n_correct``: ready as a recipe's ``data.train``.

Generation: vLLM when ``--backend auto`` (default) finds it importable, else HF generate. Both commands are
resumable (finished prompts are listed in ``<output>.progress.jsonl`` and skipped on a re-run; nothing is
written twice) and print their counts as one JSON line. Bad input gives a one-line error and exit code 2
before any model loads.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reward.base import RewardError
from reward.labeling.io import LabelDataError, ResumableWriter
from reward.labeling.mc import SYSTEM_PROMPT, build_completer
from reward.registry import available, build_reward, check_reward_args
from reward.selection import filter_prompts, progress_path, read_prompts, rejection_sample
from rlkit.label_cmd import UsageError, _check_model, parse_kv
from rlkit.models import ModelError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="prompts (JSONL: problem/question + reference/answer)")
    p.add_argument("--output", required=True, help="selected rows (JSONL)")
    p.add_argument("--policy", required=True, help="causal LM that samples (path, hub id or embedded:NAME)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (default 8)")
    p.add_argument("--backend", default="auto", choices=("auto", "hf", "vllm"),
                   help="auto: vLLM when importable, else HF generate")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=4, help="prompts per generation call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system-prompt", default=None,
                   help="system turn when sampling (default: 'Please reason step by step, ... \\boxed{}.')")
    p.add_argument("--limit", type=int, default=None, help="process at most this many new prompts")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("select", help="pick data with a reward model: rejection | filter",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="select_command", required=True)
    rj = sub.add_parser("rejection", help="best-of-N responses per prompt -> SFT dataset")
    _common(rj)
    rj.add_argument("--reward", default=None, help="registered reward that ranks the samples (see `rlkit rewards`)")
    rj.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="reward constructor argument, value read as YAML (repeatable)")
    rj.add_argument("--require-correct", action="store_true", help="keep only verifier-correct samples")
    rj.add_argument("--samples-output", default=None, help="also write every sample, grouped per prompt (JSONL)")
    ft = sub.add_parser("filter", help="keep prompts whose policy accuracy lies in a band")
    _common(ft)
    ft.add_argument("--min-correct", type=int, default=2)
    ft.add_argument("--max-correct", type=int, default=5)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (UsageError, LabelDataError, RewardError, ModelError, ValueError, KeyError, OSError) as e:
        msg = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)).splitlines()
        print(f"rlkit select: error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlkit select: interrupted; finished prompts are saved, re-run to continue", file=sys.stderr)
        return 130


def _backend(name: str) -> str:
    if name != "auto":
        return name
    try:
        import vllm  # noqa: F401
    except Exception:
        return "hf"
    return "vllm"


def build_selection_completer(args: argparse.Namespace):
    sp = SYSTEM_PROMPT if args.system_prompt is None else (args.system_prompt or None)
    return build_completer(args.policy, backend=_backend(args.backend), max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
                           seed=args.seed, system_prompt=sp)


def _run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UsageError("--n must be >= 1")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must be >= 0")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    cmd = args.select_command
    reward = None
    if cmd == "rejection":
        if not args.reward and not args.require_correct:
            raise UsageError("rejection needs --reward NAME, --require-correct, or both")
        if args.reward_arg and not args.reward:
            raise UsageError("--reward-arg given without --reward")
        items = read_prompts(args.input, need_reference=args.require_correct)
        if args.reward:
            if args.reward not in available():
                raise UsageError(f"--reward: unknown reward {args.reward!r} (registered: {', '.join(available())})")
            rargs = parse_kv(args.reward_arg, "--reward-arg")
            problems = check_reward_args(args.reward, rargs)
            if problems:
                raise UsageError(f"--reward-arg: {problems[0]}")
    else:
        if not 0 <= args.min_correct <= args.max_correct <= args.n:
            raise UsageError(f"need 0 <= --min-correct <= --max-correct <= --n, got {args.min_correct}, "
                             f"{args.max_correct}, {args.n}")
        items = read_prompts(args.input, need_reference=True)
    _check_model(args.policy, "--policy")
    for path in [args.output, str(progress_path(args.output))] + \
            ([args.samples_output] if cmd == "rejection" and args.samples_output else []):
        ResumableWriter(path).close()  # refuses a foreign output file before any model loads
    if cmd == "rejection" and args.reward:
        reward = build_reward(args.reward, **rargs)
    completer = build_selection_completer(args)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if cmd == "rejection":
        stats = rejection_sample(items, completer, args.output, n=args.n, reward=reward,
                                 require_correct=args.require_correct, samples_output=args.samples_output,
                                 batch_size=args.batch_size, progress=log, limit=args.limit)
    else:
        stats = filter_prompts(items, completer, args.output, n=args.n, min_correct=args.min_correct,
                               max_correct=args.max_correct, batch_size=args.batch_size, progress=log,
                               limit=args.limit)
    print(json.dumps({"command": cmd, "output": args.output, **stats}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m rlkit.select_cmd rejection ...``) until the subcommand is wired into
    ``rlkit`` itself."""
    parser = argparse.ArgumentParser(prog="rlkit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["select", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
