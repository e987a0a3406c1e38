"""Recipe -> PRMPPOTrainer -> trained policy (+ critic) + report: what ``rlkit train`` runs for ``algorithm: ppo``.

Example:
    >>> from rlkit.config import load_recipe
    >>> run_ppo(load_recipe("ppo_prm_quickstart", ["training.max_steps=2"]), Path("runs/ppo"))
"""

from __future__ import annotations

from pathlib import Path

from rlkit.models import resolve_model
from rlkit.recipe import Recipe
from rlkit.recipe_glue import rl_trainer_kwargs, trainer_kwargs, vllm_kwargs
from rlkit.trainers.common import train_and_report
from rlkit.trainers.ppo_config import PPO_DEFAULTS, PRMPPOConfig
from rlkit.trainers.ppo_trainer import PRMPPOTrainer


def build_ppo_trainer(recipe: Recipe, run_dir: Path, trainer_cls: type | None = None) -> PRMPPOTrainer:
    """The PRMPPOTrainer a recipe describes (model, data, reward, outcome shaping, optimizer, backend, LoRA).
    PPO fields (gamma, lam, vf_coef, kl_coef, critic_model, ...) go under the recipe's ``training:`` block."""
    kw = {**trainer_kwargs(recipe, run_dir, PPO_DEFAULTS), **vllm_kwargs(recipe)}
    if kw.get("critic_model"):
        kw["critic_model"] = resolve_model(str(kw["critic_model"]))
    return (trainer_cls or PRMPPOTrainer)(args=PRMPPOConfig(**kw), **rl_trainer_kwargs(recipe))


def run_ppo(recipe: Recipe, run_dir: Path, trainer_cls: type | None = None) -> None:
    """What ``rlkit train`` runs for ``algorithm: ppo``: train, save ``policy/`` (+ ``policy/critic/``), report."""
    train_and_report(build_ppo_trainer(recipe, Path(run_dir), trainer_cls), recipe, Path(run_dir))
