"""Run reports: held-out evaluation of a policy, training curves (PNG) and sampled responses with their step
scores (markdown + HTML), all under ``<run>/report/``.

Example:
    >>> result = evaluate_policy("runs/x/policy", tok, eval_ds, build_reward("arithmetic"), max_new_tokens=128)
    >>> result["accuracy"]
    0.25
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from reward.generation import generate_texts
from reward.models.verifier import extract_answer, is_correct

CURVES = [("reward", "PRM reward (aggregated)"), ("outcome/accuracy", "verifier accuracy of samples"),
          ("prm/steps_per_response", "steps per response"), ("prm/step_score_mean", "mean step score"),
          ("prm/min_on_final_step", "share with min score on final step"), ("loss", "loss")]


def evaluate_policy(model, tok, dataset, step_reward, max_new_tokens: int = 128, batch_size: int = 64,
                    label: str = "") -> dict[str, Any]:
    """Greedy answers to ``dataset``'s prompts, verifier accuracy and per-step scores of every response.

    ``model`` is a model object or a path (loaded fresh; never a sharded training copy).
    """
    if isinstance(model, (str, Path)):
        model = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    model.eval()
    rows = list(dataset)
    texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    responses = [o[0] for o in generate_texts(model, tok, texts, max_new_tokens, batch_size=batch_size)]
    questions = [r["question"] for r in rows]
    refs = [r["answer"] for r in rows]
    scored = step_reward.score(questions, responses, refs)
    correct = [is_correct(resp, ref) for resp, ref in zip(responses, refs)]
    samples = [{"question": q, "response": resp, "reference": ref.split("####")[-1].strip(), "correct": c,
                "steps": [[s.text, sc] for s, sc in zip(st.steps, st.scores)]}
               for q, resp, ref, c, st in zip(questions, responses, refs, correct, scored)]
    n = max(len(correct), 1)
    lengths = [len(tok(resp, add_special_tokens=False).input_ids) for resp in responses]
    return {"label": label, "accuracy": sum(correct) / n, "n": len(correct), "samples": samples,
            "mean_steps": sum(len(s.steps) for s in scored) / n,
            # responses that end before the token limit with an answer stated, and how long responses are
            "finished": sum(extract_answer(r) is not None and k < max_new_tokens
                            for r, k in zip(responses, lengths)) / n,
            "mean_response_tokens": sum(lengths) / n, "max_new_tokens": max_new_tokens}


def plot_curves(log_history: list[dict[str, Any]], path: Path) -> list[str]:
    """Training curves to a PNG; returns the metric names plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = [(k, t) for k, t in CURVES if any(k in h for h in log_history)]
    if not found:
        return []
    cols = min(3, len(found))
    rows = (len(found) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(found):]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.flat, found):
        pts = [(h["step"], h[key]) for h in log_history if key in h and "step" in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [k for k, _ in found]


def _score_color(v: float) -> str:
    v = max(0.0, min(1.0, v))
    return f"rgb({int(255 * (1 - v))},{int(200 * v + 40)},80)"


def samples_html(result: dict[str, Any], limit: int = 8) -> str:
    parts = [f"<h2>{html.escape(result['label'])}: accuracy {result['accuracy']:.1%} on {result['n']}</h2>"]
    for s in result["samples"][:limit]:
        parts.append(f"<div class='q'><b>Q:</b> {html.escape(s['question'])} <i>(reference {html.escape(s['reference'])},"
                     f" {'correct' if s['correct'] else 'wrong'})</i></div><ol>")
        for text, score in s["steps"]:
            parts.append(f"<li><span class='score' style='background:{_score_color(score)}'>{score:.2f}</span> "
                         f"{html.escape(text)}</li>")
        parts.append("</ol>")
    return "\n".join(parts)


def html_page(title: str, body: str) -> str:
    """A standalone HTML page around ``body`` with the styles :func:`samples_html` uses."""
    return ("<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;max-width:900px;margin:auto}.score{display:inline-block;min-width:3em;"
            "text-align:center;color:#fff;border-radius:3px;margin-right:.5em}.q{margin-top:1.2em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
            "</style>" + body)


def write_report(run_dir: Path, recipe, log_history: list[dict[str, Any]], before: dict | None,
                 after: dict | None) -> Path:
    """Write ``report/index.md``, ``report/samples.html``, ``report/training.png`` and ``report/eval.json``."""
    out = Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    plotted = plot_curves(log_history, out / "training.png")
    algo = recipe.algorithm
    train = recipe.training or {}
    if algo.name == "ppo":
        credit = f"GAE over step-end rewards (gamma {train.get('gamma', 1.0)}, lambda {train.get('lam', 0.95)})"
    elif algo.name == "sft":
        credit = "none (supervised: loss on the completion)"
    else:
        credit = f"`{algo.credit}`"
    lines = [f"# {recipe.name}", "", recipe.description.strip(), "",
             f"- model: `{recipe.model}`; reward: `{recipe.reward.name}`; algorithm: `{algo.name}`; credit: {credit};"
             f" optimizer: `{recipe.optimizer.name}`; distribution: `{recipe.distribution}`",
             f"- training steps: {max([h.get('step', 0) for h in log_history] + [0])}"]
    for r in (before, after):
        if r:
            lines.append(f"- held-out accuracy {r['label']}: {r['accuracy']:.1%} of {r['n']} "
                         f"(mean steps {r['mean_steps']:.2f}; {r.get('finished', float('nan')):.0%} end with an answer "
                         f"within {r.get('max_new_tokens', '?')} tokens, mean "
                         f"{r.get('mean_response_tokens', float('nan')):.0f} tokens)")
    if plotted:
        lines += ["", "![training curves](training.png)", "", "Curves: " + ", ".join(plotted)]
    lines += ["", "Sampled responses with per-step scores: [samples.html](samples.html)",
              "TensorBoard: `tensorboard --logdir " + str(Path(run_dir) / "tensorboard") + "`", ""]
    for r in (before, after):
        if r:
            lines.append(f"## {r['label']}")
            for s in r["samples"][:3]:
                lines.append(f"**Q:** {s['question']}  (reference {s['reference']}, "
                             f"{'correct' if s['correct'] else 'wrong'})")
                lines += [f"{i + 1}. [{score:.2f}] {text}" for i, (text, score) in enumerate(s["steps"])]
                lines.append("")
    (out / "index.md").write_text("\n".join(lines))
    body = "\n".join(samples_html(r) for r in (before, after) if r)
    (out / "samples.html").write_text(html_page("samples", body))
    (out / "eval.json").write_text(json.dumps({"before": before, "after": after}, indent=1))
    return out


@dataclass
class StageResult:
    """One stage of a chained run, as the chain report shows it (read back from the stage's run folder)."""

    name: str
    algorithm: str
    optimizer: str
    run_dir: Path
    steps: int
    wall_seconds: float
    before: dict | None
    after: dict | None


def read_stage_result(name: str, recipe, run_dir: Path, wall_seconds: float) -> StageResult:
    """A finished stage's numbers from its ``report/eval.json`` and ``metrics.json``."""
    run_dir = Path(run_dir)
    try:
        evals = json.loads((run_dir / "report" / "eval.json").read_text())
    except (OSError, ValueError):
        evals = {}
    try:
        history = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        history = []
    steps = max([h.get("step", 0) for h in history] + [0])
    return StageResult(name, recipe.algorithm.name, recipe.optimizer.name, run_dir, steps, wall_seconds,
                       evals.get("before"), evals.get("after"))


def _pct(r: dict | None, key: str) -> str:
    return f"{r[key]:.1%}" if r and r.get(key) is not None else "-"


def write_chain_report(run_dir: Path, recipe, stages: list[StageResult]) -> Path:
    """``report/index.md`` and ``report/stages.json`` of a chained run: held-out accuracy before and after each
    stage (same problems, greedy), the share of responses that end with an answer before the token limit, steps and tokens per
    response, steps trained and wall time, with each stage's curves and report linked."""
    out = Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    first = stages[0].before if stages else None
    lines = [f"# {recipe.name}", "", recipe.description.strip(), "",
             "| stage | algorithm | optimizer | steps | wall | held-out accuracy after | finished | steps/response |"
             " tokens/response |", "|---|---|---|---|---|---|---|---|---|"]
    if first:
        lines.append(f"| (start) | | | | | {_pct(first, 'accuracy')} of {first['n']} | {_pct(first, 'finished')} | "
                     f"{first['mean_steps']:.2f} | {first.get('mean_response_tokens', float('nan')):.0f} |")
    for s in stages:
        a = s.after or {}
        lines.append(f"| [{s.name}]({os.path.relpath(s.run_dir / 'report' / 'index.md', out)}) | {s.algorithm} | "
                     f"{s.optimizer} | {s.steps} | {s.wall_seconds / 60:.1f} min | {_pct(a, 'accuracy')} of "
                     f"{a.get('n', '-')} | {_pct(a, 'finished')} | {a.get('mean_steps', float('nan')):.2f} | "
                     f"{a.get('mean_response_tokens', float('nan')):.0f} |")
    lines += ["", f"Total wall time of the stages: {sum(s.wall_seconds for s in stages) / 60:.1f} min.", ""]
    for s in stages:
        png = s.run_dir / "report" / "training.png"
        if png.is_file():
            lines += [f"## {s.name}: training curves", "", f"![{s.name}]({os.path.relpath(png, out)})", ""]
    (out / "index.md").write_text("\n".join(lines))
    summary = [{"stage": s.name, "algorithm": s.algorithm, "optimizer": s.optimizer, "steps": s.steps,
                "wall_seconds": s.wall_seconds,
                **{f"{k}_{w}": (r or {}).get(k) for w, r in (("before", s.before), ("after", s.after))
                   for k in ("accuracy", "finished", "mean_steps", "mean_response_tokens", "n")}}
               for s in stages]
    (out / "stages.json").write_text(json.dumps(summary, indent=1))
    return out
