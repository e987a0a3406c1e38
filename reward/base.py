"""What a step reward model returns, the interface every reward model implements, and aggregation.

Example:
    >>> s = StepScores(steps=StepSplitter().split("a\\n\\nb"), scores=[0.9, 0.2])
    >>> s.aggregate("min"), s.aggregate("last"), round(s.aggregate("product"), 2)
    (0.2, 0.2, 0.18)
    >>> s.first_error(threshold=0.5)
    1
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence, runtime_checkable

from reward.steps import Step, StepSplitter

AGGREGATIONS = ("min", "last", "product", "mean")


class RewardError(ValueError):
    """Bad input to, or bad output from, a reward model (NaN score, empty batch, dead server, ...)."""


@dataclass
class StepScores:
    """Per-step scores of one response.

    ``scores[i]`` is the model's value for ``steps[i]`` (for PRMs: P(step i is correct), in [0, 1]).
    ``labels`` optionally holds discrete verdicts (1 correct, 0 wrong, None unknown) for judges; ``meta`` holds
    anything model-specific (e.g. the raw critique, ``unparsable=True``).
    """

    steps: list[Step]
    scores: list[float]
    labels: list[int | None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.steps):
            raise RewardError(f"{len(self.scores)} scores for {len(self.steps)} steps")
        for i, v in enumerate(self.scores):
            if not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
                raise RewardError(f"step {i} has a non-finite score {v!r}")
        self.scores = [float(v) for v in self.scores]

    def __len__(self) -> int:
        return len(self.steps)

    def aggregate(self, how: str = "product") -> float:
        """Response-level score; a response with no steps scores 0."""
        return aggregate(self.scores, how)

    def first_error(self, threshold: float = 0.5) -> int:
        """Index of the earliest step scoring below ``threshold``; -1 when none does (ProcessBench convention)."""
        return first_error(self.scores, threshold)


def aggregate(scores: Sequence[float], how: str = "product") -> float:
    """min / last / product / mean of step scores; 0.0 for an empty list."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r} (allowed: {', '.join(AGGREGATIONS)})")
    if not scores:
        return 0.0
    if how == "min":
        return float(min(scores))
    if how == "last":
        return float(scores[-1])
    if how == "mean":
        return float(sum(scores) / len(scores))
    return float(math.prod(scores))


def first_error(scores: Sequence[float], threshold: float = 0.5) -> int:
    for i, v in enumerate(scores):
        if v < threshold:
            return i
    return -1


def check_lengths(prompts: Sequence[Any], n: int, references: Sequence[Any] | None, what: str = "responses") -> None:
    """One prompt (and, if given, one reference) per response, or a RewardError."""
    if len(prompts) != n:
        raise RewardError(f"{len(prompts)} prompts for {n} {what}")
    if references is not None and len(references) != n:
        raise RewardError(f"{len(references)} references for {n} {what}")


def wrap_scores(name: str, steps: Sequence[Sequence[Step]], values: Sequence[Any]) -> list[StepScores]:
    """StepScores per response from lists of floats (StepScores pass through); errors name the model and
    the response."""
    if len(values) != len(steps):
        raise RewardError(f"reward model '{name}' returned {len(values)} results for {len(steps)} responses")
    out = []
    for i, (st, v) in enumerate(zip(steps, values)):
        if isinstance(v, StepScores):
            out.append(v)
            continue
        try:
            out.append(StepScores(list(st), list(v)))
        except RewardError as e:
            raise RewardError(f"reward model '{name}' on response {i}: {e}") from None
    return out


class StepRewardModel(ABC):
    """Base class of every reward model: scores each step of each response.

    Subclasses set ``name`` (the registry key recipes use), implement :meth:`score_steps`, and are registered
    with ``@register``. Outcome-level models put their single score on the last step.

    Example:
        >>> from reward.registry import register
        >>> @register("length-penalty")
        ... class LengthPenalty(StepRewardModel):
        ...     def score_steps(self, prompts, steps, references=None):
        ...         return [[1.0 / (1 + len(s.text) / 100) for s in resp] for resp in steps]
    """

    name: ClassVar[str] = ""
    #: True for models whose score is P(step correct) in [0, 1] (thresholds and products make sense).
    probabilistic: ClassVar[bool] = True

    def __init__(self, splitter: StepSplitter | dict | None = None) -> None:
        if isinstance(splitter, dict):
            splitter = StepSplitter(**splitter)
        self.splitter = splitter or StepSplitter()

    def score(self, prompts: Sequence[str], responses: Sequence[str],
              references: Sequence[str | None] | None = None) -> list[StepScores]:
        """Split each response into steps and score every step."""
        check_lengths(prompts, len(responses), references)
        steps = [self.splitter.split(r) for r in responses]
        return self.score_split(prompts, steps, references)

    def score_split(self, prompts: Sequence[str], steps: Sequence[Sequence[Step]],
                    references: Sequence[str | None] | None = None) -> list[StepScores]:
        """Score responses that are already split (e.g. ProcessBench items with explicit steps)."""
        return wrap_scores(self.name, steps, self.score_steps(prompts, steps, references))

    @abstractmethod
    def score_steps(self, prompts: Sequence[str], steps: Sequence[Sequence[Step]],
                    references: Sequence[str | None] | None = None) -> list[list[float] | StepScores]:
        """One list of step scores (or a full StepScores) per response."""


@runtime_checkable
class OnlineTrainable(Protocol):
    """A reward model that learns during an RL run from the rollouts' verifier labels (``algorithm.
    reward_update`` in a recipe; ``implicit-prm`` is one). The trainer calls :meth:`update` once per rollout
    on every rank with that rank's rollouts; ``reduce_gradients(params)`` (given on multi-process runs)
    averages the gradients over the ranks before the step, so every rank's replica takes the same step. The
    trainable part is saved into and restored from a folder of each checkpoint.

    Example::

        rm = build_reward("implicit-prm", model="runs/sft/policy")
        assert isinstance(rm, OnlineTrainable)
        rm.update({"prompts": ["2+2?"], "responses": ["2+2=4"], "labels": [1]})  # {"loss": 0.69..., ...}
        rm.save_online("runs/x/checkpoint-4/online_reward")
    """

    def update(self, batch: dict[str, Sequence[Any]],
               reduce_gradients: Callable[[list[Any]], None] | None = None) -> dict[str, float]: ...

    def save_online(self, folder: str | Path, with_optimizer: bool = True) -> None: ...

    def load_online(self, folder: str | Path) -> None: ...


@runtime_checkable
class EngineTrainable(OnlineTrainable, Protocol):
    """An :class:`OnlineTrainable` reward a distributed trainer can shard: under DeepSpeed the trainer builds an
    engine of its own over :meth:`trainable_module` and :meth:`trainable_optimizer` with the policy's ZeRO stage
    and hands it over with :meth:`attach_engine`; from then on every rank joins each update, save and load (and,
    under ZeRO-3, each scoring call). :meth:`one_rank_copy` loads a saved copy for scoring on one rank alone.
    A reward without these methods stays a replica on every rank, its gradients averaged."""

    def trainable_module(self) -> Any: ...

    def trainable_optimizer(self) -> Any: ...

    def attach_engine(self, engine: Any) -> None: ...

    def one_rank_copy(self, folder: str | Path) -> Any: ...
