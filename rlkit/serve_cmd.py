"""``rlkit serve-reward``: serve any registered reward over HTTP for the ``remote`` reward, with dynamic batching.

    rlkit serve-reward --reward arithmetic [--port 8000] [--host 127.0.0.1]
    rlkit serve-reward --reward qwen-prm --reward-args '{"model": "runs/prm_train-.../final"}' --host 0.0.0.0
    rlkit serve-reward --recipe grpo_prm_quickstart [--set reward.args.verify_final=false]   # the recipe's reward:
    rlkit serve-reward --reward my-reward --import my_rewards      # a module that @register()s custom rewards

Batching: requests arriving within ``--max-wait-ms`` of the first waiting one are scored in one call of at most
``--max-batch`` responses (``--max-batch 1``: one request at a time); more than ``--max-queue`` waiting
requests get HTTP 503. ``--token`` (default: the RLKIT_REWARD_TOKEN environment variable) makes /score and
/metadata require ``Authorization: Bearer <token>``. SIGTERM or Ctrl-C finishes the queued batches, then exits 0.
Bad arguments give a one-line error and exit code 2 before any model loads.
See docs/rewards.md#serving-a-reward-rlkit-serve-reward.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from reward.base import RewardError
from reward.registry import build_reward
from reward.serving import ServeSettings, serve
from rlkit.config import RecipeError, load_recipe
from rlkit.eval_cmd import _reward_kwargs
from rlkit.label_cmd import UsageError
from rlkit.models import ModelError

TOKEN_ENV = "RLKIT_REWARD_TOKEN"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve-reward", help="serve a registered reward over HTTP (for reward: remote)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--reward", help="registered reward name (see `rlkit rewards`)")
    src.add_argument("--recipe", help="serve this recipe's reward: block (path or shipped recipe name)")
    p.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="reward constructor argument, value read as YAML (repeatable)")
    p.add_argument("--reward-args", default=None, metavar="JSON", help="all reward arguments as one JSON object")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="with --recipe: override a recipe value (repeatable)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it registers custom rewards); repeatable")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 = all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64, help="responses per score call (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=1024, help="requests waiting before 503 (default 1024)")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="larger bodies get 413 (default 8 MiB)")
    p.add_argument("--max-request-responses", type=int, default=1024,
                   help="more responses in one request get 413 (default 1024)")
    p.add_argument("--token", default=None,
                   help=f"shared secret for Authorization: Bearer (default ${TOKEN_ENV}, the better place: "
                   "a command line is visible to other users of the machine)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds to finish in-flight requests after SIGTERM (default 30)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=run)
    return p


def _reward_from_args(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(name, constructor kwargs), checked as `rlkit eval` checks them (embedded: models resolved)."""
    if args.recipe:
        if args.reward_arg or args.reward_args:
            raise UsageError("--reward-arg/--reward-args go with --reward; with --recipe use --set reward.args.K=V")

        recipe = load_recipe(args.recipe, args.set)
        args = argparse.Namespace(reward=recipe.reward.name, reward_arg=[],
                                  reward_args=json.dumps(recipe.reward.args, default=str))
    elif args.set:
        raise UsageError("--set goes with --recipe")
    return args.reward, _reward_kwargs(args)


def run(args: argparse.Namespace) -> int:
    try:
        for mod in args.imports:
            try:
                importlib.import_module(mod)
            except ImportError as e:
                raise UsageError(f"--import {mod}: {e}") from None
        token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
        settings = ServeSettings(host=args.host, port=args.port, max_batch=args.max_batch,
                                 max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                                 max_body_bytes=args.max_body_bytes, max_request_responses=args.max_request_responses,
                                 token=token, graceful_timeout_s=args.graceful_timeout, log_level=args.log_level,
                                 access_log=args.access_log)
        name, kw = _reward_from_args(args)
        model = build_reward(name, **kw)
        auth = "token required" if token else "no token"
        print(f"rlkit serve-reward: {name} on http://{args.host}:{args.port}/score (max batch {args.max_batch}, "
              f"max wait {args.max_wait_ms:g} ms, {auth})", file=sys.stderr, flush=True)
        stats = serve(model, settings, name=name, args=kw)
    except (UsageError, RecipeError, RewardError, ModelError, KeyError, ValueError, OSError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"rlkit serve-reward: error: {msg.splitlines()[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2
    print(f"rlkit serve-reward: stopped after {stats.requests} requests ({stats.responses} responses) in "
          f"{stats.batches} batches", file=sys.stderr)
    return 0
