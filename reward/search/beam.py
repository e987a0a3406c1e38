"""Step-level beam search guided by a PRM.

With budget N and beam width M: sample N first steps, keep the N/M best partial solutions by their
aggregated PRM score, sample M next steps from each kept beam (N candidates again), keep the best N/M open
ones among all of them, and so on until no candidate is left open (see :mod:`reward.search.beams` for when a
beam ends and how partial solutions are ranked). Every candidate that ends is a final solution (the search
returns the N best of them, at least one per problem), and it samples N steps per round while N/M or more
candidates are open, fewer when fewer are.

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


def keep_best(candidates: list[Beam], n_beams: int) -> list[Beam]:
    """Per problem, the best ``n_beams`` open candidates across all its beams."""
    by_problem: dict[int, list[Beam]] = {}
    for c in candidates:
        by_problem.setdefault(c.problem, []).append(c)
    return [b for group in by_problem.values() for b in ranked(group)[:n_beams]]


def beam_search(problems: Sequence[Problem], generator: Generator, prm: StepRewardModel,
                settings: SearchSettings) -> list[SearchOutcome]:
    """The final solutions of every problem (``SearchOutcome.finals``) and the tokens spent on each."""
    return step_search(problems, generator, prm, settings, keep_best)
