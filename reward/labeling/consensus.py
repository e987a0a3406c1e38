"""Consensus filtering: keep a response only when MC estimation and the judge name the same earliest wrong step.

Both inputs are labelled records (see reward.labeling.io) matched by ``id``. A response is kept when both
``earliest_error`` values are equal (both -1 = "no error" included); a judge record without a verdict
(``earliest_error: None``, e.g. an unparsable critique) is never kept. Kept records carry hard labels from
the agreed location (1s, then 0 at the error, later steps dropped) and ``method: "consensus"``.

The report gives kept/total, counts by outcome, and a confusion table of the disagreements keyed by
(MC verdict, judge verdict), where a verdict is ``none``, ``step <k>`` or ``unparsable``.

Example:
    >>> mc = [{"id": "a", "problem": "p", "steps": ["x", "y"], "labels": [1, 0], "earliest_error": 1},
    ...       {"id": "b", "problem": "p", "steps": ["x", "y"], "labels": [1, 1], "earliest_error": -1}]
    >>> judge = [{"id": "a", "problem": "p", "steps": ["x", "y"], "labels": [0], "earliest_error": 0},
    ...          {"id": "b", "problem": "p", "steps": ["x", "y"], "labels": [1, 1], "earliest_error": -1}]
    >>> kept, rep = consensus(mc, judge)
    >>> [r["id"] for r in kept], rep["kept"], rep["total"], rep["disagreements"]
    (['b'], 1, 2, {('step 1', 'step 0'): 1})
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

from reward.labeling.io import LabelDataError, labels_from_error


def verdict(e: int | None) -> str:
    return "unparsable" if e is None else ("none" if e == -1 else f"step {e}")


def consensus(mc: Sequence[Mapping], judge: Sequence[Mapping]) -> tuple[list[dict], dict[str, Any]]:
    """Kept records (in MC order) and the report dict."""
    jd: dict[str, Mapping] = {}
    for r in judge:
        if "id" not in r or "earliest_error" not in r:
            raise LabelDataError("judge records need 'id' and 'earliest_error'")
        jd[str(r["id"])] = r
    kept, dis = [], Counter()
    outcome = Counter()
    total = missing = 0
    seen = set()
    for r in mc:
        if "id" not in r or "earliest_error" not in r:
            raise LabelDataError("MC records need 'id' and 'earliest_error'")
        rid = str(r["id"])
        seen.add(rid)
        j = jd.get(rid)
        if j is None:
            missing += 1
            continue
        if list(j.get("steps", r["steps"])) != list(r["steps"]):
            raise LabelDataError(f"id {rid!r}: MC and judge records have different steps")
        total += 1
        m_e, j_e = r["earliest_error"], j["earliest_error"]
        if j_e is not None and m_e == j_e:
            outcome["agree_none" if m_e == -1 else "agree_error"] += 1
            rec = {k: v for k, v in r.items() if k not in ("labels", "method")}
            rec.update(labels=labels_from_error(len(r["steps"]), m_e), earliest_error=m_e, method="consensus",
                       mc_labels=list(r.get("labels", [])))
            if "critique" in j:
                rec["critique"] = j["critique"]
            kept.append(rec)
            continue
        dis[(verdict(m_e), verdict(j_e))] += 1
        if j_e is None:
            outcome["judge_unparsable"] += 1
        elif m_e == -1:
            outcome["mc_none_judge_error"] += 1
        elif j_e == -1:
            outcome["mc_error_judge_none"] += 1
        elif j_e < m_e:
            outcome["judge_earlier"] += 1
        else:
            outcome["mc_earlier"] += 1
    report = {"total": total, "kept": len(kept), "kept_share": len(kept) / total if total else 0.0,
              "missing_judge": missing, "missing_mc": sum(1 for k in jd if k not in seen),
              "outcomes": dict(outcome), "disagreements": dict(dis)}
    return kept, report


def format_report(report: Mapping[str, Any]) -> str:
    """Markdown text of a consensus report: counts and the disagreement confusion table."""
    lines = [f"kept {report['kept']}/{report['total']} ({100 * report['kept_share']:.1f}%)"]
    if report.get("missing_judge") or report.get("missing_mc"):
        lines.append(f"unmatched: {report['missing_judge']} MC-only ids, {report['missing_mc']} judge-only ids")
    for k, v in sorted(report["outcomes"].items()):
        lines.append(f"  {k}: {v}")
    dis = report["disagreements"]
    if not dis:
        lines.append("no disagreements")
        return "\n".join(lines)

    def key(v: str) -> tuple[int, int]:
        return (0, -1) if v == "none" else (2, 0) if v == "unparsable" else (1, int(v.split()[1]))

    rows = sorted({m for m, _ in dis}, key=key)
    cols = sorted({j for _, j in dis}, key=key)
    lines += ["", "disagreements (rows: MC, columns: judge)", "",
              "| MC \\ judge | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(str(dis.get((r, c), "")) for c in cols) + " |")
    return "\n".join(lines)
