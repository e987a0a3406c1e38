"""Step scoring shared by the GRPO and PPO trainers: completions -> :class:`ScoredCompletion` records
(step scores, the completion token that ends each step, the verifier's verdict), and the reward-hacking
monitors logged every step.

``StepScoringMixin`` goes before TRL's GRPOTrainer in the bases; it registers its scorer as TRL's one reward
function, so TRL's rollout calls it with the prompts, completions and completion ids, and the trainer picks up
``self._pending`` (this rank's records) afterwards::

    class MyTrainer(StepScoringMixin, GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            scored = self.take_scored()                      # list[ScoredCompletion] of this rank
            ...
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from reward.base import EngineTrainable, OnlineTrainable, StepRewardModel, StepScores, aggregate
from reward.models.verifier import is_correct
from reward.steps import locate_text, step_token_spans
from rlkit import credit as credit_lib
from rlkit.checkpoints import ONLINE_REWARD_DIR, CheckpointError
from rlkit.distributed import average_gradients, online_reward_engine, single_rank_hf
from rlkit.recipe import REWARD_UPDATES

logger = logging.getLogger(__name__)



@dataclass
class ScoredCompletion:
    """One scored completion, as scoring hands it to credit, PPO rewards and the monitors.

    ``scores[s]`` is step s's score and ``ends[s]`` the index of the completion token that ends it (the last
    step ends on the last token); a completion without steps is one pseudo-step scored 0.0. ``verified`` is the
    verifier's 0/1 against the reference answer (None without one). ``unplaced`` counts steps whose text could
    not be found in the decoded tokens (put on the last token).
    """

    scores: list[float]
    ends: list[int]
    verified: float | None
    n_tokens: int
    n_steps: int
    unplaced: int = 0


def pad_scored(items: Sequence[ScoredCompletion]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded (step_rewards, step_mask, step_ends) tensors of ``items`` (``rlkit.credit`` shapes)."""
    return credit_lib.pad_steps([it.scores for it in items], [it.ends for it in items])


def verified_tensor(items: Sequence[ScoredCompletion]) -> torch.Tensor | None:
    """(B,) verifier results, or None unless every item has one."""
    if not items or any(it.verified is None for it in items):
        return None
    return torch.tensor([it.verified for it in items], dtype=torch.float32)


def prompt_text(x: Any) -> str:
    """Plain text of a prompt/completion in TRL's standard or conversational format."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        if x[-1].get("role") == "assistant":
            return str(x[-1]["content"])
        users = [m for m in x if m.get("role") == "user"]
        return str((users or x)[-1]["content"])
    return str(x)


class StepScoringMixin:
    """Scores completions step by step with ``step_reward`` and logs the monitors (see the module docstring).

    Args (keyword, taken before the Trainer's own):
        step_reward: any ``reward.base.StepRewardModel``.
        aggregation: step scores -> response score (outcome credit, logging, PRM verdict).
        outcome_reward / outcome_weight: how the verifier is mixed in (``rlkit.credit``).
        steps_growth_warning: warn once mean steps per response exceeds this factor of its first value.
        optimizer_cfg: the recipe's optimizer block (``rlkit.optim.RecipeOptimizerMixin``).
        reward_update: "none" | "before_scoring" | "after_scoring": a ``reward.base.OnlineTrainable`` reward
            (e.g. ``implicit-prm``) takes one step per training rollout on that rollout's verifier labels,
            before or after it scores the rollout. Under DeepSpeed an ``EngineTrainable`` reward (implicit-prm)
            trains through a DeepSpeed engine of its own with the policy's ZeRO stage (optimizer state and
            gradients sharded; under ZeRO-3 its weights too), built at the first training rollout; any other
            online reward stays a replica on every rank, its gradients averaged. Its trainable model is saved
            as ``online_reward/`` in every checkpoint (with its optimizer) and in ``policy/``, and a resumed
            run restores it. Logged as ``online_reward/loss|accuracy|reward_mean``.
    """

    def __init__(self, *, step_reward: StepRewardModel, aggregation: str = "min", outcome_reward: str = "none",
                 outcome_weight: float = 1.0, steps_growth_warning: float = 2.0,
                 optimizer_cfg: dict | None = None, reward_update: str = "none", **kwargs: Any) -> None:
        if reward_update not in REWARD_UPDATES:
            raise ValueError(f"reward_update: unknown value {reward_update!r} (allowed: {', '.join(REWARD_UPDATES)})")
        if reward_update != "none" and not isinstance(step_reward, OnlineTrainable):
            raise ValueError(f"reward_update: {type(step_reward).__name__} cannot learn online (it has no update())")
        self.reward_update = reward_update
        self.step_reward = step_reward
        self.aggregation = aggregation
        self.outcome_reward = outcome_reward
        self.outcome_weight = outcome_weight
        self.steps_growth_warning = steps_growth_warning
        self.rlkit_optimizer_cfg = optimizer_cfg
        self._reward_engine: Any = None
        self._pending: list[ScoredCompletion] | None = None
        self._first_steps_per_response: float | None = None
        self._warned_growth = False
        self._warned_unplaced = False
        kwargs.pop("reward_funcs", None)
        super().__init__(reward_funcs=[self._reward_callable], **kwargs)

    @property
    def probabilistic_scores(self) -> bool:
        """Whether the step reward's scores are probabilities (qwen_math shaping takes their logit)."""
        return bool(getattr(self.step_reward, "probabilistic", True))

    def take_scored(self) -> list[ScoredCompletion]:
        """This rank's records of the rollout just scored (and forget them)."""
        items, self._pending = self._pending or [], None
        return items

    # ------------------------------------------------------------------ scoring (runs inside TRL's reward step)
    def score_completions(self, questions: list[str], completions: list[str],
                          references: list[str | None] | None) -> list[StepScores]:
        """Hook: score each completion's steps. Default: the step reward model."""
        return self.step_reward.score(questions, completions, references)

    def _reward_callable(self, prompts: list, completions: list, completion_ids: list[list[int]],
                         answer: list[str] | None = None, **_: Any) -> list[float]:
        questions = [prompt_text(p) for p in prompts]
        texts = [prompt_text(c) for c in completions]
        refs = list(answer) if answer is not None else [None] * len(texts)
        # the verifier runs whenever a reference exists: outcome shaping, the accuracy monitor, online labels
        verified = [None if ref is None else float(is_correct(text, ref)) for text, ref in zip(texts, refs)]
        learn = self.reward_update != "none" and self.model.training
        if learn:
            self.shard_online_reward()
        if learn and self.reward_update == "before_scoring":
            self.update_reward(questions, texts, verified)
        scored = self.score_completions(questions, texts, None if answer is None else refs)
        if learn and self.reward_update == "after_scoring":
            self.update_reward(questions, texts, verified)
        items = [self._place(text, list(ids), sc, v)
                 for text, ids, sc, v in zip(texts, completion_ids, scored, verified)]
        if any(it.unplaced for it in items) and not self._warned_unplaced:
            self._warned_unplaced = True
            logger.warning("%d of %d scored steps could not be placed on the completion's tokens (the scored text "
                           "does not occur in the decoded completion); they are put on the last token, which "
                           "turns their credit into outcome credit. Counted in prm/unplaced_steps.",
                           sum(it.unplaced for it in items), sum(it.n_steps for it in items))
        self._pending = items
        return [aggregate(it.scores, self.aggregation) for it in items]

    def shard_online_reward(self) -> None:
        """Under DeepSpeed, hand an ``EngineTrainable`` online reward to a DeepSpeed engine of its own with the
        policy's ZeRO stage (once; every rank calls it at the same point: the first training rollout, or the
        resume before it). Nothing happens without DeepSpeed or for a reward that cannot be sharded."""
        if (self._reward_engine is not None or self.reward_update == "none" or not self.is_deepspeed_enabled
                or not isinstance(self.step_reward, EngineTrainable)):
            return
        rm = self.step_reward
        self._reward_engine = online_reward_engine(rm.trainable_module(), rm.trainable_optimizer(),
                                                   self.args.hf_deepspeed_config.config, bf16_auto=self.args.bf16)
        rm.attach_engine(self._reward_engine)

    def reward_for_one_rank(self, model_dir: str | Path) -> StepRewardModel:
        """The step reward for an evaluation that runs on one rank alone: the reward itself, or, when it is
        sharded under ZeRO-3, a copy loaded from ``model_dir/online_reward`` (the saved policy's folder)."""
        engine = self._reward_engine
        if engine is None or not engine.zero_optimization_partition_weights():
            return self.step_reward
        with single_rank_hf():
            return self.step_reward.one_rank_copy(Path(model_dir) / ONLINE_REWARD_DIR)

    def update_reward(self, questions: list[str], completions: list[str], verified: list[float | None]) -> None:
        """Hook: one online step of the reward on this rank's rollout, labelled by the verifier (every rank
        calls it once per rollout; the reward's engine, or :func:`rlkit.distributed.average_gradients` for a
        replica, keeps the ranks' copies equal)."""
        if any(v is None for v in verified):
            raise ValueError("reward_update needs the verifier's labels: the training data has no reference "
                             "answers (data.answer_field)")
        stats = self.step_reward.update({"prompts": questions, "responses": completions, "labels": verified},
                                        reduce_gradients=average_gradients)
        for key, value in stats.items():
            self._metrics["train"][f"online_reward/{key}"].append(value)

    # ------------------------------------------------------------------ the online reward's state
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The policy as the Trainer saves it, plus an online-trained reward's model in ``online_reward/``
        (with its optimizer state inside checkpoints)."""
        super().save_model(output_dir, _internal_call)
        if self.reward_update != "none":  # every rank: rank 0 writes the folder, a sharded reward's ranks their shards
            folder = Path(output_dir or self.args.output_dir) / ONLINE_REWARD_DIR
            self.step_reward.save_online(folder, with_optimizer=_internal_call)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.reward_update != "none":
            folder = Path(checkpoint) / ONLINE_REWARD_DIR
            if not folder.is_dir():
                raise CheckpointError(f"{folder}: missing (the run's reward learns online, reward_update: "
                                      f"{self.reward_update}, but this checkpoint holds no reward state)")
            self.shard_online_reward()
            with single_rank_hf():  # a plain replica: no ZeRO-3 partitioning while its weights load
                self.step_reward.load_online(folder)

    def _place(self, text: str, ids: list[int], sc: StepScores, verified: float | None) -> ScoredCompletion:
        """Each step's score on the token that ends it, aligned against the decoded ids: TRL may have parsed
        the response (reasoning / tool calls moved out of the content), so ``text`` can be a part of them."""
        n_tok = max(len(ids), 1)
        unplaced = 0
        if len(sc.steps):
            char_ends = locate_text(self.processing_class, ids, text)
            spans = step_token_spans(sc.steps, char_ends) if char_ends is not None else [None] * len(sc.steps)
            unplaced = sum(s is None for s in spans)
            ends = [n_tok - 1 if s is None else s[1] for s in spans]
            ends[-1] = n_tok - 1  # the last step ends with the completion (EOS included)
            scores = list(sc.scores)
        else:  # an empty completion: one pseudo-step scored 0 on its last token
            ends, scores = [n_tok - 1], [0.0]
        return ScoredCompletion(scores, ends, verified, len(ids), len(sc.steps), unplaced)

    # ------------------------------------------------------------------ monitors
    def log_step_metrics(self, items: Sequence[ScoredCompletion], mode: str) -> None:
        """Hook: reward-hacking monitors, logged through the Trainer's reporting every step."""
        m = self._metrics[mode]
        steps = [it.n_steps for it in items]
        all_scores = [s for it in items for s in it.scores]
        mean_steps = sum(steps) / max(len(steps), 1)
        m["prm/steps_per_response"].append(mean_steps)
        m["prm/step_score_mean"].append(sum(all_scores) / max(len(all_scores), 1))
        m["prm/step_score_min"].append(min(all_scores) if all_scores else 0.0)
        min_last = [it.scores.index(min(it.scores)) == len(it.scores) - 1 for it in items if len(it.scores) > 1]
        m["prm/min_on_final_step"].append(sum(min_last) / max(len(min_last), 1))
        m["prm/unplaced_steps"].append(float(sum(it.unplaced for it in items)))
        m["prm/response_tokens"].append(sum(it.n_tokens for it in items) / max(len(items), 1))
        ver = [it for it in items if it.verified is not None]
        if ver:
            m["outcome/accuracy"].append(sum(it.verified for it in ver) / len(ver))
            # a probability says "correct" from 0.5 on; a raw score (e.g. a log-ratio) from 0 on
            threshold = 0.5 if self.probabilistic_scores else 0.0
            agree = [(aggregate(it.scores, self.aggregation) >= threshold) == (it.verified >= 0.5) for it in ver]
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
