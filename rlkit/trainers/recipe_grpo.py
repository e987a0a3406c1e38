"""Recipe -> PRMGRPOTrainer -> trained policy + report. What `rlkit train` runs for ``algorithm: grpo``."""

from __future__ import annotations

import json
from pathlib import Path

from rlkit.config import Recipe
from rlkit.trainers.common import build_step_reward, load_datasets, trainer_args

GRPO_DEFAULTS = dict(num_generations=4, per_device_train_batch_size=4, max_completion_length=128,
                     learning_rate=1e-5, max_steps=20, temperature=1.0, beta=0.0)


def build_grpo_trainer(recipe: Recipe, run_dir: Path, trainer_cls: type | None = None):
    """The PRMGRPOTrainer (or ``trainer_cls``, a subclass) a recipe describes: model, data, reward, credit,
    optimizer, generation backend."""
    from trl import GRPOConfig

    from rlkit.models import load_tokenizer, resolve_model
    from rlkit.trainers.grpo import PRMGRPOTrainer

    step_reward = build_step_reward(recipe)  # before the (possibly ZeRO-3) config exists: see its docstring
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
        credit=alg.credit, aggregation=alg.aggregation, outcome_reward=alg.outcome_reward,
        outcome_weight=alg.outcome_weight, scale_rewards=alg.scale_rewards,
        steps_growth_warning=alg.steps_growth_warning,
        optimizer_cfg=None if recipe.optimizer.name == "adamw" and not recipe.optimizer.args
        else {"name": recipe.optimizer.name, **recipe.optimizer.args})


def run_info(trainer) -> dict:
    """What actually ran: the optimizer class DeepSpeed/accelerate step (wrappers unwrapped), world size..."""
    opt = trainer.optimizer
    while hasattr(opt, "optimizer") and opt.optimizer is not opt:
        opt = opt.optimizer
    return {"optimizer": type(opt).__name__, "world_size": trainer.accelerator.num_processes,
            "deepspeed": trainer.is_deepspeed_enabled, "trainer": type(trainer).__name__,
            "use_vllm": bool(trainer.args.use_vllm), "global_step": trainer.state.global_step}


def run_grpo(recipe: Recipe, run_dir: Path, trainer_cls: type | None = None) -> None:
    from rlkit import report
    from rlkit.models import resolve_model

    _, eval_ds = load_datasets(recipe)
    trainer = build_grpo_trainer(recipe, run_dir, trainer_cls)
    is_main = trainer.accelerator.is_main_process
    max_new = trainer.args.max_completion_length
    before = None
    if is_main and eval_ds is not None:
        # evaluation loads its own copy (a sharded ZeRO-3 model cannot generate on one rank alone)
        before = report.evaluate_policy(resolve_model(recipe.model), trainer.processing_class, eval_ds,
                                        trainer.step_reward,
                                        max_new_tokens=max_new, label="before training")
    trainer.train()
    policy_dir = run_dir / "policy"
    trainer.save_model(str(policy_dir))
    if is_main:
        trainer.processing_class.save_pretrained(str(policy_dir))
        after = None
        if eval_ds is not None:
            after = report.evaluate_policy(str(policy_dir), trainer.processing_class, eval_ds,
                                           trainer.step_reward, max_new_tokens=max_new, label="after training")
        report.write_report(run_dir, recipe, trainer.state.log_history, before, after)
        (run_dir / "metrics.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        (run_dir / "run_info.json").write_text(json.dumps(run_info(trainer), indent=1))
    trainer.accelerator.wait_for_everyone()
