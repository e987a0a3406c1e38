"""LLM-as-a-judge step labels: a critic names the earliest wrong step of each response.

Uses the ``llm-judge`` reward's :meth:`~reward.models.judge.LLMJudge.earliest_errors` (or any callable
``(problems, steps, references) -> list of verdicts``, a verdict being an int index / -1 / None or an object
with ``.index``). Labels: 1 before the error, 0 at it, later steps dropped; all 1 when the critic finds none.
An unparsable verdict gives ``earliest_error: None`` and no labels (consensus never keeps it, the trainer
skips it). Output is appended per batch and resumable by id, like MC labelling.

Example:
    >>> fn = lambda problems, steps, refs: [1 for _ in problems]
    >>> judge_label_items([{"id": "a", "problem": "p", "steps": ["x", "y", "z"], "reference": "1"}], fn)[0]["labels"]
    [1, 0]
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from reward.labeling.io import ResumableWriter, labels_from_error

JudgeFn = Callable[[list[str], list[list[str]], list[str | None]], Sequence[Any]]


def as_judge_fn(judge: Any) -> JudgeFn:
    """A verdict function from an LLMJudge (its ``earliest_errors``) or a plain callable."""
    fn = getattr(judge, "earliest_errors", None)
    if callable(fn):
        return lambda problems, steps, refs: fn(problems, steps, refs)
    if callable(judge):
        return judge
    raise TypeError(f"a judge must be an LLMJudge or a callable, got {type(judge).__name__}")


def _index(v: Any, n_steps: int) -> tuple[int | None, dict]:
    extra: dict = {}
    if hasattr(v, "index") and not isinstance(v, (int, type(None))):
        extra = {"parse": getattr(v, "how", None), "critique": getattr(v, "raw", None)}
        v = v.index
    if v is None:
        return None, extra
    if isinstance(v, bool) or not isinstance(v, int) or not -1 <= v < n_steps:
        return None, dict(extra, parse="out-of-range")
    return v, extra


def judge_label_items(items: Sequence[Mapping], judge: Any) -> list[dict]:
    """Labelled records for ``items`` (``{"id", "problem", "steps", "reference"}``) from one judge call."""
    fn = as_judge_fn(judge)
    verdicts = list(fn([it["problem"] for it in items], [list(it["steps"]) for it in items],
                       [it.get("reference") for it in items]))
    if len(verdicts) != len(items):
        raise ValueError(f"judge returned {len(verdicts)} verdicts for {len(items)} items")
    out = []
    for it, v in zip(items, verdicts):
        idx, extra = _index(v, len(it["steps"]))
        rec = {"id": it["id"], "problem": it["problem"], "steps": list(it["steps"]), "reference": it.get("reference"),
               "labels": labels_from_error(len(it["steps"]), idx), "earliest_error": idx, "method": "judge"}
        if idx is None:
            rec["unparsable"] = True
        rec.update({k: val for k, val in extra.items() if val is not None})
        out.append(rec)
    return out


def run_judge(items: Iterable[Mapping], judge: Any, output: str, batch_size: int = 8,
              progress: Callable[[str], None] | None = None, limit: int | None = None) -> dict[str, int]:
    """Judge-label ``items`` into the JSONL ``output`` (appended per batch; finished ids skipped on a re-run)."""
    items = list(items)
    stats = {"total": len(items), "skipped": 0, "labelled": 0, "with_error": 0, "unparsable": 0}
    t0 = time.time()
    with ResumableWriter(output) as w:
        todo = w.pending(items)
        stats["skipped"] = len(items) - len(todo)
        todo = todo[:limit]
        for i in range(0, len(todo), batch_size):
            for rec in judge_label_items(todo[i:i + batch_size], judge):
                w.write(rec)
                stats["labelled"] += 1
                stats["unparsable"] += rec["earliest_error"] is None
                stats["with_error"] += rec["earliest_error"] not in (None, -1)
            if progress:
                progress(f"[judge] {stats['labelled'] + stats['skipped']}/{stats['total']} "
                         f"({stats['unparsable']} unparsable, {time.time() - t0:.0f}s)")
    return stats
