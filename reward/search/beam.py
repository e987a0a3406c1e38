"""Step-level beam search guided by a PRM.

With budget N and beam width M: sample N first steps, keep the N/M best partial solutions by their
aggregated PRM score, sample M next steps from each kept beam (N candidates again), keep the best N/M among
all of them, and so on until every kept beam has ended (see :mod:`reward.search.beams` for when a beam ends
and how partial solutions are ranked). A beam that ends keeps its slot, so the search returns N/M final
solutions per problem and samples fewer steps per round as beams finish.

Example:
    >>> outcomes = beam_search(problems, generator, build_reward("arithmetic"),
    ...                        SearchSettings(budget=16, beam_width=4))      # doctest: +SKIP
    >>> best = ranked(outcomes[0].finals)[0]; best.text, best.scores      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

from reward.base import StepRewardModel
from reward.search.beams import Beam, SearchOutcome, SearchSettings, ranked, step_search
from reward.search.generator import Generator, Problem


def keep_best(candidates: list[Beam], outcomes: list[SearchOutcome], n_beams: int) -> list[Beam]:
    """Per problem, the best ``n_beams - (finished so far)`` candidates across all its beams."""
    kept: list[Beam] = []
    for i, o in enumerate(outcomes):
        kept += ranked([c for c in candidates if c.problem == i])[: n_beams - len(o.finals)]
    return kept


def beam_search(problems: Sequence[Problem], generator: Generator, prm: StepRewardModel,
                settings: SearchSettings) -> list[SearchOutcome]:
    """N/M final solutions per problem (``SearchOutcome.finals``) and the tokens spent on each problem."""
    return step_search(problems, generator, prm, settings, keep_best)
