"""Ranking evaluation of outcome reward models: rm@N, maj@N, pass@N, pairwise accuracy and the listwise loss
of response-level scores on groups of responses (one problem, several responses labelled correct/incorrect).
Works for any registered reward used as an outcome RM (:func:`evaluate_outcome_rm`).

Example:
    >>> pairwise_accuracy([[0.9, 0.1, 0.5]], [[True, False, False]])
    1.0
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from reward.evaluation.bon import best_of_n
from reward.models.composite import response_score
from reward.models.verifier import extract_answer
from reward.registry import build_reward


# ----------------------------------------------------------------------------------------------- loss
def group_listwise_loss(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor | None:
    """Listwise loss of one problem: ``-mean over (pos, neg) pairs of log sigmoid(r_pos - r_neg)``.

    ``scores``: (n,) RM scores; ``correct``: (n,) bools. None when the group has no pair (all right / all wrong).
    """
    c = correct.bool()
    pos, neg = scores[c], scores[~c]
    if pos.numel() == 0 or neg.numel() == 0:
        return None
    return -F.logsigmoid(pos[:, None].float() - neg[None, :].float()).mean()


# ----------------------------------------------------------------------------------------------- evaluation
def pairwise_accuracy(scores: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]]) -> float:
    """Share of (correct, incorrect) pairs within a problem that the scores order right (ties count 1/2)."""
    right = total = 0.0
    for s, c in zip(scores, correct):
        for i, ci in enumerate(c):
            if not ci:
                continue
            for j, cj in enumerate(c):
                if cj:
                    continue
                total += 1
                right += 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
    return right / total if total else float("nan")


def outcome_metrics(groups: Sequence[Mapping], scores: Sequence[Sequence[float]],
                    same: Callable[[str, str], bool] | None = None) -> dict[str, Any]:
    """rm@N, maj@N, pass@N (through ``reward.evaluation.bon.best_of_n``), pairwise accuracy and mean listwise
    loss for response-level ``scores`` of ``groups`` (``{"problem", "responses", "correct"}``; an ``answers``
    list is used for maj@N when present, else the verifier's ``extract_answer`` of each response).

    rm@N is the share of problems whose top-scored response is correct (first one on ties).
    """
    probs = []
    for g, s in zip(groups, scores):
        answers = g.get("answers") or [extract_answer(t) for t in g["responses"]]
        probs.append([{"correct": bool(c), "answer": a, "scores": [float(v)]}
                      for c, a, v in zip(g["correct"], answers, s)])
    res = best_of_n(probs, aggregations=("last",), min_steps=1, same=same)
    losses = [group_listwise_loss(torch.tensor(s, dtype=torch.float64), torch.tensor(g["correct"]))
              for g, s in zip(groups, scores)]
    losses = [float(v) for v in losses if v is not None]
    return {"rm@n": res["bon"]["last"], "maj@n": res["maj@n"], "pass@n": res["pass@n"],
            "pairwise_accuracy": pairwise_accuracy(scores, [g["correct"] for g in groups]),
            "listwise_loss": sum(losses) / len(losses) if losses else float("nan"),
            "n_problems": res["n_problems"], "N": res["N"]}


def evaluate_outcome_rm(reward: Any, groups: Sequence[Mapping], batch_size: int = 16,
                        same: Callable[[str, str], bool] | None = None) -> dict[str, Any]:
    """rm@N / maj@N / pass@N / pairwise accuracy of **any** registered reward used as an outcome RM.

    ``reward``: a built StepRewardModel (e.g. ``build_reward("orm", model=...)``) or ``{"name", "args"}``.
    Each response's value is its response-level score (``meta["response_score"]``, else the last step's).
    ``groups``: ``{"problem", "reference"?, "responses", "correct"}`` (e.g. from :func:`label_groups`, or
    unfiltered groups for rm@N over every problem).
    """
    if isinstance(reward, Mapping):
        reward = build_reward(reward["name"], **dict(reward.get("args") or {}))
    flat = [(gi, g["problem"], t, g.get("reference")) for gi, g in enumerate(groups) for t in g["responses"]]
    vals: list[float] = []
    for k in range(0, len(flat), batch_size):
        chunk = flat[k:k + batch_size]
        refs = [c[3] for c in chunk]
        got = reward.score([c[1] for c in chunk], [c[2] for c in chunk],
                           refs if all(r is not None for r in refs) else None)
        vals += [response_score(s) for s in got]
    scores: list[list[float]] = [[] for _ in groups]
    for (gi, *_), v in zip(flat, vals):
        scores[gi].append(v)
    return outcome_metrics(groups, scores, same)


# ----------------------------------------------------------------------------------------------- recipe entry
