"""The recipe schema: typed dataclasses for every block of a recipe YAML, and the parsing that fills them.

Parsing checks keys and types with one-line errors naming the key path; semantic checks that need the
registries or the file system live in :mod:`rlkit.config`. This module imports nothing else of rlkit, so
every layer (trainers, runners, launch) may use the schema.

Example:
    >>> r = parse_recipe({"algorithm": {"name": "ppo"}, "training": {"max_steps": 3}})
    >>> r.algorithm.name, r.training, r.reward.name
    ('ppo', {'max_steps': 3}, 'arithmetic')
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


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
    ``reward_update``: let the reward learn during the run (rewards with an ``update``, e.g. ``implicit-prm``,
    PRIME's online implicit PRM): after each rollout it takes one step on that rollout's verifier labels,
    ``before_scoring`` (the rollout is scored by the updated reward) or ``after_scoring``; ``none`` keeps it fixed.
    """

    name: str = "grpo"
    credit: str = "process_grpo"
    aggregation: str = "min"
    outcome_reward: str = "none"
    outcome_weight: float = 1.0
    scale_rewards: bool = True
    steps_growth_warning: float = 2.0
    reward_update: str = "none"


REWARD_UPDATES = ("none", "before_scoring", "after_scoring")


@dataclass
class StageConfig:
    """One stage of a chained run (``algorithm.name: chain``): a recipe (shipped name or path) and the changes
    to it, as ``--set`` would make them (dotted keys). A stage's ``model`` defaults to the previous stage's
    trained ``policy/`` (the first stage's to the chain's ``model``); in any string value ``{model}`` is the
    chain's model (the policy before the first stage) and ``{NAME.policy}`` an earlier stage's policy.

    Example (YAML)::

        stages:
          - {name: sft, recipe: sft_embedded}
          - {name: grpo, recipe: grpo_prm_quickstart, set: {optimizer.name: ondare, optimizer.args.base_model: "{model}"}}
    """

    name: str = ""
    recipe: str = ""
    set: dict[str, Any] = field(default_factory=dict)


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
        """The ``peft.LoraConfig`` this block describes (peft is optional: imported here)."""
        from peft import LoraConfig

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(task_type="CAUSAL_LM", r=self.r, lora_alpha=self.lora_alpha,
                          lora_dropout=self.lora_dropout, target_modules=targets)


@dataclass
class MachinesConfig:
    """Runs over several machines (``distribution: zero2|zero3``): one ``rlkit train RECIPE --run-dir DIR
    --machine-rank R`` per machine, each starting ``num_processes`` workers (``num_processes`` is per machine)
    through ``accelerate launch`` with DeepSpeed's standard (torchrun) multi-node launcher. ``main_process_ip``
    / ``main_process_port``: the rank-0 machine's address (also from ``--main-process-ip`` or ``MASTER_ADDR``
    / ``MASTER_PORT``). ``rlkit train RECIPE --print-launch`` prints every machine's command.
    """

    num_machines: int = 1
    main_process_ip: str | None = None
    main_process_port: int = 29500


@dataclass
class SearchConfig:
    """PRM-guided search as the evaluation of the trained policy (``grpo``/``ppo`` recipes): the top-level
    ``search:`` block (absent or null: none). After training, rank 0 runs the search of ``rlkit search`` with
    the saved ``policy/`` and the recipe's reward on ``num_problems`` held-out problems (``data.eval``, else the
    builtin data's held-out split) and writes its report to ``RUN/search/`` (results.json, accuracy.png,
    index.html, solutions.jsonl). The keys are ``rlkit search``'s flags; see docs/search.md.

    Example::

        search: {methods: [beam, bon], budgets: [4, 16], beam_width: 4, num_problems: 64, backend: vllm}
    """

    methods: list[str] = field(default_factory=lambda: ["beam", "dvts", "bon"])
    budgets: list[int] = field(default_factory=lambda: [4, 16])
    beam_width: int = 4
    aggregation: str = "min"
    num_problems: int = 64
    max_steps: int = 8
    max_step_tokens: int = 64
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 1.0
    seeds: list[int] = field(default_factory=lambda: [0])
    backend: str = "auto"
    batch_size: int = 64
    prm_batch_size: int = 64
    show: int = 3


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
    search: SearchConfig | None = None
    distribution: str = "none"
    num_processes: int = 2
    machines: MachinesConfig = field(default_factory=MachinesConfig)
    training: dict[str, Any] = field(default_factory=dict)
    stages: list[StageConfig] = field(default_factory=list)
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


def parse_recipe(data: dict[str, Any]) -> Recipe:
    """A :class:`Recipe` from a mapping (keys and types checked; raises :class:`RecipeError`)."""
    return _from_dict(Recipe, data)


def coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked/converted to the simple type ``tp`` (int, float, bool, str, Optional...), or a
    :class:`RecipeError` naming ``path``."""
    return _coerce(value, tp, path)
