"""Evaluation reports: one folder per run with ``report.md``, ``metrics.json`` and PNG plots.

Folders are written under a temporary name and renamed when complete, so a report folder is never
half-written.

Example:
    >>> res = evaluate_processbench(model, data, threshold=0.5)          # doctest: +SKIP
    >>> write_processbench_report(res, "runs/eval-pb", title="my PRM")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from reward.evaluation.processbench import pct


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _publish(tmp: Path, out: Path) -> Path:
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def _tmpdir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _json_default(v: Any) -> Any:
    if hasattr(v, "scores"):
        return list(v.scores)
    return str(v)


def write_processbench_report(result: Mapping[str, Any], out_dir: str | os.PathLike, title: str = "ProcessBench",
                              config: Mapping[str, Any] | None = None) -> Path:
    """``report.md`` (table per split + mean), ``metrics.json``, ``predictions.jsonl``, ``processbench.png``
    (per-split error/correct accuracy and F1) and ``threshold_sweep.png`` when a threshold was tuned."""
    out = Path(out_dir)
    tmp = _tmpdir(out)
    try:
        splits, mean = result["splits"], result["mean"]
        lines = [f"# {title}", ""]
        if config:
            lines += ["```json", json.dumps(config, indent=2, default=str), "```", ""]
        if result.get("kind") == "critic":
            lines.append("Predictions: the critic's verdict (unparsable verdicts count as wrong).")
        else:
            how = (f"tuned on split `{result['threshold_split']}`" if result.get("threshold_split")
                   else "fixed")
            lines.append(f"Predictions: earliest step with score < threshold {result['threshold']} ({how}).")
        lines += ["", "| split | n | n err | n correct | acc (error) | acc (correct) | F1 |",
                  "|---|---|---|---|---|---|---|"]
        for name, m in splits.items():
            lines.append(f"| {name} | {m['n']} | {m['n_error']} | {m['n_correct']} | {pct(m['error_acc'])} | "
                         f"{pct(m['correct_acc'])} | {pct(m['f1'])} |")
        lines.append(f"| **mean** | {mean['n']} | | | {pct(mean['error_acc'])} | {pct(mean['correct_acc'])} | "
                     f"**{pct(mean['f1'])}** |")
        lines += ["", "Values in %. F1 = 2ab/(a+b) of the two accuracies; mean = plain mean over splits.", ""]
        unp = sum(m.get("n_unparsable", 0) for m in splits.values())
        if unp:
            lines += [f"Unparsable verdicts: {unp}", ""]
        plt = _plt()
        names = list(splits)
        fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(names) + 2), 3.5))
        w = 0.27
        for k, (key, lab) in enumerate((("error_acc", "acc (error)"), ("correct_acc", "acc (correct)"),
                                        ("f1", "F1"))):
            ax.bar([i + (k - 1) * w for i in range(len(names))],
                   [100 * (splits[n][key] or 0.0) for n in names], w, label=lab)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.set_title(f"{title}: mean F1 {pct(mean['f1'])}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(tmp / "processbench.png", dpi=100)
        plt.close(fig)
        lines.append("![per-split metrics](processbench.png)")
        if result.get("sweep"):
            xs, ys = zip(*result["sweep"])
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            ax.plot(xs, [100 * y for y in ys], marker="o")
            ax.axvline(result["threshold"], color="gray", ls="--")
            ax.set_xlabel("threshold")
            ax.set_ylabel(f"F1 on {result['threshold_split']} (%)")
            fig.tight_layout()
            fig.savefig(tmp / "threshold_sweep.png", dpi=100)
            plt.close(fig)
            lines += ["", "![threshold sweep](threshold_sweep.png)"]
        (tmp / "report.md").write_text("\n".join(lines) + "\n")
        metrics = {k: result[k] for k in ("splits", "mean", "threshold", "threshold_split", "sweep", "kind")}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
        with (tmp / "predictions.jsonl").open("w") as f:
            for name, preds in result.get("predictions", {}).items():
                scores = result.get("scores", {}).get(name, [])
                for i, p in enumerate(preds):
                    row = {"split": name, "index": i, "prediction": p}
                    if i < len(scores):
                        row["scores"] = list(scores[i].scores)
                    f.write(json.dumps(row) + "\n")
        return _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bon_report(result: Mapping[str, Any], out_dir: str | os.PathLike, title: str = "Best-of-N",
                     config: Mapping[str, Any] | None = None) -> Path:
    """``report.md``, ``metrics.json`` and ``bon.png`` (BoN per aggregation next to maj@N and pass@N)."""
    out = Path(out_dir)
    tmp = _tmpdir(out)
    try:
        bon = result["bon"]
        lines = [f"# {title}", ""]
        if config:
            lines += ["```json", json.dumps(config, indent=2, default=str), "```", ""]
        lines += [f"{result['n_problems']} problems, {result['n_responses']} responses, N = {result['N']}", "",
                  "| selection | accuracy |", "|---|---|"]
        for k, v in bon.items():
            lines.append(f"| BoN ({k}) | {pct(v)} |")
        lines += [f"| maj@N | {pct(result['maj@n'])} |", f"| pass@N | {pct(result['pass@n'])} |", "",
                  f"Responses whose minimum step score is on the final step: {pct(result['min_on_last'])}% "
                  f"(of {result['n_min_on_last']} responses with >= 2 steps; high values mean the PRM acts like an "
                  "outcome RM).", ""]
        plt = _plt()
        labels = [f"BoN {k}" for k in bon] + ["maj@N", "pass@N"]
        vals = [100 * v for v in bon.values()] + [100 * result["maj@n"], 100 * result["pass@n"]]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar(labels, vals, color=["C0"] * len(bon) + ["C1", "C2"])
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        fig.savefig(tmp / "bon.png", dpi=100)
        plt.close(fig)
        lines.append("![best-of-N](bon.png)")
        (tmp / "report.md").write_text("\n".join(lines) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(dict(result), indent=2, default=str))
        return _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
