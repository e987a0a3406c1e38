"""Recipe loading and validation: a YAML file -> a checked :class:`rlkit.recipe.Recipe`, with one-line errors
naming the key path.

Everything is checked before any model loads: unknown keys, wrong types (``rlkit.recipe``), unknown registered
names (algorithm, reward, credit mode, optimizer), trainer fields unknown to the algorithm's config class (from
the algorithm registry, ``rlkit.algorithms``), missing data files, LoRA settings (``peft:``) and the
combinations that cannot train a LoRA policy.

Example:
    >>> r = load_recipe("grpo_prm_quickstart", overrides=["training.max_steps=2"])
    >>> r.algorithm.name, r.training["max_steps"]
    ('grpo', 2)
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from reward.base import AGGREGATIONS, OnlineTrainable
from reward.registry import available, check_reward_args, get_reward_class
from rlkit import credit
from rlkit.algorithms import Algorithm, algorithm_names, get_algorithm
from rlkit.data import BUILTIN_DATASETS
from rlkit.models import check_model_name
from rlkit.optim.trainer_hook import OPTIMIZER_NAMES, check_optimizer_cfg
from rlkit.recipe import (
    AlgorithmConfig,
    DataConfig,
    GenerationConfig,
    MachinesConfig,
    OptimizerConfig,
    PeftConfig,
    REWARD_UPDATES,
    Recipe,
    RecipeError,
    RewardConfig,
    apply_overrides,
    coerce,
    parse_recipe,
    yaml_load,
)
from rlkit.search_cmd import SEARCH_BACKENDS, search_settings
from rlkit.vllm_support import vllm_problem

__all__ = ["load_recipe", "recipe_from_dict", "validate", "resolve_recipe_path", "shipped_recipes", "RECIPES_DIR",
           "Recipe", "RecipeError", "DataConfig", "RewardConfig", "AlgorithmConfig", "OptimizerConfig",
           "GenerationConfig", "PeftConfig", "MachinesConfig", "apply_overrides", "yaml_load", "trainer_config_class"]

DISTRIBUTIONS = ("none", "zero2", "zero3")
BACKENDS = ("hf", "vllm")
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe file path, or the name of a shipped recipe (``grpo_prm_quickstart``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (RECIPES_DIR / name_or_path, RECIPES_DIR / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    raise RecipeError(f"recipe file not found: {name_or_path} (shipped recipes: {', '.join(shipped_recipes())})")


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def load_recipe(path: str | Path, overrides: list[str] | None = None, check: bool = True) -> Recipe:
    """Read, override and validate a recipe. Raises RecipeError with a one-line message."""
    p = resolve_recipe_path(str(path))
    try:
        data = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise RecipeError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return recipe_from_dict(apply_overrides(data, overrides or []), check=check, base_dir=p.parent)


_STAGE_REF = re.compile(r"\{([^{}]+)\}")


def stage_recipes(chain: Recipe, run_dir: Path | None = None, base_dir: Path | None = None) -> list[Recipe]:
    """The stages of a chained recipe (``algorithm.name: chain``) as validated recipes, in order.

    Each stage is its recipe file with the chain's ``seed`` (so every stage evaluates on the same held-out
    problems), ``model`` = the previous stage's ``policy/`` unless the stage sets one, then the stage's ``set``
    changes; ``{model}`` and ``{NAME.policy}`` in string values are resolved (see
    :class:`rlkit.recipe.StageConfig`). Stage policies live in ``run_dir/stages/NAME/policy``; without a
    ``run_dir`` (``rlkit check``) they stand for the chain's model, which has the same architecture.
    Raises RecipeError with one line naming the stage."""
    if not chain.stages:
        raise RecipeError("stages: a chained run needs at least one stage ({name: ..., recipe: ...})")
    recipes: list[Recipe] = []
    done: list[str] = []
    for i, stage in enumerate(chain.stages):
        where = f"stages[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", stage.name or ""):
            raise RecipeError(f"{where}.name: a stage needs a name of letters, digits, - or _, got {stage.name!r}")
        if stage.name in done:
            raise RecipeError(f"{where}.name: stage name {stage.name!r} is used twice")

        def build(policy_of) -> Recipe:
            def resolve(value: Any) -> Any:
                if isinstance(value, dict):
                    return {k: resolve(v) for k, v in value.items()}
                if isinstance(value, list):
                    return [resolve(v) for v in value]
                if not isinstance(value, str):
                    return value

                def one(m: re.Match) -> str:
                    ref = m.group(1)
                    if ref == "model":
                        return chain.model
                    name, _, what = ref.partition(".")
                    if what != "policy" or name not in done:
                        raise RecipeError(f"{where}.set: unknown reference {{{ref}}} (use {{model}} or "
                                          f"{{NAME.policy}} of an earlier stage: {', '.join(done) or 'none yet'})")
                    return policy_of(name)
                return _STAGE_REF.sub(one, value)

            data = copy.deepcopy(raw)
            data["name"] = f"{chain.name}-{stage.name}"
            data["seed"] = chain.seed
            data["model"] = policy_of(done[-1]) if done else chain.model
            data = apply_overrides(data, [f"{k}={json.dumps(resolve(v))}" for k, v in stage.set.items()])
            return recipe_from_dict(resolve(data), base_dir=src.parent, check=False)

        path = Path(stage.recipe)
        if base_dir is not None and not path.is_absolute() and (base_dir / path).is_file():
            path = base_dir / path
        try:
            src = resolve_recipe_path(str(path))
            raw = yaml_load(src.read_text()) or {}
        except (RecipeError, yaml.YAMLError, OSError) as e:
            raise RecipeError(f"{where}.recipe: {e}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{where}.recipe: {src} is not a mapping of keys")
        try:
            # checked with the earlier stages' policies standing for themselves (they may not exist yet)
            checked = build(lambda name: chain.model)
            if get_algorithm(checked.algorithm.name).runs_stages:
                raise RecipeError("a stage cannot itself be a chained run")
            validate(checked, src.parent)
            stage_recipe = checked if run_dir is None else build(
                lambda name: str(run_dir / "stages" / name / "policy"))
            stage_recipe.training = checked.training  # values coerced by the check
        except RecipeError as e:
            raise RecipeError(f"{where} ({stage.name}): {e}") from None
        recipes.append(stage_recipe)
        done.append(stage.name)
    return recipes


def recipe_from_dict(data: dict[str, Any], check: bool = True, base_dir: Path | None = None) -> Recipe:
    """A :class:`Recipe` from a mapping; validated (:func:`validate`) unless ``check`` is False."""
    recipe = parse_recipe(data)
    if check:
        validate(recipe, base_dir)
    return recipe


# ----------------------------------------------------------------------------------------------- semantic checks

def _choice(value: str, allowed: tuple[str, ...], path: str) -> None:
    if value not in allowed:
        raise RecipeError(f"{path}: unknown value {value!r} (allowed: {', '.join(allowed)})")


def trainer_config_class(algorithm: str) -> type:
    """The TRL/transformers config dataclass whose fields a recipe's ``training:`` block may set."""
    return get_algorithm(algorithm).config_cls


# Keys rlkit itself fills from other parts of the recipe; setting them under training: would be ambiguous.
_MANAGED_TRAINING_KEYS = ("output_dir", "deepspeed", "use_cpu", "use_vllm", "vllm_mode", "seed")


def _is_simple(tp: Any) -> bool:
    """int/float/bool/str, or an Optional/Union of them: types a recipe value can be checked against."""
    if tp in (int, float, bool, str):
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return bool(args) and all(a in (int, float, bool, str) for a in args)
    return False


def _check_data_source(src: str, path: str, base_dir: Path | None) -> None:
    if src.startswith("builtin:"):
        _choice(src.split(":", 1)[1], tuple(BUILTIN_DATASETS), path)
    elif src.startswith("hub:"):
        if len(src) <= 4:
            raise RecipeError(f"{path}: 'hub:' needs a dataset id, e.g. hub:openai/gsm8k:main")
    else:
        p = Path(src)
        if not p.is_file() and not (base_dir and (base_dir / src).is_file()):
            raise RecipeError(f"{path}: data file not found: {src}")


# training: keys people write for LoRA (TRL's script arguments, other toolkits); pointed at the peft: block
_LORA_TRAINING_KEY = re.compile(r"^(use_peft|use_lora|peft.*|lora.*)$")


def _optimizer_alpha(args: dict[str, Any]) -> float | None:
    try:
        return float(args.get("alpha", 1e-7))
    except (TypeError, ValueError):
        return None  # build_optimizer reports it


SEARCH_ALGORITHMS = ("grpo", "ppo", "sft")  # runners that save a policy/ the search block can evaluate


def _check_search(recipe: Recipe) -> None:
    """The ``search:`` block: its values, and held-out problems to search on."""
    sc = recipe.search
    if sc is None:
        return
    if recipe.algorithm.name not in SEARCH_ALGORITHMS:
        raise RecipeError(f"search: runs after {', '.join(SEARCH_ALGORITHMS)} recipes only, not "
                          f"{recipe.algorithm.name!r} (remove the search: block)")
    try:
        search_settings(sc)
    except ValueError as e:
        raise RecipeError(f"search: {e}") from None
    for key, low in (("num_problems", 1), ("batch_size", 1), ("show", 0)):
        if getattr(sc, key) < low:
            raise RecipeError(f"search.{key}: must be >= {low}, got {getattr(sc, key)}")
    if not sc.seeds:
        raise RecipeError("search.seeds: need at least one seed")
    if sc.backend not in SEARCH_BACKENDS:
        raise RecipeError(f"search.backend: unknown value {sc.backend!r} (allowed: {', '.join(SEARCH_BACKENDS)})")
    if sc.temperature < 0 or not 0 < sc.top_p <= 1:
        raise RecipeError(f"search: need temperature >= 0 and 0 < top_p <= 1, got {sc.temperature:g}, {sc.top_p:g}")
    if not (recipe.data.eval or recipe.data.train.startswith("builtin:")):
        raise RecipeError("search: needs held-out problems: set data.eval (or train on builtin: data)")
    splitter = recipe.reward.args.get("splitter")
    if isinstance(splitter, dict) and splitter.get("mode") == "regex" and set(sc.methods) - {"bon"}:
        raise RecipeError("search: beam and dvts stop generating at a literal step separator; reward.args.splitter "
                          "splits by a regex (use mode double_newline, newline or separator, or methods: [bon])")


def _check_peft(recipe: Recipe) -> None:
    """The ``peft:`` block: its values, and the recipe parts that cannot train a LoRA policy."""
    pc = recipe.peft
    if pc is None:
        return
    if not get_algorithm(recipe.algorithm.name).supports_peft:
        peft_names = [n for n in algorithm_names() if get_algorithm(n).supports_peft]
        names = ", ".join(peft_names[:-1]) + f" and {peft_names[-1]}" if len(peft_names) > 1 else peft_names[0]
        raise RecipeError(f"peft: LoRA is supported for algorithm.name {names} only, "
                          f"not {recipe.algorithm.name!r} (remove the peft: block)")
    if pc.r < 1:
        raise RecipeError(f"peft.r: the LoRA rank must be >= 1, got {pc.r}")
    if pc.lora_alpha <= 0:
        raise RecipeError(f"peft.lora_alpha: must be > 0, got {pc.lora_alpha:g}")
    if not 0.0 <= pc.lora_dropout < 1.0:
        raise RecipeError(f"peft.lora_dropout: must be in [0, 1), got {pc.lora_dropout:g}")
    tm = pc.target_modules
    if not tm or (isinstance(tm, list) and not all(isinstance(m, str) and m.strip() for m in tm)) \
            or (isinstance(tm, str) and not tm.strip()):
        raise RecipeError(f"peft.target_modules: expected 'all-linear', a regular expression or a non-empty list "
                          f"of module names (e.g. [q_proj, v_proj]), got {tm!r}")
    if isinstance(tm, str) and tm != "all-linear":
        try:
            re.compile(tm)
        except re.error as e:
            raise RecipeError(f"peft.target_modules: {tm!r} is neither 'all-linear' nor a valid regular "
                              f"expression ({e})") from None
    if importlib.util.find_spec("peft") is None:
        raise RecipeError("peft: the package peft is not installed: pip install 'peft>=0.17'")
    opt = recipe.optimizer
    if opt.name != "adamw" and (opt.name != "ondare" or _optimizer_alpha(opt.args) != 0.0):
        raise RecipeError(f"peft: optimizer {opt.name} cannot train a LoRA policy (online merging needs "
                          "theta_SFT - theta_base, which adapter weights do not have); use optimizer: "
                          "{name: ondare, args: {alpha: 0}} (update dropout only) or adamw")


def _check_reward_update(recipe: Recipe, algorithm: Algorithm) -> None:
    update = recipe.algorithm.reward_update
    _choice(update, REWARD_UPDATES, "algorithm.reward_update")
    if update == "none":
        return
    if not algorithm.online_reward:
        online = [n for n in algorithm_names() if get_algorithm(n).online_reward]
        raise RecipeError(f"algorithm.reward_update: {algorithm.name} runs no rollouts to learn from (allowed "
                          f"with {', '.join(online)})")
    if not issubclass(get_reward_class(recipe.reward.name), OnlineTrainable):
        learners = [n for n in available() if issubclass(get_reward_class(n), OnlineTrainable)]
        raise RecipeError(f"algorithm.reward_update: reward {recipe.reward.name!r} cannot learn online (it has no "
                          f"update(); rewards that can: {', '.join(learners)})")


def validate(recipe: Recipe, base_dir: Path | None = None) -> None:
    """Semantic checks that need registries or the file system (no model is loaded)."""
    _choice(recipe.algorithm.name, algorithm_names(), "algorithm.name")
    algorithm = get_algorithm(recipe.algorithm.name)
    problem = credit.credit_problem(recipe.algorithm.credit)
    if problem:
        raise RecipeError(f"algorithm.credit: {problem}")
    _choice(recipe.algorithm.outcome_reward, credit.SHAPINGS, "algorithm.outcome_reward")
    _choice(recipe.algorithm.aggregation, AGGREGATIONS, "algorithm.aggregation")
    _choice(recipe.distribution, DISTRIBUTIONS, "distribution")
    _choice(recipe.generation.backend, BACKENDS, "generation.backend")
    _choice(recipe.generation.vllm_mode, ("colocate", "server"), "generation.vllm_mode")
    if recipe.generation.backend == "vllm":
        problem = vllm_problem(recipe.generation.vllm_mode)
        if problem:
            raise RecipeError(problem)
    if recipe.num_processes < 1:
        raise RecipeError(f"num_processes: must be >= 1, got {recipe.num_processes}")
    machines = recipe.machines
    if machines.num_machines < 1:
        raise RecipeError(f"machines.num_machines: must be >= 1, got {machines.num_machines}")
    if not 0 < machines.main_process_port < 65536:
        raise RecipeError(f"machines.main_process_port: not a port number: {machines.main_process_port}")
    if machines.num_machines > 1 and (recipe.distribution == "none" or algorithm.own_workers):
        raise RecipeError(f"machines.num_machines: {machines.num_machines} machines need distribution: zero2 or "
                          f"zero3{' and an algorithm other than ' + algorithm.name if algorithm.own_workers else ''}")
    _choice(recipe.optimizer.name, OPTIMIZER_NAMES, "optimizer.name")
    try:
        check_optimizer_cfg({"name": recipe.optimizer.name, **recipe.optimizer.args})
    except ValueError as e:
        raise RecipeError(f"optimizer: {e}") from None
    _check_peft(recipe)
    _check_search(recipe)

    if algorithm.uses_reward or recipe.search is not None:  # the search scores with the reward too
        if recipe.reward.name not in available():
            raise RecipeError(f"reward.name: unknown reward {recipe.reward.name!r} "
                              f"(registered: {', '.join(available())})")
        problems = check_reward_args(recipe.reward.name, recipe.reward.args)
        if problems:
            raise RecipeError(f"reward.args: {problems[0]}")
    _check_reward_update(recipe, algorithm)

    cfg_cls = algorithm.config_cls
    allowed = {f.name for f in dataclasses.fields(cfg_cls)}
    try:
        hints = typing.get_type_hints(cfg_cls)
    except Exception:  # a config with unresolvable annotations: names are still checked
        hints = {}
    for key in list(recipe.training):
        if key in _MANAGED_TRAINING_KEYS:
            raise RecipeError(f"training.{key}: set by rlkit from the recipe (use the top-level keys instead)")
        if key not in allowed and _LORA_TRAINING_KEY.match(key):
            raise RecipeError(f"training.{key}: LoRA is the recipe's top-level peft: block, not a trainer field "
                              "(e.g. peft: {r: 16, lora_alpha: 32, target_modules: all-linear}; see docs/recipes.md)")
        if key not in allowed:
            close = sorted(k for k in allowed if key.split("_")[0] in k)[:8]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise RecipeError(f"unknown key 'training.{key}' for {cfg_cls.__name__}{hint}")
        if _is_simple(hints.get(key)):
            recipe.training[key] = coerce(recipe.training[key], hints[key], f"training.{key}")
    if algorithm.runs_stages:
        stage_recipes(recipe, base_dir=base_dir)
    elif recipe.stages:
        raise RecipeError(f"stages: only a chained run (algorithm.name: chain) has stages, not "
                          f"{recipe.algorithm.name!r}")
    if algorithm.validate is not None:
        try:
            algorithm.validate(recipe)
        except ValueError as e:
            raise RecipeError(str(e)) from None

    _check_data_source(recipe.data.train, "data.train", base_dir)
    if recipe.data.eval:
        _check_data_source(recipe.data.eval, "data.eval", base_dir)

    problem = check_model_name(recipe.model)
    if problem:
        raise RecipeError(f"model: {problem}")
    if recipe.optimizer.name != "adamw" and "base_model" in recipe.optimizer.args:
        problem = check_model_name(str(recipe.optimizer.args["base_model"]))
        if problem:
            raise RecipeError(f"optimizer.args.base_model: {problem}")
