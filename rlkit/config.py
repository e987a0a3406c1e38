"""Recipe schema: a YAML file -> validated dataclasses, with one-line errors naming the key path.

Everything is checked before any model loads: unknown keys, wrong types, unknown registered names (reward,
credit mode, optimizer, algorithm), trainer fields unknown to the TRL/transformers config, missing data files,
LoRA settings (``peft:``) and the combinations that cannot train a LoRA policy.

Example:
    >>> r = load_recipe("recipes/grpo_prm_quickstart.yaml", overrides=["training.max_steps=2"])
    >>> r.algorithm.name, r.training["max_steps"]
    ('grpo', 2)
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ALGORITHMS = ("grpo", "ppo", "prm", "orm", "critique", "prm_pipeline")  # each has a runner in rlkit.launch
CREDIT_MODES = ("process_grpo", "min_form", "outcome")
OPTIMIZERS = ("adamw", "ondare", "onties")
DISTRIBUTIONS = ("none", "zero2", "zero3")
BACKENDS = ("hf", "vllm")
SHAPINGS = ("none", "weighted", "qwen_math")
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class RecipeError(ValueError):
    """A recipe problem; ``str(e)`` is the one line shown to the user."""


@dataclass
class DataConfig:
    """Where prompts come from.

    ``train``/``eval``: ``builtin:arithmetic`` (generated multi-step word problems with exact answers),
    a local .jsonl/.json/.parquet file, or ``hub:<dataset id>[:<config>]``. Rows need a question and a reference
    answer (GSM8K '#### 42' style or the bare answer), named by ``prompt_field`` / ``answer_field``.
    """

    train: str = "builtin:arithmetic"
    eval: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    prompt_field: str = "question"
    answer_field: str = "answer"
    num_train: int | None = None
    num_eval: int | None = 32
    system_prompt: str | None = None
    seed: int = 0


@dataclass
class RewardConfig:
    """The step reward model: a registered name (see ``rlkit rewards``) and its constructor arguments."""

    name: str = "arithmetic"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlgorithmConfig:
    """The learning algorithm and how step scores become credit.

    ``credit``: process_grpo | min_form | outcome (see rlkit/credit.py). ``aggregation``: how step scores make a
    response score for ``outcome`` credit and for logging. ``outcome_reward``: mix in the verifier's 0/1 answer
    check: ``none``, ``weighted`` (+ outcome_weight * r_v) or ``qwen_math`` (sigmoid(0.5 r_m) + r_v - 1).
    ``steps_growth_warning``: warn when mean steps per response exceeds this factor of its first value.
    """

    name: str = "grpo"
    credit: str = "process_grpo"
    aggregation: str = "min"
    outcome_reward: str = "none"
    outcome_weight: float = 1.0
    scale_rewards: bool = True
    steps_growth_warning: float = 2.0


@dataclass
class OptimizerConfig:
    """adamw | ondare | onties; ``args`` go to the optimizer (p, alpha, base_model, ... for the merging ones)."""

    name: str = "adamw"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationConfig:
    """Rollout backend: ``hf`` (transformers generate) or ``vllm`` (``vllm_mode``: colocate or server)."""

    backend: str = "hf"
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float = 0.3


@dataclass
class PeftConfig:
    """LoRA for the policy of ``grpo``/``ppo`` recipes: the top-level ``peft:`` block (absent or null: full
    fine-tuning). Becomes ``peft.LoraConfig(task_type="CAUSAL_LM", ...)`` passed to the trainer as
    ``peft_config``: only the adapter trains, the KL reference is the adapter-disabled base model, and
    ``policy/`` is the adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    ``target_modules``: ``all-linear`` (every linear layer but the output head), a list of module names
    (``[q_proj, v_proj]``), or a regular expression matched against full module names.
    ``lora_dropout``: only takes effect with ``training.disable_dropout: false`` (TRL turns dropout off in RL).
    """

    r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"

    def to_lora_config(self):
        """The ``peft.LoraConfig`` this block describes."""
        from peft import LoraConfig

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(task_type="CAUSAL_LM", r=self.r, lora_alpha=self.lora_alpha,
                          lora_dropout=self.lora_dropout, target_modules=targets)


@dataclass
class Recipe:
    """A whole training run. See docs/recipes.md for every key."""

    name: str = "run"
    description: str = ""
    model: str = "embedded:smollm2-135m-instruct"
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    peft: PeftConfig | None = None
    distribution: str = "none"
    num_processes: int = 2
    training: dict[str, Any] = field(default_factory=dict)
    output_dir: str = "runs"
    seed: int = 42

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- parsing

class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. (YAML 1.1 reads `no`, `off`, `yes`, `on` as booleans, which turns
    `save_strategy: no` into False.)"""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own message (e.g. an unknown key inside an optional block)
            return _coerce(value, real[0], path)
        deeper = None  # a member that matched the value's shape but not its contents says more (list item...)
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except RecipeError as e:
                if deeper is None and not str(e).startswith(f"{path}:"):
                    deeper = e
                continue
        if deeper is not None:
            raise deeper
        raise RecipeError(f"{path}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, path)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise RecipeError(f"{path}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RecipeError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-7 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise RecipeError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise RecipeError(f"{path}: expected a string, got {value!r}")
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise RecipeError(f"unknown key '{path}' (allowed: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise RecipeError(f"--set {dotted}: '{p}' is not a mapping")
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML: numbers, booleans, lists...)."""
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY.PATH=VALUE")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_path(data, key.strip(), value)
    return data


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


def recipe_from_dict(data: dict[str, Any], check: bool = True, base_dir: Path | None = None) -> Recipe:
    recipe = _from_dict(Recipe, data)
    if check:
        validate(recipe, base_dir)
    return recipe


# ----------------------------------------------------------------------------------------------- semantic checks

def _choice(value: str, allowed: tuple[str, ...], path: str) -> None:
    if value not in allowed:
        raise RecipeError(f"{path}: unknown value {value!r} (allowed: {', '.join(allowed)})")


def trainer_config_class(algorithm: str) -> type:
    """The TRL/transformers config dataclass whose fields a recipe's ``training:`` block may set."""
    if algorithm == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    if algorithm == "ppo":
        from rlkit.trainers.ppo import PRMPPOConfig

        return PRMPPOConfig
    if algorithm == "orm":
        from rlkit.trainers.orm import ListwiseRMConfig

        return ListwiseRMConfig
    if algorithm == "prm":
        from rlkit.trainers.prm import PRMTrainConfig

        return PRMTrainConfig
    if algorithm == "critique":
        from rlkit.trainers.critique import CritiqueVerifierConfig

        return CritiqueVerifierConfig
    if algorithm == "prm_pipeline":
        from rlkit.trainers.prm_pipeline import PRMPipelineConfig

        return PRMPipelineConfig
    from transformers import TrainingArguments

    return TrainingArguments


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
    from rlkit.data import BUILTIN_DATASETS

    if src.startswith("builtin:"):
        _choice(src.split(":", 1)[1], tuple(BUILTIN_DATASETS), path)
    elif src.startswith("hub:"):
        if len(src) <= 4:
            raise RecipeError(f"{path}: 'hub:' needs a dataset id, e.g. hub:openai/gsm8k:main")
    else:
        p = Path(src)
        if not p.is_file() and not (base_dir and (base_dir / src).is_file()):
            raise RecipeError(f"{path}: data file not found: {src}")


PEFT_ALGORITHMS = ("grpo", "ppo")
# training: keys people write for LoRA (TRL's script arguments, other toolkits); pointed at the peft: block
_LORA_TRAINING_KEY = re.compile(r"^(use_peft|use_lora|peft.*|lora.*)$")


def _optimizer_alpha(args: dict[str, Any]) -> float | None:
    try:
        return float(args.get("alpha", 1e-7))
    except (TypeError, ValueError):
        return None  # build_optimizer reports it


def _check_peft(recipe: Recipe) -> None:
    """The ``peft:`` block: its values, and the recipe parts that cannot train a LoRA policy."""
    pc = recipe.peft
    if pc is None:
        return
    if recipe.algorithm.name not in PEFT_ALGORITHMS:
        raise RecipeError(f"peft: LoRA is supported for algorithm.name {' and '.join(PEFT_ALGORITHMS)} only, "
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
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise RecipeError("peft: the package peft is not installed: pip install 'peft>=0.17'")
    opt = recipe.optimizer
    if opt.name != "adamw" and (opt.name != "ondare" or _optimizer_alpha(opt.args) != 0.0):
        raise RecipeError(f"peft: optimizer {opt.name} cannot train a LoRA policy (online merging needs "
                          "theta_SFT - theta_base, which adapter weights do not have); use optimizer: "
                          "{name: ondare, args: {alpha: 0}} (update dropout only) or adamw")


def validate(recipe: Recipe, base_dir: Path | None = None) -> None:
    """Semantic checks that need registries or the file system (no model is loaded)."""
    _choice(recipe.algorithm.name, ALGORITHMS, "algorithm.name")
    _choice(recipe.algorithm.credit, CREDIT_MODES, "algorithm.credit")
    _choice(recipe.algorithm.outcome_reward, SHAPINGS, "algorithm.outcome_reward")
    from reward.base import AGGREGATIONS

    _choice(recipe.algorithm.aggregation, AGGREGATIONS, "algorithm.aggregation")
    _choice(recipe.optimizer.name, OPTIMIZERS, "optimizer.name")
    _choice(recipe.distribution, DISTRIBUTIONS, "distribution")
    _choice(recipe.generation.backend, BACKENDS, "generation.backend")
    _choice(recipe.generation.vllm_mode, ("colocate", "server"), "generation.vllm_mode")
    if recipe.generation.backend == "vllm":
        from rlkit.vllm_support import vllm_problem

        problem = vllm_problem(recipe.generation.vllm_mode)
        if problem:
            raise RecipeError(problem)
    if recipe.num_processes < 1:
        raise RecipeError(f"num_processes: must be >= 1, got {recipe.num_processes}")
    _check_peft(recipe)

    from reward.registry import available, check_reward_args

    if recipe.algorithm.name in ("grpo", "ppo"):
        if recipe.reward.name not in available():
            raise RecipeError(f"reward.name: unknown reward {recipe.reward.name!r} "
                              f"(registered: {', '.join(available())})")
        problems = check_reward_args(recipe.reward.name, recipe.reward.args)
        if problems:
            raise RecipeError(f"reward.args: {problems[0]}")

    cfg_cls = trainer_config_class(recipe.algorithm.name)
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
            recipe.training[key] = _coerce(recipe.training[key], hints[key], f"training.{key}")

    if recipe.algorithm.name == "prm" and "max_length" in recipe.training:
        from rlkit.trainers.prm import check_max_length

        try:
            check_max_length(recipe.training["max_length"])
        except ValueError as e:
            raise RecipeError(str(e)) from None
    if recipe.algorithm.name == "prm_pipeline":
        from rlkit.trainers.prm_pipeline import PipelineError, pipeline_settings

        try:
            pipeline_settings(recipe.training)
        except PipelineError as e:
            raise RecipeError(str(e)) from None

    _check_data_source(recipe.data.train, "data.train", base_dir)
    if recipe.data.eval:
        _check_data_source(recipe.data.eval, "data.eval", base_dir)

    from rlkit.models import check_model_name

    problem = check_model_name(recipe.model)
    if problem:
        raise RecipeError(f"model: {problem}")
    from rlkit.optim.trainer_hook import check_optimizer_cfg

    try:
        check_optimizer_cfg({"name": recipe.optimizer.name, **recipe.optimizer.args})
    except ValueError as e:
        raise RecipeError(f"optimizer: {e}") from None
    if recipe.optimizer.name != "adamw" and "base_model" in recipe.optimizer.args:
        problem = check_model_name(str(recipe.optimizer.args["base_model"]))
        if problem:
            raise RecipeError(f"optimizer.args.base_model: {problem}")
