"""PRMGRPOTrainer: TRL's GRPOTrainer with a step reward model and per-token credit.

TRL generates and computes its loss; this subclass only changes what an advantage is. Completions are scored
step by step by any registered reward model (``reward/``, through :class:`rlkit.trainers.scoring.
StepScoringMixin`); each step's score is placed on the token that ends that step in the policy's own
tokenization; ``rlkit.credit`` turns those into (B, T) advantages, which TRL's ``_compute_loss`` accepts as is.
Groups spread over ranks are gathered before normalising.

Example:
    >>> from trl import GRPOConfig
    >>> from reward.registry import build_reward
    >>> trainer = PRMGRPOTrainer(model=policy, processing_class=tok, train_dataset=ds,
    ...                          step_reward=build_reward("arithmetic"), credit="process_grpo",
    ...                          args=GRPOConfig(output_dir="out", num_generations=4, max_steps=10))
    >>> trainer.train()

Hooks a subclass may override: :meth:`score_completions` (text -> StepScores), :meth:`compute_advantages`
(step scores -> (B, T) advantages), :meth:`log_step_metrics` (monitors). A credit function can also be given by
name or import path (``credit="my_pkg.credit:last_step"``, see ``rlkit.credit.resolve_credit``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer

from rlkit import credit as credit_lib
from rlkit.optim.trainer_hook import RecipeOptimizerMixin
from rlkit.trainers.scoring import StepScoringMixin, pad_scored, verified_tensor

logger = logging.getLogger(__name__)

CreditFn = Callable[..., torch.Tensor]


class PRMGRPOTrainer(StepScoringMixin, RecipeOptimizerMixin, GRPOTrainer):
    """GRPO with dense step rewards from a process reward model.

    Args:
        step_reward: any ``reward.base.StepRewardModel`` (``build_reward(name, **args)``).
        credit: "process_grpo", "min_form", "outcome", a registered name or ``module:function`` path, or a
            callable with the signature of ``rlkit.credit.process_grpo``.
        aggregation: step scores -> response score (outcome credit, logging, PRM verdict).
        outcome_reward: "none" | "weighted" | "qwen_math": mix in the verifier's check against the dataset's
            ``answer`` column (see ``rlkit.credit``: added after aggregation / as its own advantage).
        outcome_weight: weight of the verifier reward for "weighted".
        scale_rewards: divide by the group std (True) or only centre (False).
        steps_growth_warning: warn once mean steps per response exceeds this factor of its first value.
        optimizer_cfg: the recipe's optimizer block ({"name": "ondare", ...}); None = TRL's default AdamW.
        Everything else goes to ``trl.GRPOTrainer``.
    """

    def __init__(self, *, credit: str | CreditFn = "process_grpo", scale_rewards: bool = True,
                 **kwargs: Any) -> None:
        credit_lib.resolve_credit(credit)  # unknown names fail here, before any model loads
        self.credit = credit
        self.scale_step_rewards = scale_rewards
        super().__init__(**kwargs)

    def compute_advantages(self, step_rewards: torch.Tensor, step_mask: torch.Tensor, step_ends: torch.Tensor,
                           token_mask: torch.Tensor, verified: torch.Tensor | None, group_size: int) -> torch.Tensor:
        """Hook: (B, T) advantages for the whole (gathered) batch from padded step tensors
        (``rlkit.credit.grpo_advantages``: the credit mode, with the verifier mixed in as the recipe says)."""
        return credit_lib.grpo_advantages(
            step_rewards, step_mask, step_ends, token_mask, group_size, credit=self.credit,
            aggregation=self.aggregation, verified=verified if self.outcome_reward != "none" else None,
            shaping=self.outcome_reward, weight=self.outcome_weight, probabilistic=self.probabilistic_scores,
            scale=self.scale_step_rewards)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        local = self.take_scored()
        items = gather_object(local)
        rewards, mask, ends = pad_scored(items)
        T = max([it.n_tokens for it in items] + [1])
        lengths = torch.tensor([it.n_tokens for it in items])
        token_mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
        adv = self.compute_advantages(rewards, mask, ends, token_mask, verified_tensor(items), group)
        # keep this rank's rows, padded/cut to the local completion width
        start = self.accelerator.process_index * len(local)
        adv = adv[start:start + len(local)]
        T_local = out["completion_ids"].shape[1]
        if adv.shape[1] < T_local:
            adv = torch.nn.functional.pad(adv, (0, T_local - adv.shape[1]))
        out["advantages"] = adv[:, :T_local].to(out["completion_ids"].device)
        self.log_step_metrics(items, mode)
        return out
