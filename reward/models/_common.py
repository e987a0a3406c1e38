"""Helpers shared by the built-in reward models (not part of the public API).

:class:`ResponseAwareReward` is the base of rewards that need the raw response text as well as its steps
(an outcome RM reads the whole response; a remote server receives it). ``score()`` hands them the original
text; ``score_split()`` (pre-split input, e.g. ProcessBench items) rebuilds it by joining the step texts with
``"\\n\\n"``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from reward.base import StepRewardModel, StepScores, check_lengths, wrap_scores
from reward.steps import Step

STEP_JOINER = "\n\n"


def is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class ResponseAwareReward(StepRewardModel):
    """A StepRewardModel whose scoring also sees each response's full text.

    Subclasses implement :meth:`score_responses`; ``score_steps`` is derived from it.
    """

    def score(self, prompts: Sequence[str], responses: Sequence[str],
              references: Sequence[str | None] | None = None) -> list[StepScores]:
        check_lengths(prompts, len(responses), references)
        steps = [self.splitter.split(r) for r in responses]
        return wrap_scores(self.name, steps, self.score_responses(prompts, list(responses), steps, references))

    def score_steps(self, prompts: Sequence[str], steps: Sequence[Sequence[Step]],
                    references: Sequence[str | None] | None = None) -> list[list[float] | StepScores]:
        responses = [STEP_JOINER.join(s.text for s in st) for st in steps]
        return self.score_responses(prompts, responses, steps, references)

    def score_responses(self, prompts: Sequence[str], responses: Sequence[str], steps: Sequence[Sequence[Step]],
                        references: Sequence[str | None] | None = None) -> list[list[float] | StepScores]:
        raise NotImplementedError
