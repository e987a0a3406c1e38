"""Recipe -> PRMGRPOTrainer -> trained policy + report. What `rlkit train` runs for ``algorithm: grpo``."""

from __future__ import annotations

from pathlib import Path

from rlkit.config import Recipe
from rlkit.trainers.common import build_step_reward, load_datasets, optimizer_block, train_and_report, trainer_args

GRPO_DEFAULTS = dict(num_generations=4, per_device_train_batch_size=4, max_completion_length=128,
                     learning_rate=1e-5, max_steps=20, temperature=1.0, beta=0.0)


def build_grpo_trainer(recipe: Recipe, run_dir: Path, trainer_cls: type | None = None):
    """The PRMGRPOTrainer (or ``trainer_cls``, a subclass) a recipe describes: model, data, reward, credit,
    optimizer, generation backend, LoRA (``peft:``)."""
    from trl import GRPOConfig

    from rlkit.models import load_tokenizer, resolve_model
    from rlkit.trainers.grpo import PRMGRPOTrainer

    step_reward = build_step_reward(recipe)
    kw = trainer_args(recipe, run_dir, GRPO_DEFAULTS)
    if recipe.generation.backend == "vllm":
        from rlkit.vllm_support import prepare_vllm

        prepare_vllm(recipe.generation.vllm_mode)
        kw.update(use_vllm=True, vllm_mode=recipe.generation.vllm_mode,
                  vllm_gpu_memory_utilization=recipe.generation.vllm_gpu_memory_utilization)
    train_ds, _ = load_datasets(recipe)
    alg = recipe.algorithm
    return (trainer_cls or PRMGRPOTrainer)(
        model=resolve_model(recipe.model), processing_class=load_tokenizer(recipe.model),
        args=GRPOConfig(**kw), train_dataset=train_ds, step_reward=step_reward,
        peft_config=recipe.peft.to_lora_config() if recipe.peft is not None else None,
        credit=alg.credit, aggregation=alg.aggregation, outcome_reward=alg.outcome_reward,
        outcome_weight=alg.outcome_weight, scale_rewards=alg.scale_rewards,
        steps_growth_warning=alg.steps_growth_warning,
        optimizer_cfg=optimizer_block(recipe))


def run_grpo(recipe: Recipe, run_dir: Path, trainer_cls: type | None = None) -> None:
    train_and_report(build_grpo_trainer(recipe, run_dir, trainer_cls), recipe, run_dir)
