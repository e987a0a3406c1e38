"""Recipe -> the pieces every trainer needs: datasets, the step reward model, shared trainer-config fields."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlkit.config import Recipe


def trainer_args(recipe: Recipe, run_dir: Path, defaults: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for a TRL/transformers config: rlkit's defaults < the recipe's ``training:`` block <
    the fields rlkit manages (output folder, DeepSpeed, CPU, seed, vLLM)."""
    from rlkit.launch import cuda_available

    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    kw = {"report_to": ["tensorboard"], "logging_steps": 1, "save_strategy": "no", "bf16": False,
          "gradient_checkpointing": False}
    kw.update(defaults)
    kw.update(recipe.training)
    cuda = cuda_available()
    kw.update(output_dir=str(run_dir / "checkpoints"), seed=recipe.seed, use_cpu=not cuda)
    if not cuda:
        kw["bf16"] = False
    if recipe.distribution != "none":
        kw["deepspeed"] = str(run_dir / "deepspeed.json")
    return kw


def build_step_reward(recipe: Recipe):
    """The recipe's reward model, as a plain replicated module on this rank's device.

    Call it BEFORE creating a DeepSpeed-enabled trainer config: transformers loads every model created after a
    ZeRO-3 ``TrainingArguments`` inside ``deepspeed.zero.Init``, which would shard the reward model into
    (0,)-shaped placeholders that no engine gathers. On multi-GPU runs each rank's reward model goes to its own
    GPU (``cuda:LOCAL_RANK``) unless the recipe sets ``device``.
    """
    import inspect

    from reward.registry import build_reward, get_reward_class
    from rlkit.launch import cuda_available

    args = dict(recipe.reward.args)
    params = inspect.signature(get_reward_class(recipe.reward.name).__init__).parameters
    if "device" in params and "device" not in args and cuda_available():
        args["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return build_reward(recipe.reward.name, **args)


def load_datasets(recipe: Recipe):
    """(train, eval or None) datasets of chat prompts with an ``answer`` column."""
    from rlkit.data import load_prompts

    d = recipe.data
    common = dict(prompt_field=d.prompt_field, answer_field=d.answer_field, system_prompt=d.system_prompt,
                  seed=d.seed)
    train = load_prompts(d.train, d.train_split, d.num_train, **common)
    eval_src = d.eval or (d.train if d.train.startswith("builtin:") else None)
    evald = load_prompts(eval_src, d.eval_split, d.num_eval, **common) if eval_src and d.num_eval else None
    return train, evald
