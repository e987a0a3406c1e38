"""Search methods side by side: run each method at each budget (and seed) and grade what it chose.

Grading reuses ``reward.evaluation.bon`` on each problem's final solutions (for beam search and DVTS the N
best of the solutions that ended, for Best-of-N its N samples), with the verifier's answer extraction and
equivalence:

* ``accuracy``: the final solution with the highest aggregated score (``settings.aggregation``) is correct;
* ``majority`` / ``weighted_majority``: the most frequent answer / the answer with the largest sum of
  aggregated scores is correct; ``pass``: any final solution is correct; ``bon``: accuracy of the top
  solution under each of min/last/product/mean.

Compute per problem: ``tokens`` generated (every sampled continuation, kept or not), ``samples`` and wall
``seconds`` (the method's time on all problems, which share generator and PRM batches, divided by their
number).

Example:
    >>> rows = compare(problems, generator, prm, ["beam", "bon"], [4, 16], SearchSettings())  # doctest: +SKIP
    >>> rows["rows"][0]["method"], rows["rows"][0]["budget"], rows["rows"][0]["accuracy"]     # doctest: +SKIP
    ('beam', 4, 0.25)
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Sequence

from reward.base import AGGREGATIONS, StepRewardModel
from reward.evaluation.bon import best_of_n
from reward.models.verifier import extract_answer, is_correct
from reward.search.beam import beam_search
from reward.search.beams import SearchOutcome, SearchSettings
from reward.search.best_of_n import best_of_n_search
from reward.search.dvts import dvts
from reward.search.generator import Generator, Problem

METHODS: dict[str, Callable[..., list[SearchOutcome]]] = {"beam": beam_search, "dvts": dvts, "bon": best_of_n_search}
#: what compare() reports per seed (means over seeds at the row's top level)
METRICS = ("accuracy", "majority", "weighted_majority", "pass", "tokens_per_problem", "samples_per_problem",
           "seconds_per_problem")


def candidates(outcome: SearchOutcome, problem: Problem) -> list[dict[str, Any]]:
    """The final solutions as ``reward.evaluation.bon`` candidates (``correct``, ``answer``, ``scores``)."""
    ref = problem.reference
    return [{"correct": ref is not None and is_correct(b.text, ref), "answer": extract_answer(b.text),
             "scores": b.scores} for b in outcome.finals]


def evaluate(outcomes: Sequence[SearchOutcome], problems: Sequence[Problem], aggregation: str = "min",
             seconds: float = 0.0) -> dict[str, Any]:
    """Accuracy under each selection rule and compute per problem (see the module docstring)."""
    res = best_of_n([candidates(o, p) for o, p in zip(outcomes, problems)], aggregations=AGGREGATIONS)
    k = len(problems)
    return {"accuracy": res["bon"][aggregation], "majority": res["maj@n"],
            "weighted_majority": res["wmaj@n"][aggregation], "pass": res["pass@n"], "bon": res["bon"],
            "tokens_per_problem": sum(o.tokens for o in outcomes) / k,
            "samples_per_problem": sum(o.samples for o in outcomes) / k, "seconds_per_problem": seconds / k}


def check_methods(methods: Sequence[str], budgets: Sequence[int], settings: SearchSettings) -> None:
    """ValueError for an unknown method, a budget < 1, or a budget beam search/DVTS cannot split."""
    if not methods or not budgets:
        raise ValueError("need at least one method and one budget")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown search method {m!r} (allowed: {', '.join(METHODS)})")
    for b in budgets:
        s = dataclasses.replace(settings, budget=b)  # validates b >= 1
        if any(m in ("beam", "dvts") for m in methods):
            s.n_beams()


def compare(problems: Sequence[Problem], generator: Generator, prm: StepRewardModel, methods: Sequence[str],
            budgets: Sequence[int], settings: SearchSettings, seeds: Sequence[int] = (0,),
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every method x budget x seed. Returns ``{"rows": [...], "outcomes": {(method, budget, seed): [...]}}``;
    a row holds the means over seeds of :data:`METRICS`, ``accuracy_std`` (sample std, 0 for one seed) and
    the per-seed values. A generator with a ``reseed(seed)`` method is reseeded before every run, so each
    run's samples do not depend on the runs before it."""
    check_methods(methods, budgets, settings)
    rows, kept = [], {}
    for method in methods:
        for budget in budgets:
            s = dataclasses.replace(settings, budget=budget)
            per_seed = []
            for seed in seeds:
                if callable(getattr(generator, "reseed", None)):
                    generator.reseed(seed)
                t0 = time.perf_counter()
                outcomes = METHODS[method](problems, generator, prm, s)
                m = evaluate(outcomes, problems, s.aggregation, time.perf_counter() - t0)
                per_seed.append({"seed": seed, **m})
                kept[(method, budget, seed)] = outcomes
                if progress:
                    progress(f"[search] {method} N={budget} seed {seed}: accuracy {m['accuracy']:.1%}, "
                             f"{m['tokens_per_problem']:.0f} tokens and {m['seconds_per_problem']:.1f} s per problem")
            row: dict[str, Any] = {"method": method, "budget": budget}
            for key in METRICS:
                row[key] = statistics.fmean(p[key] for p in per_seed)
            accs = [p["accuracy"] for p in per_seed]
            row["accuracy_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
            row["per_seed"] = per_seed
            rows.append(row)
    return {"rows": rows, "outcomes": kept}
