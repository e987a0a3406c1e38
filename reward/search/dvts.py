"""Diverse verifier tree search (DVTS): the budget split into independent subtrees, each searched greedily.

With budget N and beam width M: the N first steps sampled from the prompt are split in order into N/M
slices of M; subtree k starts from the best step of slice k. From then on each subtree samples M next steps
from its single beam and goes on with the best open one, until none of its candidates is open (a candidate
that ends is a final solution of its subtree, ``Beam.subtree``; see :mod:`reward.search.beams`). The subtrees
never compete with each other, so one strong early step cannot take over the whole budget (beam search's
failure mode). Subtrees start from different samples, but two of them can still hold the same text when the
policy samples it twice.

Example:
    >>> outcomes = dvts(problems, generator, prm, SearchSettings(budget=16, beam_width=4))   # doctest: +SKIP
    >>> sorted({b.subtree for b in outcomes[0].finals})                                      # doctest: +SKIP
    [0, 1, 2, 3]
"""

from __future__ import annotations

from typing import Sequence

from reward.base import StepRewardModel
from reward.search.beams import Beam, SearchOutcome, SearchSettings, ranked, step_search
from reward.search.generator import Generator, Problem


def keep_best_per_subtree(candidates: list[Beam], n_beams: int) -> list[Beam]:
    """The best open candidate of every (problem, subtree)."""
    groups: dict[tuple[int, int], list[Beam]] = {}
    for c in candidates:
        groups.setdefault((c.problem, c.subtree), []).append(c)
    return [ranked(g)[0] for g in groups.values()]


def dvts(problems: Sequence[Problem], generator: Generator, prm: StepRewardModel,
         settings: SearchSettings) -> list[SearchOutcome]:
    """The final solutions of every subtree of every problem and the tokens spent on each problem."""
    return step_search(problems, generator, prm, settings, keep_best_per_subtree)
