"""Recipe -> PRMGRPOTrainer -> trained policy + report: what ``rlkit train`` runs for ``algorithm: grpo``.

Example:
    >>> from rlkit.config import load_recipe
    >>> run_grpo(load_recipe("grpo_prm_quickstart", ["training.max_steps=2"]), Path("runs/grpo"))
"""

from __future__ import annotations

from pathlib import Path

from rlkit.recipe import Recipe
from rlkit.recipe_glue import rl_trainer_kwargs, trainer_kwargs, vllm_kwargs
from rlkit.trainers.common import train_and_report
from rlkit.trainers.grpo_config import GRPO_DEFAULTS, GRPOConfig
from rlkit.trainers.grpo_trainer import PRMGRPOTrainer


def build_grpo_trainer(recipe: Recipe, run_dir: Path, trainer_cls: type | None = None) -> PRMGRPOTrainer:
    """The PRMGRPOTrainer (or ``trainer_cls``, a subclass) a recipe describes: model, data, reward, credit,
    optimizer, generation backend, LoRA (``peft:``)."""
    kw = {**trainer_kwargs(recipe, run_dir, GRPO_DEFAULTS), **vllm_kwargs(recipe)}
    alg = recipe.algorithm
    return (trainer_cls or PRMGRPOTrainer)(args=GRPOConfig(**kw), credit=alg.credit, scale_rewards=alg.scale_rewards,
                                           **rl_trainer_kwargs(recipe))


def run_grpo(recipe: Recipe, run_dir: Path, trainer_cls: type | None = None) -> None:
    """Train, save ``policy/``, evaluate before/after and write the report."""
    train_and_report(build_grpo_trainer(recipe, Path(run_dir), trainer_cls), recipe, Path(run_dir))
