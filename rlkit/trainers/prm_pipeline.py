"""The PRM research loop as one recipe: sample -> MC labels + judge labels -> consensus -> train a PRM -> evaluate.

``algorithm.name: prm_pipeline`` (rlkit/recipes/prm_pipeline_embedded.yaml). Every stage is a library call that also
exists on its own (``rlkit label``, ``rlkit train`` with ``algorithm.name: prm``, ``rlkit eval``); this module
only wires them together, splits the problems into training and held-out ones, and prints every count.

Stages and their files in the run folder:

1. ``data/responses.jsonl``: ``samples_per_problem`` responses per problem from the policy (``model``),
   split into steps with ``step_split``; responses without a step are dropped (counted).
2. ``data/mc.jsonl``: Monte-Carlo labels, ``mc_rollouts`` completions from each step prefix (hard labels by
   default; ``label_mode: soft`` for the fraction right).
3. ``data/judge.jsonl``: the llm-judge's earliest wrong step (``judge_model``, default the policy itself);
   unparsable verdicts are counted, never guessed.
4. ``data/consensus.jsonl`` and ``report/consensus.md``: responses where MC and the judge agree on the
   earliest wrong step (or both say none), with kept/total and the disagreement table. When consensus keeps
   fewer than ``min_kept`` training responses the PRM trains on the MC labels instead (printed and recorded).
5. ``prm/final``: the PRM (Qwen2.5-Math-PRM layout, :func:`rlkit.trainers.prm.train_prm`) trained on the
   training problems' records; loads with ``build_reward("qwen-prm", model=<run>/prm/final)``. Under
   ``distribution: zero2|zero3`` this stage alone runs on ``num_processes`` workers (``prm/`` is then a run
   folder of its own, started with ``accelerate launch``); the other stages stay in this process.
6. ``report/``: on the held-out problems, for the trained PRM and for its untrained initialisation (same
   backbone, fresh head): step accuracy, earliest-error identification (ProcessBench metrics, threshold tuned
   on the training records, never on the held-out ones) and Best-of-N over the sampled responses
   (min/last/product/mean, maj@N, pass@N, share of responses whose minimum step score is the final step).
   ``pipeline_summary.json`` holds every count and number.

Example:
    >>> from rlkit.config import load_recipe
    >>> from rlkit.launch import train
    >>> run = train(load_recipe("prm_pipeline_embedded", ["training.num_train_epochs=1"]))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from transformers import TrainingArguments

from reward.evaluation.bon import best_of_n, score_candidates
from reward.evaluation.processbench import evaluate_processbench
from reward.evaluation.report import write_bon_report, write_processbench_report
from reward.labeling.consensus import consensus, format_report
from reward.labeling.io import atomic_write_jsonl, atomic_write_text, read_jsonl
from reward.labeling.judge import run_judge
from reward.labeling.mc import STEP_JOIN, build_completer, run_mc
from reward.models.judge import LLMJudge
from reward.registry import build_reward
from reward.steps import SEPARATORS, StepSplitter
from rlkit.data import DEFAULT_SYSTEM_PROMPT, load_prompts
from rlkit.distributed import launch_workers, write_run_files
from rlkit.models import resolve_model
from rlkit.trainers.prm_pipeline_config import PipelineError, pipeline_settings
from rlkit.trainers.prm_trainer import prm_from_causal_lm, train_prm


def split_problems(n: int, heldout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) problem indices; at least one of each when ``n >= 2``."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    k = min(max(1, round(n * heldout_fraction)), n - 1) if n >= 2 else 0
    return sorted(idx[k:]), sorted(idx[:k])


def _say(msg: str) -> None:
    print(f"[prm_pipeline] {msg}", flush=True)


def _strip(rows: Sequence[Mapping]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "_line"} for r in rows]


def sample_responses(problems: Sequence[Mapping], completer: Any, samples: int, splitter: Any,
                     heldout: set[int]) -> tuple[list[dict], dict[str, int]]:
    """``samples`` responses per problem as labelling items ``{"id", "problem", "steps", "reference",
    "response", "split"}``; responses with no step are dropped and counted."""
    outs = completer([completer.prompt(p["question"]) for p in problems], samples)
    items, empty = [], 0
    for i, (p, texts) in enumerate(zip(problems, outs)):
        for j, text in enumerate(texts):
            steps = [s.text for s in splitter.split(text)]
            if not steps:
                empty += 1
                continue
            items.append({"id": f"p{i}-s{j}", "problem": p["question"], "steps": steps, "response": text,
                          "reference": p["answer"], "split": "heldout" if i in heldout else "train"})
    return items, {"problems": len(problems), "sampled": len(problems) * samples, "kept": len(items),
                   "no_steps": empty, "steps": sum(len(it["steps"]) for it in items)}


def as_processbench(records: Sequence[Mapping]) -> list[dict]:
    """Labelled records as ProcessBench-schema items (label = earliest wrong step, -1 when none); records
    whose earliest error is unknown are left out."""
    out = []
    for r in records:
        e = r.get("earliest_error")
        if e is None or not r.get("steps"):
            continue
        out.append({"id": r["id"], "problem": r["problem"], "steps": list(r["steps"]), "label": int(e)})
    return out


def bon_groups(items: Sequence[Mapping]) -> list[dict]:
    """Best-of-N rows ``{"problem", "reference", "responses"}`` from the sampled items of each problem."""
    by: dict[str, dict] = {}
    for it in items:
        pid = it["id"].rsplit("-s", 1)[0]
        row = by.setdefault(pid, {"problem": it["problem"], "reference": it["reference"], "responses": []})
        row["responses"].append(it["response"])
    return list(by.values())


def evaluate_prm(model: Any, step_split: str, max_steps: int, train_pb: Sequence[Mapping],
                 heldout_pb: Sequence[Mapping], heldout_groups: Sequence[Mapping], out_dir: Path,
                 title: str, tokenizer: Any = None) -> dict[str, Any]:
    """Earliest-error identification and Best-of-N of a PRM (a folder, or a built model with ``tokenizer``) on
    the held-out data, with the threshold tuned on ``train_pb``; writes the two reports under ``out_dir``."""
    prm = build_reward("qwen-prm", model=model, tokenizer=tokenizer,
                       splitter={"mode": step_split, "max_steps": max_steps})
    result: dict[str, Any] = {}
    if heldout_pb:
        pb = evaluate_processbench(prm, {"heldout": heldout_pb}, threshold_split="train",
                                   threshold_data=list(train_pb) or None)
        write_processbench_report(pb, out_dir / "earliest_error", title=f"Earliest-error identification: {title}")
        result["earliest_error"] = {"threshold": pb["threshold"], **pb["splits"]["heldout"]}
    if heldout_groups:
        bon = best_of_n(score_candidates(prm, heldout_groups))
        write_bon_report(bon, out_dir / "best_of_n", title=f"Best-of-N: {title}")
        result["best_of_n"] = bon
    return result


def run_prm_pipeline(recipe: Any, run_dir: str | Path, completer: Any = None, judge: Any = None) -> dict[str, Any]:
    """Run every stage for ``recipe`` into ``run_dir``; returns (and writes) the summary.

    ``completer`` / ``judge``: prebuilt sampler and llm-judge (tests pass tiny or scripted ones); by default
    both come from the recipe (``model``, ``generation.backend``, ``training.judge_model``).
    """
    from transformers import set_seed


    t_start = time.time()
    run_dir = Path(run_dir)
    data_dir, report_dir = run_dir / "data", run_dir / "report"
    data_dir.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    cfg = pipeline_settings(recipe.training)
    set_seed(recipe.seed)
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)

    # ---- problems and responses
    d = recipe.data
    ds = load_prompts(d.train, d.train_split, d.num_train, d.prompt_field, d.answer_field, seed=d.seed)
    problems = [{"question": r["question"], "answer": r["answer"]} for r in ds]
    train_idx, held_idx = split_problems(len(problems), float(cfg["heldout_fraction"]), recipe.seed)
    model_path = resolve_model(recipe.model)
    system = d.system_prompt if d.system_prompt is not None else DEFAULT_SYSTEM_PROMPT
    if completer is None:
        completer = build_completer(model_path, backend=recipe.generation.backend,
                                    max_new_tokens=int(cfg["max_new_tokens"]),
                                    temperature=float(cfg["sample_temperature"]),
                                    batch_size=int(cfg["sample_batch_size"]), system_prompt=system,
                                    seed=recipe.seed)
    splitter = StepSplitter(cfg["step_split"], max_steps=int(cfg["max_response_steps"]))
    step_join = SEPARATORS.get(cfg["step_split"], STEP_JOIN)
    t0 = time.time()
    items, sstats = sample_responses(problems, completer, int(cfg["samples_per_problem"]), splitter, set(held_idx))
    lap("sample", t0)
    if not items:
        raise PipelineError(f"no sampled response has a step ({sstats['sampled']} sampled)")
    atomic_write_jsonl(data_dir / "responses.jsonl", items)
    sstats.update(train_problems=len(train_idx), heldout_problems=len(held_idx))
    _say(f"[1/6] responses: {json.dumps(sstats)} ({timings['sample']}s)")

    # ---- MC labels
    t0 = time.time()
    mstats = run_mc(items, completer, str(data_dir / "mc.jsonl"), n=int(cfg["mc_rollouts"]),
                    mode=cfg["label_mode"], step_join=step_join, items_per_call=int(cfg["sample_batch_size"]))
    lap("mc", t0)
    _say(f"[2/6] MC labels ({cfg['mc_rollouts']} rollouts a step, {cfg['label_mode']}): {json.dumps(mstats)} "
         f"({timings['mc']}s)")

    # ---- judge labels
    if judge is None:
        if cfg["judge_model"]:
            jpath = resolve_model(cfg["judge_model"])
            judge = LLMJudge(model=jpath, max_new_tokens=int(cfg["judge_max_new_tokens"]))
        else:  # the policy judges itself: reuse its loaded weights
            judge = LLMJudge(model=completer.model, tokenizer=completer.tok,
                             max_new_tokens=int(cfg["judge_max_new_tokens"]))
    t0 = time.time()
    jstats = run_judge(items, judge, str(data_dir / "judge.jsonl"), batch_size=int(cfg["sample_batch_size"]))
    lap("judge", t0)
    _say(f"[3/6] judge labels: {json.dumps(jstats)} ({timings['judge']}s)")

    # ---- consensus
    split_of = {it["id"]: it["split"] for it in items}
    mc = _strip(read_jsonl(data_dir / "mc.jsonl"))
    jd = _strip(read_jsonl(data_dir / "judge.jsonl"))
    kept, creport = consensus(mc, jd)
    atomic_write_jsonl(data_dir / "consensus.jsonl", kept)
    ctext = format_report(creport)
    atomic_write_text(report_dir / "consensus.md", "# Consensus filtering\n\n" + ctext + "\n")
    _say("[4/6] consensus: " + ctext.replace("\n", "\n               "))
    kept_train = [r for r in kept if split_of.get(r["id"]) == "train" and r["labels"]]
    use_consensus = len(kept_train) >= int(cfg["min_kept"])
    source = "consensus" if use_consensus else "mc"
    pool = kept if use_consensus else mc
    if not use_consensus:
        _say(f"      consensus kept {len(kept_train)} training responses < min_kept {cfg['min_kept']}: "
             "the PRM trains and is evaluated on the MC labels")
    train_recs = [r for r in pool if split_of.get(r["id"]) == "train" and r["labels"]]
    held_recs = [r for r in pool if split_of.get(r["id"]) == "heldout" and r["labels"]]
    if not train_recs:
        raise PipelineError("no labelled training response left after labelling")
    atomic_write_jsonl(data_dir / "prm_train.jsonl", train_recs)
    if held_recs:
        atomic_write_jsonl(data_dir / "prm_heldout.jsonl", held_recs)

    # ---- PRM training

    train_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    data_abs = data_dir.resolve()
    prm_recipe = dataclasses.replace(
        recipe, name=f"{recipe.name}-prm", algorithm=dataclasses.replace(recipe.algorithm, name="prm"),
        training={**{k: v for k, v in recipe.training.items() if k in train_fields},
                  "max_length": int(cfg["prm_max_length"])},
        data=dataclasses.replace(d, train=str(data_abs / "prm_train.jsonl"),
                                 eval=str(data_abs / "prm_heldout.jsonl") if held_recs else None,
                                 num_train=None, num_eval=None, system_prompt=None))
    t0 = time.time()
    if recipe.distribution == "none":
        prm_summary = train_prm(prm_recipe, run_dir / "prm")
    else:
        prm_summary = _train_prm_distributed(prm_recipe, run_dir / "prm")
    lap("train", t0)
    _say(f"[5/6] PRM trained on {len(train_recs)} {source}-labelled responses "
         f"({prm_summary['train']['steps']} steps: {prm_summary['train']['positive']} positive, "
         f"{prm_summary['train']['negative']} negative); loss {prm_summary['first_logged_loss']} -> "
         f"{prm_summary['last_logged_loss']} ({timings['train']}s)")

    # ---- evaluation on held-out problems: trained PRM vs its untrained initialisation
    t0 = time.time()
    train_pb, held_pb = as_processbench(train_recs), as_processbench(held_recs)
    held_groups = bon_groups([it for it in items if it["split"] == "heldout"])
    evals = {}
    for name in ("trained", "init"):
        model, tok = (prm_summary["model_dir"], None) if name == "trained" else _init_prm(model_path, recipe.seed)
        evals[name] = evaluate_prm(model, cfg["step_split"], int(cfg["max_response_steps"]), train_pb, held_pb,
                                   held_groups, report_dir / name, f"{name} PRM, held-out problems", tokenizer=tok)
        del model
    lap("evaluate", t0)
    before, after = prm_summary.get("eval_before") or {}, prm_summary.get("eval_after") or {}
    summary = {"label_source": source, "responses": sstats, "mc": mstats, "judge": jstats,
               "consensus": {k: creport[k] for k in ("kept", "total") if k in creport},
               "consensus_kept_train": len(kept_train), "prm_train_records": len(train_recs),
               "prm_heldout_records": len(held_recs), "prm": prm_summary, "evaluation": evals,
               "heldout_step_accuracy": {"init": before.get("accuracy"), "trained": after.get("accuracy")},
               "seconds": {**timings, "total": round(time.time() - t_start, 1)}, "model_dir": prm_summary["model_dir"]}
    atomic_write_text(run_dir / "pipeline_summary.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(report_dir / "index.md", _report_markdown(summary))
    _say(f"[6/6] held-out: {_headline(summary)} ({timings['evaluate']}s; total {summary['seconds']['total']}s)")
    _say(f"report: {report_dir / 'index.md'}; PRM: {prm_summary['model_dir']}")
    return summary


def _train_prm_distributed(prm_recipe: Any, prm_dir: Path) -> dict[str, Any]:
    """Stage 5 under ``distribution: zero2|zero3``: ``prm_dir`` becomes a run folder of its own (recipe +
    DeepSpeed config) whose ``num_processes`` workers ``accelerate launch`` starts; rank 0's
    ``prm_summary.json`` is the result. Sampling and labelling stay in this process."""
    prm_dir.mkdir(parents=True, exist_ok=True)
    write_run_files(prm_recipe, prm_dir)
    _say(f"[5/6] training the PRM on {prm_recipe.num_processes} processes ({prm_recipe.distribution})")
    try:
        launch_workers(prm_recipe, prm_dir)
    except RuntimeError as e:
        raise PipelineError(f"PRM training stage: {e}") from None
    return json.loads((prm_dir / "prm_summary.json").read_text())


def _init_prm(model_path: str, seed: int) -> tuple[Any, Any]:
    """The untrained baseline, in memory: the same backbone with a fresh 2-way head (seeded as training was)."""
    import torch


    torch.manual_seed(seed)
    return prm_from_causal_lm(model_path)


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _headline(s: Mapping[str, Any]) -> str:
    parts = []
    acc = s["heldout_step_accuracy"]
    parts.append(f"step accuracy {_fmt(acc['init'])} -> {_fmt(acc['trained'])}")
    ee = {k: (v.get("earliest_error") or {}).get("f1") for k, v in s["evaluation"].items()}
    parts.append(f"earliest-error F1 {_fmt(ee.get('init'))} -> {_fmt(ee.get('trained'))}")
    bon = {k: (v.get("best_of_n") or {}).get("bon", {}).get("min") for k, v in s["evaluation"].items()}
    parts.append(f"BoN(min) {_fmt(bon.get('init'))} -> {_fmt(bon.get('trained'))}")
    return "; ".join(parts) + " (untrained head -> trained)"


def _report_markdown(s: Mapping[str, Any]) -> str:
    lines = ["# PRM pipeline", "",
             f"Labels used for training: **{s['label_source']}** ({s['prm_train_records']} training responses, "
             f"{s['prm_heldout_records']} held-out).", "",
             "| stage | counts | seconds |", "|---|---|---|"]
    for stage, key in (("sample", "responses"), ("mc", "mc"), ("judge", "judge")):
        lines.append(f"| {stage} | `{json.dumps(s[key])}` | {s['seconds'].get(stage, '-')} |")
    lines.append(f"| consensus | kept {s['consensus'].get('kept')} / {s['consensus'].get('total')} "
                 "(see consensus.md) | - |")
    lines.append(f"| train | `{json.dumps(s['prm']['train'])}` | {s['seconds'].get('train', '-')} |")
    lines += ["", "## Held-out problems: untrained head vs trained PRM", "",
              "| metric | init | trained |", "|---|---|---|"]
    acc = s["heldout_step_accuracy"]
    lines.append(f"| step accuracy | {_fmt(acc['init'])} | {_fmt(acc['trained'])} |")
    ev = s["evaluation"]
    for key, label in (("error_acc", "earliest-error acc (erroneous)"), ("correct_acc", "earliest-error acc "
                       "(correct)"), ("f1", "earliest-error F1")):
        lines.append(f"| {label} | " + " | ".join(_fmt((ev[m].get("earliest_error") or {}).get(key))
                                                   for m in ("init", "trained")) + " |")
    for agg in ("min", "last", "product", "mean"):
        lines.append(f"| BoN ({agg}) | " + " | ".join(_fmt((ev[m].get("best_of_n") or {}).get("bon", {}).get(agg))
                                                      for m in ("init", "trained")) + " |")
    for key in ("maj@n", "pass@n", "min_on_last"):
        lines.append(f"| {key} | " + " | ".join(_fmt((ev[m].get("best_of_n") or {}).get(key))
                                               for m in ("init", "trained")) + " |")
    lines += ["", "Reports per model: `init/` and `trained/` (earliest_error/, best_of_n/).", ""]
    return "\n".join(lines)
