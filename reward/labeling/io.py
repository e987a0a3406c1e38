"""JSONL formats of the labelling pipeline, and crash-safe writing.

Input (one response per line)::

    {"id": "q1-0", "problem": "...", "response": "step\\n\\nstep" | "steps": ["step", ...], "reference": "72"}

``question``/``prompt`` are accepted for ``problem``; ``answer``/``ground_truth`` for ``reference`` (a GSM8K
solution with ``#### 72`` works). ``id`` is optional: line number-based ids ``line-<n>`` are given otherwise.

Labelled record (output of every method, input of the PRM trainer)::

    {"id", "problem", "steps": [...all steps...], "labels": [1, 1, 0], "earliest_error": 2, "method": "mc",
     "reference": ..., ...method-specific fields}

``labels`` covers the steps up to and including the first negative one (steps after it are dropped for
training; ``steps`` still lists all of them); ``earliest_error`` is -1 when no step is negative, and None when
the method gave no verdict (e.g. an unparsable critique: such records carry ``labels: []``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from reward.steps import StepSplitter

PROBLEM_KEYS = ("problem", "question", "prompt")
REFERENCE_KEYS = ("reference", "answer", "ground_truth", "gold")


class LabelDataError(ValueError):
    """Bad labelling input (missing file, missing field, duplicate id, bad JSON)."""


def _first(row: Mapping, keys: Iterable[str]) -> Any:
    for k in keys:
        if k in row and row[k] is not None:
            return row[k]
    return None


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; raises LabelDataError naming the file and line on bad JSON."""
    p = Path(path)
    if not p.is_file():
        raise LabelDataError(f"{path}: no such file")
    rows = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LabelDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise LabelDataError(f"{path}:{n}: expected a JSON object")
            row["_line"] = n
            rows.append(row)
    return rows


def normalize_item(row: Mapping, splitter: StepSplitter | None = None, need_reference: bool = True,
                   where: str = "") -> dict:
    """An input row as ``{"id", "problem", "steps", "reference"}``; raises LabelDataError on a bad field."""
    where = where or f"line {row.get('_line', '?')}"
    problem = _first(row, PROBLEM_KEYS)
    if not isinstance(problem, str) or not problem.strip():
        raise LabelDataError(f"{where}: missing or empty field 'problem' (or question/prompt)")
    if "steps" in row:
        steps = row["steps"]
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
            raise LabelDataError(f"{where}: field 'steps' must be a non-empty list of non-empty strings")
        steps = [s.strip() for s in steps]
    elif "response" in row:
        if not isinstance(row["response"], str):
            raise LabelDataError(f"{where}: field 'response' must be a string")
        steps = [s.text for s in (splitter or StepSplitter()).split(row["response"])]
        if not steps:
            raise LabelDataError(f"{where}: field 'response' has no steps")
    else:
        raise LabelDataError(f"{where}: missing field 'steps' or 'response'")
    ref = _first(row, REFERENCE_KEYS)
    if need_reference and (ref is None or not str(ref).strip()):
        raise LabelDataError(f"{where}: missing field 'reference' (or answer/ground_truth)")
    rid = row.get("id", f"line-{row.get('_line', '?')}")
    item = {"id": str(rid), "problem": problem, "steps": steps,
            "reference": None if ref is None else str(ref)}
    return item


def read_items(path: str | Path, splitter: StepSplitter | None = None, need_reference: bool = True) -> list[dict]:
    """Validated, normalized input items of a JSONL file (every line is checked before any is used)."""
    rows = read_jsonl(path)
    items, seen = [], set()
    for r in rows:
        it = normalize_item(r, splitter, need_reference, where=f"{path}:{r['_line']}")
        if it["id"] in seen:
            raise LabelDataError(f"{path}:{r['_line']}: duplicate id {it['id']!r}")
        seen.add(it["id"])
        items.append(it)
    return items


def validate_record(rec: Any, where: str) -> dict:
    """Check a labelled record (the trainer's input)."""
    if not isinstance(rec, Mapping):
        raise LabelDataError(f"{where}: expected a JSON object")
    for k in ("problem", "steps", "labels"):
        if k not in rec:
            raise LabelDataError(f"{where}: missing field {k!r}")
    steps, labels = rec["steps"], rec["labels"]
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise LabelDataError(f"{where}: field 'steps' must be a list of strings")
    if not isinstance(labels, list) or len(labels) > len(steps):
        raise LabelDataError(f"{where}: field 'labels' must be a list no longer than 'steps'")
    for v in labels:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise LabelDataError(f"{where}: labels must be numbers in [0, 1], got {v!r}")
    return dict(rec)


def read_records(path: str | Path) -> list[dict]:
    """Validated labelled records of a JSONL file."""
    return [validate_record(r, f"{path}:{r.pop('_line')}") for r in read_jsonl(path)]


# ----------------------------------------------------------------------------------------------- writing
def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and a rename (never half-written)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_jsonl(path: str | Path, rows: Iterable[Mapping]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class ResumableWriter:
    """Append-only JSONL output keyed by ``id``: finished ids are skipped on a re-run, none is written twice.

    On open, an existing file is read; a torn last line (a crash mid-write) is cut off, and a file that is not
    this format raises LabelDataError. Each :meth:`write` appends one complete line and flushes it to disk.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.done: set[str] = set()
        if self.path.exists():
            raw = self.path.read_bytes()
            good = raw
            if raw and not raw.endswith(b"\n"):
                good = raw[: raw.rfind(b"\n") + 1]
            for n, line in enumerate(good.decode("utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise LabelDataError(f"{self.path}:{n}: existing output is not JSONL; "
                                         "move it away or pick another output") from None
                if not isinstance(rec, dict) or "id" not in rec:
                    raise LabelDataError(f"{self.path}:{n}: existing output line has no 'id'")
                self.done.add(str(rec["id"]))
            if good != raw:
                atomic_write_text(self.path, good.decode("utf-8"))
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = None

    def write(self, rec: Mapping) -> None:
        rid = str(rec["id"])
        if rid in self.done:
            return
        if self._f is None:
            self._f = self.path.open("a", encoding="utf-8")
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(rid)

    def pending(self, items: Sequence[Mapping]) -> list[Mapping]:
        """The ``items`` whose id this output does not hold yet, in order."""
        return [it for it in items if str(it["id"]) not in self.done]

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "ResumableWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def labels_from_error(n_steps: int, earliest_error: int | None) -> list[int]:
    """Hard labels for a response with the given earliest wrong step: 1s, then one 0, later steps dropped."""
    if earliest_error is None:
        return []
    if earliest_error == -1:
        return [1] * n_steps
    return [1] * earliest_error + [0]
