"""Best-of-N evaluation: pick one of N responses per problem by an aggregated PRM score.

Per problem: N candidates, each with ``correct`` (bool), ``answer`` (its final answer, for majority voting)
and ``scores`` (the PRM's step scores). Reported:

* ``bon@N[<agg>]`` for min / last / product / mean: share of problems whose top-scored response is correct
  (ties go to the earliest response, so results are deterministic);
* ``maj@N``: share whose most frequent final answer is right (answers grouped by mathematical equivalence;
  ties go to the answer seen first; responses without an answer do not vote);
* ``wmaj@N[<agg>]``: weighted majority, the same vote with each response weighted by its aggregated score
  (the answer with the largest score sum wins; ties go to the answer seen first);
* ``pass@N``: share with at least one correct response;
* ``min_on_last``: share of responses (with at least ``min_steps`` steps) whose lowest step score is on the
  final step (ties: the first minimum counts), the "PRM behaves like an outcome RM" sign.

Example:
    >>> probs = [[{"correct": False, "answer": "1", "scores": [0.9, 0.3]},
    ...           {"correct": True, "answer": "2", "scores": [0.4, 0.7]}]]
    >>> r = best_of_n(probs)
    >>> r["bon"]["min"], r["bon"]["last"], r["bon"]["mean"], r["pass@n"]
    (1.0, 1.0, 0.0, 1.0)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from reward.base import AGGREGATIONS, aggregate
from reward.models.verifier import answers_match, extract_answer, is_correct


def pick(cands: Sequence[Mapping], how: str) -> int:
    """Index of the top candidate under aggregation ``how`` (first one on ties)."""
    best, best_v = 0, None
    for i, c in enumerate(cands):
        v = aggregate(list(c["scores"]), how)
        if best_v is None or v > best_v:
            best, best_v = i, v
    return best


def answer_groups(cands: Sequence[Mapping], same: Callable[[str, str], bool] | None = None) -> list[list[Mapping]]:
    """Candidates grouped by final answer (equivalence classes under ``same``, default the verifier's
    ``answers_match``), in order of first appearance; candidates without an answer are left out."""
    if same is None:
        same = answers_match
    groups: list[list[Mapping]] = []
    for c in cands:
        a = c.get("answer")
        if a is None or a == "":
            continue
        for g in groups:
            if g[0]["answer"] == a or same(a, g[0]["answer"]):
                g.append(c)
                break
        else:
            groups.append([c])
    return groups


def majority_correct(cands: Sequence[Mapping], same: Callable[[str, str], bool] | None = None) -> bool:
    """Whether the most frequent final answer (equivalence classes under ``same``) is a correct one."""
    groups = answer_groups(cands, same)
    if not groups:
        return False
    top = max(groups, key=len)  # first of equal size
    return any(bool(c["correct"]) for c in top)


def weighted_majority_correct(cands: Sequence[Mapping], how: str = "min",
                              same: Callable[[str, str], bool] | None = None) -> bool:
    """Whether the answer with the largest sum of aggregated scores (``how``) is a correct one.

    Example:
        >>> cands = [{"correct": False, "answer": "5", "scores": [0.2]}] * 3 + \\
        ...         [{"correct": True, "answer": "7", "scores": [0.9]}] * 2
        >>> majority_correct(cands, same=str.__eq__), weighted_majority_correct(cands, "last", same=str.__eq__)
        (False, True)
    """
    groups = answer_groups(cands, same)
    if not groups:
        return False
    top = max(groups, key=lambda g: sum(aggregate(list(c["scores"]), how) for c in g))  # first on ties
    return any(bool(c["correct"]) for c in top)


def min_on_last(scores: Sequence[float]) -> bool:
    return bool(scores) and min(range(len(scores)), key=lambda i: scores[i]) == len(scores) - 1


def best_of_n(problems: Sequence[Sequence[Mapping]], aggregations: Sequence[str] = AGGREGATIONS,
              min_steps: int = 2, same: Callable[[str, str], bool] | None = None) -> dict[str, Any]:
    """BoN accuracy and weighted majority per aggregation, maj@N, pass@N and the min-on-last share over
    ``problems``."""
    for a in aggregations:
        if a not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {a!r} (allowed: {', '.join(AGGREGATIONS)})")
    probs = [p for p in problems if len(p)]
    if not probs:
        raise ValueError("no problems with candidates")
    n = len(probs)
    bon = {a: sum(bool(p[pick(p, a)]["correct"]) for p in probs) / n for a in aggregations}
    maj = sum(majority_correct(p, same) for p in probs) / n
    wmaj = {a: sum(weighted_majority_correct(p, a, same) for p in probs) / n for a in aggregations}
    pas = sum(any(bool(c["correct"]) for c in p) for p in probs) / n
    eligible = [c["scores"] for p in probs for c in p if len(c["scores"]) >= min_steps]
    mol = sum(min_on_last(s) for s in eligible) / len(eligible) if eligible else None
    sizes = sorted({len(p) for p in probs})
    return {"bon": bon, "maj@n": maj, "wmaj@n": wmaj, "pass@n": pas, "min_on_last": mol, "n_problems": n,
            "n_responses": sum(len(p) for p in probs), "n_min_on_last": len(eligible),
            "N": sizes[0] if len(sizes) == 1 else sizes}


def score_candidates(model, rows: Sequence[Mapping], batch_size: int = 8) -> list[list[dict]]:
    """Turn BoN rows into candidates: verifier correctness, extracted answer, and ``model``'s step scores.

    A row is ``{"problem", "reference", "responses": [str, ...]}``; a response may also be
    ``{"text": str, "correct": bool}`` to keep a given correctness instead of the verifier's.
    """
    flat: list[tuple[int, str, str, Any]] = []
    for i, r in enumerate(rows):
        for resp in r["responses"]:
            text, given = (resp["text"], resp.get("correct")) if isinstance(resp, Mapping) else (resp, None)
            flat.append((i, r["problem"], text, given))
    out: list[list[dict]] = [[] for _ in rows]
    for k in range(0, len(flat), batch_size):
        chunk = flat[k:k + batch_size]
        res = model.score([c[1] for c in chunk], [c[2] for c in chunk], None)
        for (i, _, text, given), s in zip(chunk, res):
            ref = rows[i]["reference"]
            ok = bool(given) if given is not None else is_correct(text, ref)
            out[i].append({"correct": ok, "answer": extract_answer(text), "scores": list(s.scores)})
    return out
