"""PRMGRPOTrainer: TRL's GRPOTrainer with a step reward model and per-token credit.

TRL generates and computes its loss; this subclass only changes what an advantage is. Completions are scored
step by step by any registered reward model (``reward/``); each step's score is placed on the token that ends
that step in the policy's own tokenization; ``rlkit.credit`` turns those into (B, T) advantages, which TRL's
``_compute_loss`` accepts as is. Groups spread over ranks are gathered before normalising.

Example:
    >>> from trl import GRPOConfig
    >>> from reward.registry import build_reward
    >>> trainer = PRMGRPOTrainer(model=policy, processing_class=tok, train_dataset=ds,
    ...                          step_reward=build_reward("arithmetic"), credit="process_grpo",
    ...                          args=GRPOConfig(output_dir="out", num_generations=4, max_steps=10))
    >>> trainer.train()

Hooks a subclass may override: :meth:`score_completions` (text -> StepScores), :meth:`compute_advantages`
(step scores -> (B, T) advantages), :meth:`log_step_metrics` (monitors).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import torch
from trl import GRPOTrainer

from reward.base import StepRewardModel, StepScores, aggregate
from reward.models.verifier import is_correct
from reward.steps import locate_text, step_token_spans
from rlkit import credit as credit_lib
from rlkit.optim.trainer_hook import RecipeOptimizerMixin

logger = logging.getLogger(__name__)

CreditFn = Callable[..., torch.Tensor]


def _text(x: Any) -> str:
    """Plain text of a prompt/completion in TRL's standard or conversational format."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        if x[-1].get("role") == "assistant":
            return str(x[-1]["content"])
        users = [m for m in x if m.get("role") == "user"]
        return str((users or x)[-1]["content"])
    return str(x)


class PRMGRPOTrainer(RecipeOptimizerMixin, GRPOTrainer):
    """GRPO with dense step rewards from a process reward model.

    Args:
        step_reward: any ``reward.base.StepRewardModel`` (``build_reward(name, **args)``).
        credit: "process_grpo", "min_form", "outcome", or a callable with the signature of
            ``rlkit.credit.process_grpo`` (step_rewards, step_mask, step_ends, token_mask, group_size, scale).
        aggregation: step scores -> response score (outcome credit, logging, PRM verdict).
        outcome_reward: "none" | "weighted" | "qwen_math": mix in the verifier's check against the dataset's
            ``answer`` column (see ``rlkit.credit``: added after aggregation / as its own advantage).
        outcome_weight: weight of the verifier reward for "weighted".
        scale_rewards: divide by the group std (True) or only centre (False).
        steps_growth_warning: warn once mean steps per response exceeds this factor of its first value.
        optimizer_cfg: the recipe's optimizer block ({"name": "ondare", ...}); None = TRL's default AdamW.
        Everything else goes to ``trl.GRPOTrainer``.
    """

    def __init__(self, *, step_reward: StepRewardModel, credit: str | CreditFn = "process_grpo",
                 aggregation: str = "min", outcome_reward: str = "none", outcome_weight: float = 1.0,
                 scale_rewards: bool = True, steps_growth_warning: float = 2.0,
                 optimizer_cfg: dict | None = None, **kwargs: Any) -> None:
        if isinstance(credit, str) and credit not in (*credit_lib.CREDIT_FUNCTIONS, "outcome"):
            raise ValueError(f"unknown credit mode {credit!r} (allowed: process_grpo, min_form, outcome)")
        self.step_reward = step_reward
        self.credit = credit
        self.aggregation = aggregation
        self.outcome_reward = outcome_reward
        self.outcome_weight = outcome_weight
        self.scale_step_rewards = scale_rewards
        self.steps_growth_warning = steps_growth_warning
        self.rlkit_optimizer_cfg = optimizer_cfg
        self._pending: list[dict[str, Any]] | None = None
        self._first_steps_per_response: float | None = None
        self._warned_growth = False
        self._warned_unplaced = False
        kwargs.pop("reward_funcs", None)
        super().__init__(reward_funcs=[self._reward_callable], **kwargs)

    # ------------------------------------------------------------------ scoring (runs inside TRL's reward step)
    def score_completions(self, questions: list[str], completions: list[str],
                          references: list[str | None] | None) -> list[StepScores]:
        """Hook: score each completion's steps. Default: the step reward model."""
        return self.step_reward.score(questions, completions, references)

    def _reward_callable(self, prompts: list, completions: list, completion_ids: list[list[int]],
                         answer: list[str] | None = None, **_: Any) -> list[float]:
        questions = [_text(p) for p in prompts]
        texts = [_text(c) for c in completions]
        refs = list(answer) if answer is not None else None
        scored = self.score_completions(questions, texts, refs)
        tok = self.processing_class
        items = []
        for text, ids, sc, ref in zip(texts, completion_ids, scored, refs or [None] * len(texts)):
            ids = list(ids)
            n_tok = max(len(ids), 1)
            unplaced = 0
            if len(sc.steps):
                # align against the decoded ids: TRL may have parsed the response (reasoning / tool calls moved out
                # of the content), so the scored text can be a part of what the tokens decode to
                char_ends = locate_text(tok, ids, text)
                spans = step_token_spans(sc.steps, char_ends) if char_ends is not None else [None] * len(sc.steps)
                unplaced = sum(s is None for s in spans)
                ends = [n_tok - 1 if s is None else s[1] for s in spans]
                ends[-1] = n_tok - 1  # the last step ends with the completion (EOS included)
                scores = list(sc.scores)
            else:  # an empty completion: one pseudo-step scored 0 on its last token
                ends, scores = [n_tok - 1], [0.0]
            # the verifier runs whenever a reference exists: for outcome shaping and the accuracy monitor
            verified = None if ref is None else float(is_correct(text, ref))
            items.append({"scores": scores, "ends": ends, "verified": verified, "n_tokens": len(ids),
                          "n_steps": len(sc.steps), "unplaced": unplaced})
        if any(it["unplaced"] for it in items) and not self._warned_unplaced:
            self._warned_unplaced = True
            logger.warning("%d of %d scored steps could not be placed on the completion's tokens (the scored text "
                           "does not occur in the decoded completion); they are put on the last token, which "
                           "turns their credit into outcome credit. Counted in prm/unplaced_steps.",
                           sum(it["unplaced"] for it in items), sum(it["n_steps"] for it in items))
        self._pending = items
        return [aggregate(it["scores"], self.aggregation) for it in items]

    # ------------------------------------------------------------------ advantages
    def compute_advantages(self, step_rewards: torch.Tensor, step_mask: torch.Tensor, step_ends: torch.Tensor,
                           token_mask: torch.Tensor, verified: torch.Tensor | None, group_size: int) -> torch.Tensor:
        """Hook: (B, T) advantages for the whole (gathered) batch from padded step tensors
        (``rlkit.credit.grpo_advantages``: the credit mode, with the verifier mixed in as the recipe says)."""
        return credit_lib.grpo_advantages(
            step_rewards, step_mask, step_ends, token_mask, group_size, credit=self.credit,
            aggregation=self.aggregation, verified=verified if self.outcome_reward != "none" else None,
            shaping=self.outcome_reward, weight=self.outcome_weight,
            probabilistic=getattr(self.step_reward, "probabilistic", True), scale=self.scale_step_rewards)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        from accelerate.utils import gather_object

        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        local = self._pending or []
        self._pending = None
        items = gather_object(local)
        rewards, mask, ends = credit_lib.pad_steps([it["scores"] for it in items], [it["ends"] for it in items])
        T = max([it["n_tokens"] for it in items] + [1])
        lengths = torch.tensor([it["n_tokens"] for it in items])
        token_mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
        verified = None
        if all(it["verified"] is not None for it in items):
            verified = torch.tensor([it["verified"] for it in items], dtype=torch.float32)
        adv = self.compute_advantages(rewards, mask, ends, token_mask, verified, group)
        # keep this rank's rows, padded/cut to the local completion width
        start = self.accelerator.process_index * len(local)
        adv = adv[start:start + len(local)]
        T_local = out["completion_ids"].shape[1]
        if adv.shape[1] < T_local:
            adv = torch.nn.functional.pad(adv, (0, T_local - adv.shape[1]))
        out["advantages"] = adv[:, :T_local].to(out["completion_ids"].device)
        self.log_step_metrics(items, mode)
        return out

    # ------------------------------------------------------------------ monitors
    def log_step_metrics(self, items: Sequence[dict[str, Any]], mode: str) -> None:
        """Hook: reward-hacking monitors, logged through the Trainer's reporting every step."""
        m = self._metrics[mode]
        steps = [it["n_steps"] for it in items]
        all_scores = [s for it in items for s in it["scores"]]
        mean_steps = sum(steps) / max(len(steps), 1)
        m["prm/steps_per_response"].append(mean_steps)
        m["prm/step_score_mean"].append(sum(all_scores) / max(len(all_scores), 1))
        m["prm/step_score_min"].append(min(all_scores) if all_scores else 0.0)
        min_last = [it["scores"].index(min(it["scores"])) == len(it["scores"]) - 1
                    for it in items if len(it["scores"]) > 1]
        m["prm/min_on_final_step"].append(sum(min_last) / max(len(min_last), 1))
        m["prm/unplaced_steps"].append(float(sum(it.get("unplaced", 0) for it in items)))
        m["prm/response_tokens"].append(sum(it["n_tokens"] for it in items) / max(len(items), 1))
        ver = [it for it in items if it["verified"] is not None]
        if ver:
            m["outcome/accuracy"].append(sum(it["verified"] for it in ver) / len(ver))
            agree = [(aggregate(it["scores"], self.aggregation) >= 0.5) == (it["verified"] >= 0.5) for it in ver]
            m["prm/verifier_agreement"].append(sum(agree) / len(agree))
        if mode == "train" and mean_steps > 0:
            if self._first_steps_per_response is None:
                self._first_steps_per_response = mean_steps
            elif (not self._warned_growth and
                  mean_steps > self.steps_growth_warning * self._first_steps_per_response):
                self._warned_growth = True
                logger.warning("steps per response grew from %.2f to %.2f (> %.1fx): possible reward hacking "
                               "(many short 'safe' steps); consider credit: min_form",
                               self._first_steps_per_response, mean_steps, self.steps_growth_warning)
        if not math.isfinite(m["prm/step_score_mean"][-1]):
            raise ValueError("step reward model produced non-finite scores")
