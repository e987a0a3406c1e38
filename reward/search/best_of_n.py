"""Best-of-N at inference: N whole solutions per problem, each scored by the PRM.

The N solutions of every problem are sampled in one generator call (no stop string, up to ``max_tokens``)
and scored in batches; which one is chosen (top score under min/last/product/mean, plain or PRM-weighted
majority vote) is decided by :func:`reward.search.compare.evaluate` through ``reward.evaluation.bon``.

Example:
    >>> outcomes = best_of_n_search(problems, generator, prm, SearchSettings(budget=16))   # doctest: +SKIP
    >>> len(outcomes[0].finals)                                                          # doctest: +SKIP
    16
"""

from __future__ import annotations

from typing import Sequence

from reward.base import StepRewardModel
from reward.search.beams import Beam, SearchOutcome, SearchSettings, score_beams
from reward.search.generator import Generator, Problem, check_continuations


def best_of_n_search(problems: Sequence[Problem], generator: Generator, prm: StepRewardModel,
                     settings: SearchSettings) -> list[SearchOutcome]:
    """N scored solutions per problem (``Beam.subtree`` is the sample index) and the tokens spent."""
    n = settings.budget
    conts = generator.generate([p.prompt for p in problems], n, stop=None, max_new_tokens=settings.max_tokens)
    check_continuations(conts, len(problems), n)
    outcomes = []
    for i, cs in enumerate(conts):
        o = SearchOutcome(samples_per_round=[len(cs)])
        o.record(cs)
        o.finals = [Beam(problem=i, text=c.text, steps=1, tokens=c.tokens, done=c.finish, subtree=j)
                    for j, c in enumerate(cs)]
        outcomes.append(o)
    score_beams([b for o in outcomes for b in o.finals], problems, prm, settings)
    return outcomes
