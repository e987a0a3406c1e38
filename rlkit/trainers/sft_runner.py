"""Recipe -> RLKitSFTTrainer -> ``policy/`` + report: what ``rlkit train`` runs for ``algorithm: sft``.

Any dataset with prompt/answer fields works (``data.prompt_field`` / ``data.answer_field``; the chat template
and system prompt are applied as for RL); the target is the answer's worked solution, so ``builtin:arithmetic``
and GSM8K-style answers train the format the RL stage rewards. ``peft:`` trains a LoRA adapter;
``distribution: zero2|zero3`` runs on ``num_processes`` workers. The report holds held-out greedy accuracy
before and after and the loss curve; ``policy/`` is what a later stage loads (``model: <run>/policy``).

Example:
    >>> from rlkit.config import load_recipe
    >>> run_sft(load_recipe("sft_embedded", ["training.max_steps=2"]), Path("runs/sft"))
"""

from __future__ import annotations

from pathlib import Path

from rlkit.data import DataError
from rlkit.recipe import Recipe
from rlkit.recipe_glue import (
    build_step_reward,
    load_datasets,
    optimizer_block,
    peft_config,
    policy_and_tokenizer,
    trainer_kwargs,
)
from rlkit.trainers.common import train_and_report
from rlkit.trainers.sft_config import SFT_DEFAULTS, SFTConfig
from rlkit.trainers.sft_trainer import RLKitSFTTrainer, sft_dataset


def build_sft_trainer(recipe: Recipe, run_dir: Path, trainer_cls: type | None = None) -> RLKitSFTTrainer:
    """The SFT trainer a recipe describes (policy, prompt-completion data, optimizer, LoRA, distribution)."""
    model, tok = policy_and_tokenizer(recipe)
    train_ds, _ = load_datasets(recipe)
    args = SFTConfig(**trainer_kwargs(recipe, run_dir, SFT_DEFAULTS))
    trainer = (trainer_cls or RLKitSFTTrainer)(
        model=model, args=args, train_dataset=sft_dataset(train_ds), processing_class=tok,
        peft_config=peft_config(recipe), step_reward=build_step_reward(recipe), optimizer_cfg=optimizer_block(recipe))
    if len(trainer.train_dataset) == 0:
        raise DataError(f"sft: no training example left after tokenizing {recipe.data.train} (max_length "
                        f"{args.max_length}); raise training.max_length")
    return trainer


def run_sft(recipe: Recipe, run_dir: Path, trainer_cls: type | None = None) -> None:
    """Evaluate, train, save ``policy/``, evaluate again, write the report (as the RL runners do)."""
    train_and_report(build_sft_trainer(recipe, Path(run_dir), trainer_cls), recipe, Path(run_dir))
