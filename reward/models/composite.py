"""``composite`` (weighted sum of rewards) and ``qwen-math-shaping`` (Qwen2.5-Math RM + verifier shaping).

Both build their parts through the registry, so any registered reward can be a component. All parts use the
composite's own splitter (a component's ``splitter`` arg is overridden), so their steps line up one to one.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from reward.base import RewardError, StepRewardModel, StepScores
from reward.models._common import ResponseAwareReward
from reward.registry import build_reward, register
from reward.steps import Step, StepSplitter


def _build_part(spec: Any, where: str, splitter: StepSplitter) -> StepRewardModel:
    if isinstance(spec, StepRewardModel):
        spec.splitter = splitter
        return spec
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{where} must be a reward model or {{name: ..., args: {{...}}}}, got {spec!r}")
    args = dict(spec.get("args") or {})
    args.pop("splitter", None)
    try:
        model = build_reward(spec["name"], **args)
    except KeyError as e:
        raise ValueError(f"{where}: {e.args[0]}") from None
    model.splitter = splitter
    return model


def _score_parts(parts: Sequence[StepRewardModel], prompts: Sequence[str], responses: Sequence[str] | None,
                 steps: Sequence[Sequence[Step]], references: Sequence[str | None] | None) -> list[list[StepScores]]:
    """Each part's StepScores: from the raw responses when given, else from the pre-split steps."""
    out = []
    for part in parts:
        got = part.score(prompts, responses, references) if responses is not None else \
            part.score_split(prompts, steps, references)
        for i, (g, st) in enumerate(zip(got, steps)):
            if len(g.scores) != len(st):
                raise RewardError(f"component '{part.name}' split response {i} into {len(g.scores)} steps, "
                                  f"expected {len(st)}")
        out.append(got)
    return out


def response_score(s: StepScores) -> float:
    """A reward's response-level value: ``meta["response_score"]`` (outcome models) or the last step's."""
    v = s.meta.get("response_score")
    if isinstance(v, (int, float)):
        return float(v)
    return s.scores[-1] if s.scores else 0.0


@register("composite")
class CompositeReward(ResponseAwareReward):
    """Weighted sum of other rewards, step by step: ``score[i] = sum_k weight_k * score_k[i]``.

    Args:
        components: list of ``{name: <registered reward>, args: {...}, weight: float}`` (weight default 1.0);
            built StepRewardModel objects are accepted too, as ``{model: obj, weight: w}`` or bare.
        splitter: the step splitting every component uses.

    ``meta["components"]`` holds each component's response-level value (``meta["response_score"]`` for outcome
    models, else its last step) keyed by name (``name#k`` when a name repeats). ``probabilistic`` is False.

    Example (recipe)::

        reward:
          name: composite
          args:
            components:
              - {name: qwen-prm, args: {model: ./runs/prm}, weight: 1.0}
              - {name: verifier, weight: 0.5}

    Example:
        >>> from reward.registry import register
        >>> @register("doc-constant")
        ... class Const(StepRewardModel):
        ...     def score_steps(self, prompts, steps, references=None):
        ...         return [[0.25] * len(s) for s in steps]
        >>> rm = CompositeReward([{"name": "doc-constant", "weight": 2.0}, {"model": Const(), "weight": -1.0}])
        >>> rm.score(["q"], ["a\\n\\nb"])[0].scores
        [0.25, 0.25]
    """

    probabilistic = False

    def __init__(self, components: Sequence[dict | StepRewardModel],
                 splitter: StepSplitter | dict | None = None) -> None:
        super().__init__(splitter)
        if not components:
            raise ValueError("composite reward needs at least one component")
        self.parts: list[StepRewardModel] = []
        self.weights: list[float] = []
        for k, c in enumerate(components):
            where = f"composite component {k}"
            if isinstance(c, dict) and "model" in c:
                part = _build_part(c["model"], where, self.splitter)
            else:
                part = _build_part(c, where, self.splitter)
            w = c.get("weight", 1.0) if isinstance(c, dict) else 1.0
            if not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"{where}: weight must be a finite number, got {w!r}")
            self.parts.append(part)
            self.weights.append(float(w))
        names = [p.name or type(p).__name__ for p in self.parts]
        self.keys = [n if names.count(n) == 1 else f"{n}#{k}" for k, n in enumerate(names)]

    def _combine(self, prompts, responses, steps, references) -> list[StepScores]:
        per_part = _score_parts(self.parts, prompts, responses, steps, references)
        out = []
        for i, st in enumerate(steps):
            vals = [sum(w * got[i].scores[j] for w, got in zip(self.weights, per_part)) for j in range(len(st))]
            meta = {"components": {k: response_score(got[i]) for k, got in zip(self.keys, per_part)}}
            out.append(StepScores(list(st), vals, meta=meta))
        return out

    def score_responses(self, prompts, responses, steps, references=None) -> list[StepScores]:
        return self._combine(prompts, responses, steps, references)

    def score_split(self, prompts, steps, references=None) -> list[StepScores]:
        return self._combine(prompts, None, steps, references)


@register("qwen-math-shaping")
class QwenMathShaping(ResponseAwareReward):
    """Qwen2.5-Math GRPO reward shaping: ``r = sigmoid(scale * r_m) + (r_v - 1)``.

    ``r_m`` is a reward model's response score (``meta["response_score"]`` for an ``orm``, else its last step),
    ``r_v`` in {0, 1} is the rule verifier's verdict (last step of ``verifier``, which needs ``references``).
    Any correct response (r in (0, 1)) outranks any wrong one (r in (-1, 0)); the RM orders responses within
    each class.

    Where the value goes: the last step holds ``r``; earlier steps get the same value (so ``min``/``last``/
    ``mean`` aggregation give ``r``), ``meta = {"outcome": True, "response_score": r, "r_m": ..., "r_v": ...}``.
    An empty response (no steps) has ``r`` in meta only.

    Args:
        reward_model: ``{name: ..., args: {...}}`` of the RM giving ``r_m`` (typically ``orm``), or a built one.
        verifier: ``{name: ..., args: {...}}`` of the 0/1 checker (default ``{name: verifier}``), or a built one.
        scale: the factor inside the sigmoid (0.5 in Qwen2.5-Math).
        splitter: step splitting shared by both parts.

    Example (recipe)::

        reward:
          name: qwen-math-shaping
          args: {reward_model: {name: orm, args: {model: Qwen/Qwen2.5-Math-RM-72B, trust_remote_code: true}}}
    """

    probabilistic = False

    def __init__(self, reward_model: dict | StepRewardModel, verifier: dict | StepRewardModel | None = None,
                 scale: float = 0.5, splitter: StepSplitter | dict | None = None) -> None:
        super().__init__(splitter)
        self.rm = _build_part(reward_model, "qwen-math-shaping reward_model", self.splitter)
        self.verifier = _build_part(verifier or {"name": "verifier"}, "qwen-math-shaping verifier", self.splitter)
        self.scale = float(scale)

    def _shape(self, prompts, responses, steps, references) -> list[StepScores]:
        if references is None:
            raise RewardError("reward 'qwen-math-shaping' needs references (the verifier checks final answers)")
        rm, ver = _score_parts([self.rm, self.verifier], prompts, responses, steps, references)
        out = []
        for i, st in enumerate(steps):
            r_m = response_score(rm[i])
            r_v = response_score(ver[i])
            if r_v not in (0.0, 1.0):
                raise RewardError(f"qwen-math-shaping: verifier gave {r_v!r} for response {i}, expected 0 or 1")
            r = 1.0 / (1.0 + math.exp(-self.scale * r_m)) if self.scale * r_m >= 0 else \
                math.exp(self.scale * r_m) / (1.0 + math.exp(self.scale * r_m))
            r += r_v - 1.0
            meta = {"outcome": True, "response_score": r, "r_m": r_m, "r_v": r_v}
            out.append(StepScores(list(st), [r] * len(st), meta=meta))
        return out

    def score_responses(self, prompts, responses, steps, references=None) -> list[StepScores]:
        return self._shape(prompts, responses, steps, references)

    def score_split(self, prompts, steps, references=None) -> list[StepScores]:
        return self._shape(prompts, None, steps, references)
