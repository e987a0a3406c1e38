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
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from reward.generation import generate_texts
from reward.models.verifier import is_correct

CURVES = [("reward", "PRM reward (aggregated)"), ("outcome/accuracy", "verifier accuracy of samples"),
          ("prm/steps_per_response", "steps per response"), ("prm/step_score_mean", "mean step score"),
          ("prm/min_on_final_step", "share with min score on final step"), ("loss", "loss")]


def evaluate_policy(model, tok, dataset, step_reward, max_new_tokens: int = 128, batch_size: int = 16,
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
    return {"label": label, "accuracy": sum(correct) / max(len(correct), 1), "n": len(correct), "samples": samples,
            "mean_steps": sum(len(s.steps) for s in scored) / max(len(scored), 1)}


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
                         f"(mean steps {r['mean_steps']:.2f})")
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
