"""RLKitSFTTrainer: TRL's SFTTrainer with the recipe's optimizer (AdamW or OnDARE/OnTIES, also under DeepSpeed)
and the step reward the run report scores held-out answers with.

Example:
    >>> trainer = RLKitSFTTrainer(model="path/to/policy", args=SFTConfig("out", max_steps=10),
    ...                           train_dataset=sft_dataset(load_prompts("builtin:arithmetic", n=64)),
    ...                           processing_class=tok, step_reward=build_reward("arithmetic"))
    >>> trainer.train()
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from trl import SFTTrainer

from reward.base import StepRewardModel
from rlkit.data import worked_solution
from rlkit.optim.trainer_hook import RecipeOptimizerMixin
from rlkit.trainers.sft_config import SFT_EVAL_MAX_NEW_TOKENS


def sft_dataset(prompts: Dataset) -> Dataset:
    """Prompt-completion rows for SFT from rlkit prompt rows (``load_prompts``): the chat prompt as it is, the
    completion the worked solution of the reference answer (:func:`rlkit.data.worked_solution`); the question
    and reference stay as columns."""
    return prompts.map(lambda r: {"completion": [{"role": "assistant", "content": worked_solution(r["answer"])}]})


class RLKitSFTTrainer(RecipeOptimizerMixin, SFTTrainer):
    """SFT with the recipe's optimizer block (``optimizer_cfg``) and a ``step_reward`` for the report."""

    def __init__(self, *, step_reward: StepRewardModel | None = None, optimizer_cfg: dict | None = None,
                 eval_max_new_tokens: int = SFT_EVAL_MAX_NEW_TOKENS, **kwargs: Any) -> None:
        self.step_reward = step_reward
        self.rlkit_optimizer_cfg = optimizer_cfg
        self.eval_max_new_tokens = eval_max_new_tokens
        super().__init__(**kwargs)
