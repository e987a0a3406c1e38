"""The ``rlkit search`` report folder: ``results.json``, ``accuracy.png``, ``index.html`` and
``solutions.jsonl`` (per run and problem: the chosen solution, whether it is right, the compute spent).

The folder is written under a temporary name and renamed when complete (``reward.evaluation.report``), so
it is never half-written.

Example:
    >>> write_search_report("runs/search", result, problems, config={"policy": "..."})   # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from reward.evaluation.report import _plt, _publish, _tmpdir
from reward.models.verifier import extract_answer, is_correct, reference_answer
from reward.search.beams import ranked
from reward.search.generator import Problem
from rlkit.report import html_page, samples_html

LABELS = {"beam": "beam search", "dvts": "DVTS", "bon": "Best-of-N"}


def _plot(rows: Sequence[Mapping[str, Any]], path: Path, aggregation: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[str, list[tuple[int, float, float]]] = {}
    for r in rows:
        lines.setdefault(f"{LABELS[r['method']]} (top {aggregation})", []).append(
            (r["budget"], 100 * r["accuracy"], 100 * r["accuracy_std"]))
        if r["method"] == "bon":
            for key, lab in (("majority", "majority vote"), ("weighted_majority", "weighted majority")):
                lines.setdefault(lab, []).append((r["budget"], 100 * r[key], 0.0))
    for k, (label, pts) in enumerate(lines.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    ls="--" if "major" in label else "-", label=label, color=f"C{k}")
    budgets = sorted({r["budget"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("generation budget N")
    ax.set_ylabel("accuracy (%)")
    top = max(p[1] + p[2] for pts in lines.values() for p in pts)
    ax.set_ylim(0, min(100.0, max(10.0, 1.25 * top)))  # low accuracies stay readable
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ("<table><tr><th>method</th><th>N</th><th>accuracy</th><th>majority</th><th>weighted majority</th>"
            "<th>pass@N</th><th>tokens / problem</th><th>seconds / problem</th></tr>")
    body = [f"<tr><td>{LABELS[r['method']]}</td><td>{r['budget']}</td>"
            f"<td>{r['accuracy']:.1%} ± {r['accuracy_std']:.1%}</td><td>{r['majority']:.1%}</td>"
            f"<td>{r['weighted_majority']:.1%}</td><td>{r['pass']:.1%}</td><td>{r['tokens_per_problem']:.0f}</td>"
            f"<td>{r['seconds_per_problem']:.2f}</td></tr>" for r in rows]
    return head + "".join(body) + "</table>"


def _samples(method: str, budget: int, seed: int, outcomes, problems: Sequence[Problem], accuracy: float,
             show: int) -> str:
    samples = []
    for o, p in list(zip(outcomes, problems))[:show]:
        best = ranked(o.finals)[0]
        ref = p.reference or ""
        samples.append({"question": p.question, "reference": reference_answer(ref) if ref else "?",
                        "correct": bool(ref) and is_correct(best.text, ref),
                        "steps": [[t, s] for t, s in zip(best.step_texts, best.scores)]})
    return samples_html({"label": f"{LABELS[method]}, N = {budget}, seed {seed} (the top-scored final solution)",
                         "accuracy": accuracy, "n": len(problems), "samples": samples}, limit=show)


def _solutions(result: Mapping[str, Any], problems: Sequence[Problem]):
    for (method, budget, seed), outcomes in result["outcomes"].items():
        for i, (o, p) in enumerate(zip(outcomes, problems)):
            best = ranked(o.finals)[0]
            yield {"method": method, "budget": budget, "seed": seed, "problem": i,
                   "reference": reference_answer(p.reference) if p.reference else None,
                   "answer": extract_answer(best.text),
                   "correct": bool(p.reference) and is_correct(best.text, p.reference),
                   "score": best.score, "text": best.text, "scores": best.scores, "tokens": o.tokens,
                   "samples": o.samples, "ends": [b.done for b in o.finals]}


def write_search_report(out_dir: str | os.PathLike, result: Mapping[str, Any], problems: Sequence[Problem],
                        config: Mapping[str, Any], show: int = 3) -> Path:
    """``results.json`` (config and one row per method x budget), ``accuracy.png`` (accuracy vs budget),
    ``index.html`` (the table, the plot, and the chosen solutions of the first ``show`` problems with their
    step scores, per method at the largest budget) and ``solutions.jsonl`` (one line per method x budget x
    seed x problem: the top-scored final solution, its answer and correctness, tokens and samples spent, and
    why each final solution ended)."""
    out = Path(out_dir)
    tmp = _tmpdir(out)
    try:
        rows = result["rows"]
        agg = config.get("aggregation", "min")
        (tmp / "results.json").write_text(json.dumps({"config": dict(config), "n_problems": len(problems),
                                                      "rows": rows}, indent=1))
        with (tmp / "solutions.jsonl").open("w") as f:
            for row in _solutions(result, problems):
                f.write(json.dumps(row) + "\n")
        _plot(rows, tmp / "accuracy.png", agg)
        top = max(r["budget"] for r in rows)
        parts = [f"<h1>PRM-guided search: {html.escape(str(config.get('reward', '')))} on "
                 f"{len(problems)} problems</h1>", f"<pre>{html.escape(json.dumps(dict(config), indent=1))}</pre>",
                 f"<p>accuracy: the final solution with the highest {agg} step score; ± is the std over seeds.</p>",
                 _table(rows), "<p><img src='accuracy.png' alt='accuracy vs budget'></p>"]
        for r in rows:
            if r["budget"] == top:
                seed = r["per_seed"][0]["seed"]
                parts.append(_samples(r["method"], top, seed, result["outcomes"][(r["method"], top, seed)],
                                      problems, r["per_seed"][0]["accuracy"], show))
        (tmp / "index.html").write_text(html_page("PRM-guided search", "\n".join(parts)))
        return _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
