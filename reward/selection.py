"""Data selection with a reward model: rejection sampling for SFT data, and accuracy-band prompt filtering for RL.

* :func:`rejection_sample` - sample N responses per prompt, keep the best one under any registered reward
  (and/or only verifier-correct ones), and write an SFT dataset in the conversational layout TRL's
  ``SFTTrainer`` reads (``{"messages": [system?, user, assistant]}``, one line per kept prompt).
* :func:`filter_prompts` - sample N responses per prompt with the policy, count the verifier-correct ones,
  and keep the prompts whose count lies in ``[min_correct, max_correct]`` (the Qwen2.5-Math RL data: 2-5 of 8
  right: neither hopeless nor already solved). Kept rows are the input rows unchanged plus ``n_correct`` /
  ``n_samples``, so they stay readable as recipe ``data.train``.

Generation goes through a *completer* (``reward.labeling.mc``): any callable ``complete(prefixes, n) ->
list[list[str]]`` with a ``prompt(problem)`` method; :func:`reward.labeling.mc.build_completer` gives vLLM
(a fixed model, so no weight sync is needed) or HF generate.

Both runs are resumable and never write a prompt twice: every finished prompt is recorded (kept or not) in
``<output>.progress.jsonl``; a re-run skips those ids. Per prompt the order of writes is samples -> output ->
progress, and the output/samples writers skip ids they already hold, so a crash between writes produces no
duplicate either.

Input rows (JSONL): ``{"id"?, "problem" | "question" | "prompt", "reference" | "answer" | ..., ...}``; rows
without an id get ``line-<n>``.

Example:
    >>> pick_best(["a", "b", "c"], [0.2, 0.9, 0.9], [True, False, True], require_correct=True)
    2
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from reward.labeling.io import (
    PROBLEM_KEYS,
    REFERENCE_KEYS,
    LabelDataError,
    ResumableWriter,
    _first,
    read_jsonl,
)
from reward.models.composite import response_score
from reward.models.verifier import is_correct

Progress = Callable[[str], None]


class SelectionError(ValueError):
    """Bad selection settings (no criterion, empty band, missing references)."""


def progress_path(output: str | Path) -> Path:
    """Where a selection run records the prompts it has finished."""
    p = Path(output)
    return p.with_name(p.name + ".progress.jsonl")


def read_prompts(path: str | Path, need_reference: bool = True) -> list[dict]:
    """``{"id", "problem", "reference", "row"}`` per input line (``row``: the original fields)."""
    items, seen = [], set()
    for r in read_jsonl(path):
        line = r.pop("_line")
        where = f"{path}:{line}"
        problem = _first(r, PROBLEM_KEYS)
        if not isinstance(problem, str) or not problem.strip():
            raise LabelDataError(f"{where}: missing or empty field 'problem' (or question/prompt)")
        ref = _first(r, REFERENCE_KEYS)
        if need_reference and (ref is None or not str(ref).strip()):
            raise LabelDataError(f"{where}: missing field 'reference' (or answer/ground_truth)")
        rid = str(r.get("id", f"line-{line}"))
        if rid in seen:
            raise LabelDataError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        items.append({"id": rid, "problem": problem, "reference": None if ref is None else str(ref), "row": r})
    return items


def _sample(completer: Any, problems: Sequence[str], n: int) -> list[list[str]]:
    fn = getattr(completer, "prompt", None)
    prefixes = [fn(p) if callable(fn) else p for p in problems]
    outs = completer(prefixes, n)
    if len(outs) != len(prefixes) or any(len(o) != n for o in outs):
        raise ValueError(f"completer returned {[len(o) for o in outs]} samples for {len(prefixes)} prompts x {n}")
    return [list(o) for o in outs]


def _correct(texts: Sequence[str], reference: str | None, verify: Callable[[str, str], bool]) -> list[bool | None]:
    if reference is None:
        return [None] * len(texts)
    return [bool(verify(t, reference)) for t in texts]


def pick_best(texts: Sequence[str], scores: Sequence[float] | None, correct: Sequence[bool | None],
              require_correct: bool = False) -> int | None:
    """Index of the kept response: the highest score (first on ties) among the allowed candidates (all, or
    only the correct ones with ``require_correct``); without scores the first allowed one; None if none is."""
    allowed = [i for i in range(len(texts)) if not require_correct or correct[i]]
    if not allowed:
        return None
    if scores is None:
        return allowed[0]
    return max(allowed, key=lambda i: (scores[i], -i))


def sft_messages(problem: str, response: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The conversational SFT example (TRL ``messages`` layout)."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": problem}, {"role": "assistant", "content": response}]


def _reward_scores(reward: Any, problem: str, texts: Sequence[str], reference: str | None) -> list[float]:
    refs = [reference] * len(texts) if reference is not None else None
    return [response_score(s) for s in reward.score([problem] * len(texts), list(texts), refs)]


def _done_ids(output: str | Path) -> set[str]:
    w = ResumableWriter(progress_path(output))
    w.close()
    return w.done


def rejection_sample(items: Sequence[Mapping], completer: Any, output: str | Path, n: int = 8, reward: Any = None,
                     require_correct: bool = False, system_prompt: str | None = None,
                     samples_output: str | Path | None = None, batch_size: int = 4,
                     verify: Callable[[str, str], bool] | None = None, progress: Progress | None = None,
                     limit: int | None = None) -> dict[str, Any]:
    """Best-of-N SFT data: for each prompt keep the top response under ``reward`` (any StepRewardModel, scored
    at the response level) and/or only verifier-correct responses.

    ``items``: :func:`read_prompts` output. ``output``: SFT JSONL, one line per kept prompt
    ``{"id", "messages": [system?, user, assistant], "problem", "reference", "score", "correct", "n_samples",
    "n_correct"}``. ``system_prompt``: the system turn of the SFT examples (default: the completer's
    ``system_prompt``, so the SFT context equals the sampling context). ``samples_output``: also write every
    sample, grouped (``{"id", "problem", "reference", "responses": [{"text", "correct"}], "scores"}``: the
    ``rlkit eval bon`` layout and the listwise ORM's training data). ``limit``: at most this many new prompts.

    Returns counts: total, skipped (done earlier), processed, kept, no_candidate (nothing allowed: no correct
    sample under ``require_correct``), samples, correct_samples.
    """
    if reward is None and not require_correct:
        raise SelectionError("rejection sampling needs a reward model, require_correct, or both")
    if n < 1:
        raise SelectionError(f"n must be >= 1, got {n}")
    if require_correct and any(it.get("reference") is None for it in items):
        raise SelectionError("require_correct needs a reference answer for every prompt")
    if verify is None:
        verify = is_correct
    if system_prompt is None:
        system_prompt = getattr(completer, "system_prompt", None)
    done = _done_ids(output)
    todo = [it for it in items if it["id"] not in done]
    skipped = len(items) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    stats: dict[str, Any] = {"total": len(items), "skipped": skipped,
                             "processed": 0, "kept": 0, "no_candidate": 0, "samples": 0, "correct_samples": 0}
    t0 = time.time()
    out_w, prog_w = ResumableWriter(output), ResumableWriter(progress_path(output))
    samp_w = ResumableWriter(samples_output) if samples_output else None
    try:
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            outs = _sample(completer, [it["problem"] for it in batch], n)
            for it, texts in zip(batch, outs):
                ok = _correct(texts, it.get("reference"), verify)
                scores = _reward_scores(reward, it["problem"], texts, it.get("reference")) if reward else None
                best = pick_best(texts, scores, ok, require_correct)
                n_ok = sum(bool(c) for c in ok) if it.get("reference") is not None else None
                if samp_w is not None:
                    samp_w.write({"id": it["id"], "problem": it["problem"], "reference": it.get("reference"),
                                  "responses": [{"text": t, "correct": c} for t, c in zip(texts, ok)],
                                  "scores": scores})
                if best is not None:
                    out_w.write({"id": it["id"], "messages": sft_messages(it["problem"], texts[best], system_prompt),
                                 "problem": it["problem"], "reference": it.get("reference"),
                                 "score": None if scores is None else scores[best], "correct": ok[best],
                                 "n_samples": n, "n_correct": n_ok})
                prog_w.write({"id": it["id"], "kept": best is not None, "n_correct": n_ok,
                              "best_score": None if best is None or scores is None else scores[best]})
                stats["processed"] += 1
                stats["kept"] += best is not None
                stats["no_candidate"] += best is None
                stats["samples"] += n
                stats["correct_samples"] += n_ok or 0
            if progress:
                progress(f"[rejection] {stats['processed'] + stats['skipped']}/{stats['total']} prompts, "
                         f"kept {stats['kept']} ({time.time() - t0:.0f}s)")
    finally:
        out_w.close()
        prog_w.close()
        if samp_w is not None:
            samp_w.close()
    return stats


def filter_prompts(items: Sequence[Mapping], completer: Any, output: str | Path, n: int = 8, min_correct: int = 2,
                   max_correct: int = 5, batch_size: int = 4, verify: Callable[[str, str], bool] | None = None,
                   progress: Progress | None = None, limit: int | None = None) -> dict[str, Any]:
    """Keep prompts whose policy accuracy over ``n`` samples lies in the band ``[min_correct, max_correct]``.

    ``output``: the kept input rows (original fields, plus ``id``, ``n_correct``, ``n_samples``), one line
    each, usable as a recipe's ``data.train``. Returns counts: total, skipped (done earlier), processed, kept,
    too_hard (< min_correct), too_easy (> max_correct), and ``histogram`` (prompts per number correct, over
    this run's prompts).
    """
    if n < 1:
        raise SelectionError(f"n must be >= 1, got {n}")
    if not 0 <= min_correct <= max_correct <= n:
        raise SelectionError(f"need 0 <= min_correct <= max_correct <= n, got {min_correct}, {max_correct}, n={n}")
    if any(it.get("reference") is None for it in items):
        raise SelectionError("prompt filtering needs a reference answer for every prompt")
    if verify is None:
        verify = is_correct
    done = _done_ids(output)
    todo = [it for it in items if it["id"] not in done]
    skipped = len(items) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    stats: dict[str, Any] = {"total": len(items), "skipped": skipped, "processed": 0, "kept": 0, "too_hard": 0,
                             "too_easy": 0, "histogram": [0] * (n + 1)}
    t0 = time.time()
    out_w, prog_w = ResumableWriter(output), ResumableWriter(progress_path(output))
    try:
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            outs = _sample(completer, [it["problem"] for it in batch], n)
            for it, texts in zip(batch, outs):
                k = sum(bool(c) for c in _correct(texts, it["reference"], verify))
                keep = min_correct <= k <= max_correct
                if keep:
                    row = dict(it.get("row") or {"problem": it["problem"], "reference": it["reference"]})
                    row.update(id=it["id"], n_correct=k, n_samples=n)
                    out_w.write(row)
                prog_w.write({"id": it["id"], "kept": keep, "n_correct": k})
                stats["processed"] += 1
                stats["kept"] += keep
                stats["too_hard"] += k < min_correct
                stats["too_easy"] += k > max_correct
                stats["histogram"][k] += 1
            if progress:
                progress(f"[filter] {stats['processed'] + skipped}/{stats['total']} prompts, kept {stats['kept']} "
                         f"({time.time() - t0:.0f}s)")
    finally:
        out_w.close()
        prog_w.close()
    return stats
