"""The `rlkit` command: train | check | recipes | rewards | label | eval | select.

Examples:
    rlkit train grpo_prm_quickstart --set training.max_steps=5
    rlkit train grpo_prm_quickstart --set reward.name=verifier      # swap the reward model in one line
    rlkit check my_recipe.yaml                                      # validate only, load nothing
    rlkit check grpo_qwen_math_prm_8gpu --gpu-memory 80GB           # + warn if the memory plan exceeds 80 GB
    rlkit recipes                                                   # shipped recipes, one line each
    rlkit rewards                                                   # registered reward models

Bad input (malformed recipe, unknown key or name, missing file) prints one line `rlkit: error: ...` and
exits with code 2 without creating a run folder.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from reward.base import RewardError
from reward.registry import available, get_reward_class
from rlkit.algorithms import get_algorithm
from rlkit.config import RECIPES_DIR, RecipeError, load_recipe, shipped_recipes, stage_recipes, yaml_load
from rlkit.data import DataError
from rlkit.distributed import accelerate_command, machine_launch
from rlkit.launch import resume, train
from rlkit.memory import PlanError, format_plan, parse_params, parse_size, plan_memory
from rlkit.model_shapes import ShapeError
from rlkit.models import ModelError

EXIT_USAGE = 2


def _fail(msg: str) -> int:
    print(f"rlkit: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _load(args):
    return load_recipe(args.recipe, args.set)


def cmd_check(args) -> int:
    gpu_memory, params = parse_size(args.gpu_memory), parse_params(args.params)  # bad values fail first
    recipe = _load(args)
    parts = [recipe.algorithm.name, f"reward {recipe.reward.name}"]
    if recipe.algorithm.name == "grpo":  # the only algorithm whose credit mode the recipe chooses
        parts.append(f"credit {recipe.algorithm.credit}")
    if get_algorithm(recipe.algorithm.name).runs_stages:
        stages = stage_recipes(recipe)  # checked, earlier stages' policies standing in as the chain's model
        starts = [s.model for s in stage_recipes(recipe, run_dir=Path("RUN"))]  # as they will be in RUN/
        print(f"{args.recipe}: ok (chain of {len(stages)} stages)")
        named = [(f"stage {spec.name}: ", stage, start) for spec, stage, start in zip(recipe.stages, stages, starts)]
    else:
        print(f"{args.recipe}: ok ({', '.join(parts)}, distribution {recipe.distribution})")
        named = [("", recipe, recipe.model)]
    for prefix, one, start in named:
        if prefix:
            credit = f", credit {one.algorithm.credit}" if one.algorithm.name == "grpo" else ""
            print(f"  {prefix}{one.algorithm.name}, reward {one.reward.name}{credit}, optimizer {one.optimizer.name}, "
                  f"distribution {one.distribution}, starts from {start}")
        plan = plan_memory(one, gpu_memory, args.gpu_memory or "", params)
        print(format_plan(plan))
        if plan.warning():
            print(plan.warning(), file=sys.stderr)
    return 0


def _machine(args, recipe):
    try:
        return machine_launch(recipe, args.machine_rank, args.main_process_ip, args.main_process_port)
    except ValueError as e:
        raise RecipeError(str(e)) from None


def print_launch(args, recipe) -> None:
    """Each machine's command (and the accelerate command it runs), without running anything."""
    n = recipe.machines.num_machines
    if recipe.distribution == "none":
        print(f"# {args.recipe}: distribution none: runs in the `rlkit train` process itself")
        return
    run_dir = Path(args.run_dir or f"<{recipe.output_dir}/{recipe.name}-TIME>")
    sets = "".join(f" --set {shlex.quote(s)}" for s in args.set)
    for rank in range(n):
        machine = machine_launch(recipe, rank, args.main_process_ip, args.main_process_port) if n > 1 else None
        node = f" --run-dir {shlex.quote(str(run_dir))} --machine-rank {rank}" if n > 1 else ""
        print(f"# machine {rank} of {n}: rlkit train {shlex.quote(args.recipe)}{sets}{node}")
        print(shlex.join(accelerate_command(recipe, run_dir, machine)))


def cmd_train(args) -> int:
    if args.resume:
        recipe = load_recipe(str(Path(args.resume) / "recipe.yaml")) if args.recipe is None else _load(args)
        run_dir = resume(args.resume, args.recipe, args.set, args.allow_changes, _machine(args, recipe))
        print(f"rlkit: run finished: {run_dir}")
        return 0
    if args.recipe is None:
        raise RecipeError("rlkit train needs a RECIPE (or --resume RUN_DIR)")
    recipe = _load(args)  # every check happens here, before any folder or model exists
    machine = _machine(args, recipe)
    if args.print_launch:
        print_launch(args, recipe)
        return 0
    run_dir = train(recipe, args.output_dir, run_dir=args.run_dir, machine=machine)
    print(f"rlkit: run finished: {run_dir}")
    report = run_dir / "report" / "index.md"
    if report.is_file():
        print(f"rlkit: report: {report}")
    return 0


def cmd_recipes(args) -> int:
    for name in shipped_recipes():
        data = yaml_load((RECIPES_DIR / f"{name}.yaml").read_text()) or {}
        desc = " ".join(str(data.get("description", "")).split())
        first = desc.split(". ")[0].rstrip(".")
        if len(first) > 100:
            first = first[:97].rstrip() + "..."
        print(f"{name:<28} {first}")
    return 0


def cmd_rewards(args) -> int:
    for name in available():
        doc = (get_reward_class(name).__doc__ or "").strip().splitlines()
        print(f"{name:<20} {doc[0] if doc else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlkit", description="RLHF for reasoning models with process reward models.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, helptext in (("train", cmd_train, "validate a recipe and run it"),
                               ("check", cmd_check, "validate a recipe without running it")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("recipe", nargs="?" if name == "train" else None,
                        help="recipe YAML path or shipped recipe name")
        sp.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a recipe value (repeatable), e.g. --set training.max_steps=5")
        if name == "train":
            sp.add_argument("--output-dir", default=None, help="parent folder of the run folder (default: recipe)")
            sp.add_argument("--run-dir", default=None,
                            help="the run folder itself (created if needed); a multi-machine run needs the same "
                                 "shared folder on every machine")
            sp.add_argument("--machine-rank", type=int, default=None,
                            help="this machine's rank in a multi-machine run (default: MACHINE_RANK, NODE_RANK, "
                                 "SLURM_NODEID, else 0)")
            sp.add_argument("--main-process-ip", default=None, help="the rank-0 machine's address (multi-machine)")
            sp.add_argument("--main-process-port", type=int, default=None, help="its port (multi-machine)")
            sp.add_argument("--resume", default=None, metavar="RUN_DIR",
                            help="continue RUN_DIR in place from its newest complete checkpoint (its saved recipe)")
            sp.add_argument("--allow-changes", action="store_true",
                            help="with --resume: accept a RECIPE or --set values that differ from the saved recipe")
            sp.add_argument("--print-launch", action="store_true",
                            help="print every machine's command and the accelerate command it runs; run nothing")
        else:
            sp.add_argument("--gpu-memory", metavar="SIZE", help="memory of one GPU (80GB, 80GiB, 141GB): warn "
                            "when the memory plan's estimate per GPU exceeds it (the exit code stays 0)")
            sp.add_argument("--params", action="append", default=[], metavar="MODEL=COUNT",
                            help="parameter count of a model whose config is not local, e.g. Qwen/Qwen2.5-7B=7.6B")
        sp.set_defaults(func=fn)
    sub.add_parser("recipes", help="list shipped recipes").set_defaults(func=cmd_recipes)
    sub.add_parser("rewards", help="list registered reward models").set_defaults(func=cmd_rewards)
    for mod in ("rlkit.label_cmd", "rlkit.eval_cmd", "rlkit.select_cmd", "rlkit.serve_cmd", "rlkit.search_cmd"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        m.add_parser(sub).set_defaults(func=m.run)
    return p


class Terminated(BaseException):
    """SIGTERM reached ``rlkit`` outside training (whose :class:`rlkit.checkpoints.RunGuard` handles it). A
    BaseException, as KeyboardInterrupt is, so no ``except Exception`` on the way swallows it."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C does (finally blocks, exit handlers) instead of killing the process on the
    # spot: helper processes (a vLLM engine) are shut down with it instead of living on as orphans
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args.func(args) or 0)
    except (RecipeError, DataError, ModelError, PlanError, ShapeError) as e:
        return _fail(str(e))
    except FileNotFoundError as e:
        return _fail(f"file not found: {e.filename or e}")
    except RewardError as e:  # e.g. a dead reward server or NaN scores during training
        print(f"\nrlkit: error: reward: {e}", file=sys.stderr)  # \n: a progress bar may hold the line
        return 1
    except RuntimeError as e:
        print(f"\nrlkit: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _fail("interrupted")
    except Terminated:
        return _fail("terminated (SIGTERM)")
    except BrokenPipeError:  # the reader went away (`rlkit check ... | head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
