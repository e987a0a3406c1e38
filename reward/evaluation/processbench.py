"""ProcessBench-style evaluation: predict the earliest wrong step of each item and score the predictions.

An item is ``{"id", "problem", "steps": [str, ...], "label": int}`` (``label`` = 0-based index of the earliest
wrong step, -1 when every step is right), optionally with ``generator`` and ``final_answer_correct``. The
four published subsets are gsm8k, math, olympiadbench and omnimath; any file in that schema works.

Metric (per subset, as published): ``error_acc`` = share of items with an error whose prediction equals the
label, ``correct_acc`` = share of all-correct items predicted -1, ``f1`` = 2ab/(a+b). The headline is the
plain mean of the subset F1s. Values here are fractions in [0, 1]; reports print them x100.

Predictions: a PRM predicts the earliest step whose score is below a threshold; a critic (a model whose
StepScores carry ``labels``) predicts the first step it labels 0, or None when its verdict was unparsable
(None never matches a label). The threshold is fixed or tuned on a *named* split that is not a test split.

Example:
    >>> items = [{"id": "a", "problem": "p", "steps": ["x", "y"], "label": 1},
    ...          {"id": "b", "problem": "p", "steps": ["x"], "label": -1}]
    >>> m = processbench_metrics(items, [1, 0])
    >>> m["error_acc"], m["correct_acc"], m["f1"]
    (1.0, 0.0, 0.0)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from reward.base import RewardError, StepRewardModel, StepScores, first_error
from reward.steps import Step

SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")
HUB_ID = "Qwen/ProcessBench"
DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


class DataError(ValueError):
    """Bad evaluation data (missing file, missing or ill-typed field)."""


# ----------------------------------------------------------------------------------------------- loading
def validate_item(item: Any, where: str) -> dict:
    """Check one ProcessBench-schema item; returns it (with ``steps`` as a list of str)."""
    if not isinstance(item, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    for key in ("id", "problem", "steps", "label"):
        if key not in item:
            raise DataError(f"{where}: missing field {key!r}")
    steps = item["steps"]
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise DataError(f"{where}: field 'steps' must be a non-empty list of strings")
    if not isinstance(item["problem"], str):
        raise DataError(f"{where}: field 'problem' must be a string")
    label = item["label"]
    if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
        raise DataError(f"{where}: field 'label' must be an int in [-1, {len(steps) - 1}], got {label!r}")
    return dict(item)


def _read_file(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(rows, dict) and "data" in rows:
            rows = rows["data"]
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of items")
    return [validate_item(r, f"{path} item {i}") for i, r in enumerate(rows)]


def load_processbench(source: str | Path, splits: Sequence[str] | None = None,
                      limit: int | None = None) -> dict[str, list[dict]]:
    """Load items as {split name: items}.

    ``source``: a directory of ``<split>.json``/``.jsonl`` files (e.g. ../shared/data/processbench), one file
    (its stem names the split), or a hub dataset id (``Qwen/ProcessBench``; needs network or the HF cache).
    ``splits`` selects splits (default: all found); ``limit`` keeps the first N items of each.
    """
    src = Path(source)
    out: dict[str, list[dict]] = {}
    if src.is_dir():
        files = {p.stem: p for p in sorted(src.iterdir()) if p.suffix in (".json", ".jsonl")}
        if not files:
            raise DataError(f"{src}: no .json or .jsonl files")
        wanted = list(splits) if splits else list(files)
        for s in wanted:
            if s not in files:
                raise DataError(f"{src}: no split {s!r} (found: {', '.join(files)})")
            out[s] = _read_file(files[s])
    elif src.is_file():
        name = src.stem
        if splits and list(splits) != [name]:
            raise DataError(f"{src} holds the single split {name!r}; asked for {', '.join(splits)}")
        out[name] = _read_file(src)
    elif "/" in str(source) and not str(source).startswith((".", "/")) and not src.suffix:
        out = _load_hub(str(source), splits)
    else:
        raise DataError(f"{source}: no such file or directory")
    if limit is not None:
        out = {k: v[:limit] for k, v in out.items()}
    return out


def _load_hub(name: str, splits: Sequence[str] | None) -> dict[str, list[dict]]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError("loading from the hub needs the 'datasets' package") from None
    out = {}
    for s in splits or SUBSETS:
        try:
            ds = datasets.load_dataset(name, split=s)
        except Exception as e:  # network, unknown split, ...
            raise DataError(f"cannot load {name} split {s!r}: {str(e).splitlines()[0] if str(e) else e!r}") from None
        out[s] = [validate_item(dict(r), f"{name}[{s}] item {i}") for i, r in enumerate(ds)]
    return out


def item_steps(item: Mapping) -> list[Step]:
    """The item's steps as Step objects, one per listed step (indices stay aligned with ``label``)."""
    out, pos = [], 0
    for raw in item["steps"]:
        text = raw.strip() or raw
        out.append(Step(text, pos, pos + len(text)))
        pos += len(text) + 2
    return out


# ----------------------------------------------------------------------------------------------- metrics
def processbench_metrics(items: Sequence[Mapping], predictions: Sequence[int | None]) -> dict[str, Any]:
    """error_acc, correct_acc, f1 (fractions; None when a class is empty) and counts for one subset."""
    if len(items) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} items")
    err = [p == it["label"] for it, p in zip(items, predictions) if it["label"] != -1]
    cor = [p == -1 for it, p in zip(items, predictions) if it["label"] == -1]
    a = sum(err) / len(err) if err else None
    b = sum(cor) / len(cor) if cor else None
    if a is None or b is None:
        f1 = None
    else:
        f1 = 0.0 if a + b == 0 else 2 * a * b / (a + b)
    return {"error_acc": a, "correct_acc": b, "f1": f1, "n_error": len(err), "n_correct": len(cor),
            "n": len(items), "n_unparsable": sum(p is None for p in predictions)}


def summarize(per_split: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Plain mean over splits of each metric (splits whose value is None are left out of that mean)."""
    out: dict[str, Any] = {}
    for key in ("error_acc", "correct_acc", "f1"):
        vals = [m[key] for m in per_split.values() if m.get(key) is not None]
        out[key] = sum(vals) / len(vals) if vals else None
    out["n"] = sum(m["n"] for m in per_split.values())
    return out


def predict(scores: StepScores, threshold: float | None) -> int | None:
    """Earliest-error prediction from one StepScores: critic verdict when it carries labels, else threshold."""
    if scores.labels is not None or scores.meta.get("unparsable"):
        if scores.meta.get("unparsable"):
            return None
        for i, v in enumerate(scores.labels or []):
            if v == 0:
                return i
        return -1
    if threshold is None:
        raise ValueError("a threshold is needed for step-score (PRM) predictions")
    return first_error(scores.scores, threshold)


def is_verdict(scores: Sequence[StepScores]) -> bool:
    return any(s.labels is not None or s.meta.get("unparsable") for s in scores)


def choose_threshold(items: Sequence[Mapping], scores: Sequence[StepScores],
                     grid: Iterable[float] = DEFAULT_GRID) -> tuple[float, list[tuple[float, float]]]:
    """The grid threshold with the best F1 on these items (first best on ties) and the (threshold, f1) sweep."""
    sweep = []
    for t in grid:
        m = processbench_metrics(items, [predict(s, t) for s in scores])
        sweep.append((float(t), m["f1"] if m["f1"] is not None else 0.0))
    if not sweep:
        raise ValueError("empty threshold grid")
    best = max(sweep, key=lambda x: x[1])  # max keeps the first of equal values
    return best[0], sweep


# ----------------------------------------------------------------------------------------------- scoring
def score_items(model: StepRewardModel, items: Sequence[Mapping], batch_size: int = 8,
                progress: bool = False) -> list[StepScores]:
    """Score every step of every item with ``model`` (explicit steps, no re-splitting)."""
    out: list[StepScores] = []
    it = range(0, len(items), batch_size)
    if progress:
        try:
            from tqdm import tqdm

            it = tqdm(it, desc="scoring", unit="batch")
        except ImportError:  # pragma: no cover
            pass
    for i in it:
        chunk = items[i:i + batch_size]
        res = model.score_split([c["problem"] for c in chunk], [item_steps(c) for c in chunk], None)
        if len(res) != len(chunk):
            raise RewardError(f"reward model returned {len(res)} results for {len(chunk)} items")
        for c, r in zip(chunk, res):
            if len(r.scores) != len(c["steps"]):
                raise RewardError(f"item {c['id']}: {len(r.scores)} scores for {len(c['steps'])} steps")
        out.extend(res)
    return out


def evaluate_processbench(model: StepRewardModel | None, data: Mapping[str, Sequence[Mapping]],
                          threshold: float | None = None, threshold_split: str | None = None,
                          threshold_data: Sequence[Mapping] | None = None,
                          grid: Iterable[float] = DEFAULT_GRID, batch_size: int = 8,
                          scores: Mapping[str, Sequence[StepScores]] | None = None,
                          progress: bool = False) -> dict[str, Any]:
    """Evaluate ``model`` on the test splits in ``data``.

    Threshold (PRMs only): ``threshold`` fixes it; otherwise it is tuned on ``threshold_data`` (items named
    ``threshold_split``), which must not be one of the test splits; with neither, 0.5. ``scores`` may hold
    precomputed StepScores per split (then ``model`` may be None).

    Returns ``{"splits": {name: metrics}, "mean": {...}, "threshold": t, "threshold_split": name,
    "sweep": [(t, f1), ...], "kind": "prm"|"critic", "predictions": {name: [...]}, "scores": {name: [...]}}``.
    """
    if threshold_split is not None and threshold_split in data:
        raise ValueError(f"threshold split {threshold_split!r} is also a test split: tune on a split you do "
                         "not report, or pass a fixed threshold")
    if threshold is not None and threshold_data is not None:
        raise ValueError("pass either a fixed threshold or threshold data, not both")
    all_scores: dict[str, list[StepScores]] = {}
    for name, items in data.items():
        if scores is not None and name in scores:
            all_scores[name] = list(scores[name])
        elif model is None:
            raise ValueError(f"no model and no precomputed scores for split {name!r}")
        else:
            all_scores[name] = score_items(model, items, batch_size, progress)
    critic = any(is_verdict(s) for s in all_scores.values())
    sweep: list[tuple[float, float]] = []
    if critic:
        threshold, threshold_split = None, None
    elif threshold is None:
        if threshold_data is not None:
            if model is None:
                raise ValueError("tuning a threshold needs the model")
            cal = score_items(model, threshold_data, batch_size, progress)
            threshold, sweep = choose_threshold(threshold_data, cal, grid)
        else:
            threshold = 0.5
    per, preds = {}, {}
    for name, items in data.items():
        p = [predict(s, threshold) for s in all_scores[name]]
        preds[name] = p
        per[name] = processbench_metrics(items, p)
    return {"splits": per, "mean": summarize(per), "threshold": threshold, "threshold_split": threshold_split,
            "sweep": sweep, "kind": "critic" if critic else "prm", "predictions": preds, "scores": all_scores}


def pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"
