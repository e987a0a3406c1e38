"""Two-stage critique verifier (the Math-Minos recipe): learn to *explain* step correctness, then classify.

Stage 1 - supervised fine-tuning (TRL ``SFTTrainer``) of the verifier backbone (a causal LM) on step-wise
natural-language feedback: for each step whether it is correct and why, ending with the verdict on the final
answer (:func:`format_critique`)::

    Step 1: correct. 48 / 2 = 24 is the number sold in May.
    Step 2: incorrect. 48 + 24 is 72, not 73.
    Final answer: incorrect.

The feedback comes from one of three sources (:func:`build_feedback`):

* ``file``: records that already hold it (``critique``: the whole text, or ``feedback``: one reason per step);
* ``template``: written from the step labels alone (no reasons): cheap, deterministic, a baseline;
* ``judge``: the ``llm-judge`` critic is shown the step labels (label-aware prompting: MC or consensus labels
  from ``rlkit label``) and asked for one reason per step. The verdict words always come from the labels; a
  reply that contradicts them or gives no reason for a step falls back to the template line, and is counted.

Stage 2 - the stage-1 checkpoint is trained further as a classifier: a PRM (``rlkit.trainers.prm``, the
``qwen-prm`` layout) or a listwise ORM (``rlkit.trainers.orm``). At inference only the classifier runs. The
summary records that stage 2 starts from the stage-1 weights (max |difference| of every backbone tensor
between stage 2's initial model and the stage-1 checkpoint, 0.0) and that stage 1 moved them (max |change|
from the base model, > 0).

Records (labelled JSONL, the output of ``rlkit label``): ``{"id", "problem", "steps", "labels", "reference"?,
"final_answer_correct"?, "critique"? | "feedback"?}``; ``labels`` cover the steps up to and including the
first wrong one. Records without labels (unparsable judge verdicts) are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from transformers import TrainingArguments

from reward.labeling.io import atomic_write_jsonl, atomic_write_text, read_records
from reward.models.judge import solution_lines
from reward.models.verifier import is_correct
from reward.registry import build_reward
from rlkit.distributed import cuda_available, is_main_process, single_rank_hf, wait_for_everyone
from rlkit.models import resolve_model
from rlkit.trainers.common import load_backbone_tokenizer, save_final, write_summary
from rlkit.trainers.critique_config import CRITIQUE_OWN_FIELDS, FEEDBACK_SOURCES, CritiqueVerifierConfig
from rlkit.trainers.orm_trainer import orm_from_causal_lm, train_orm
from rlkit.trainers.prm_trainer import prm_from_causal_lm, train_prm

STAGE2_KINDS = ("prm", "orm")


class CritiqueDataError(ValueError):
    """Bad critique-verifier data or settings."""


# ----------------------------------------------------------------------------------------------- text formats
def critique_request(problem: str, steps: Sequence[str]) -> str:
    """The user turn of a stage-1 example: the problem, the numbered steps and what to write."""
    lines = ["Verify the following step-by-step solution to a math problem.", "", "Problem:", problem.strip(), "",
             "Solution:"]
    for k, s in enumerate(steps, 1):
        lines += [f"Step {k}: {s.strip()}", ""]
    lines.append("For each step write 'Step k: correct.' or 'Step k: incorrect.' followed by a short reason, "
                 "stop after the first incorrect step, and end with 'Final answer: correct.' or "
                 "'Final answer: incorrect.'")
    return "\n".join(lines)


def step_verdicts(labels: Sequence[float], n_steps: int) -> list[bool]:
    """Verdict per critiqued step: True/False for the labelled steps (a step is correct when its label > 0,
    as in the PRM trainer's hard labels), stopping at the first wrong one."""
    out = []
    for y in labels[:n_steps]:
        out.append(float(y) > 0.0)
        if not out[-1]:
            break
    return out


def final_answer_correct(record: Mapping, verdicts: Sequence[bool]) -> bool:
    """``final_answer_correct`` when the record has it; else the verifier's check against ``reference``; else
    whether every step is labelled correct."""
    v = record.get("final_answer_correct")
    if isinstance(v, bool):
        return v
    if record.get("reference") is not None:
        return is_correct("\n\n".join(record["steps"]), str(record["reference"]))
    return len(verdicts) == len(record["steps"]) and all(verdicts)


def format_critique(verdicts: Sequence[bool], reasons: Sequence[str | None], final_correct: bool) -> str:
    """The stage-1 target text: one line per critiqued step, then the final-answer verdict.

    Example:
        >>> print(format_critique([True, False], ["24 is right.", None], False))
        Step 1: correct. 24 is right.
        Step 2: incorrect.
        Final answer: incorrect.
    """
    lines = []
    for k, (ok, why) in enumerate(zip(verdicts, reasons), 1):
        head = f"Step {k}: {'correct' if ok else 'incorrect'}."
        why = (why or "").strip()
        lines.append(f"{head} {why}" if why else head)
    lines.append(f"Final answer: {'correct' if final_correct else 'incorrect'}.")
    return "\n".join(lines)


def judge_feedback_prompt(problem: str, steps: Sequence[str], verdicts: Sequence[bool]) -> str:
    """Label-aware request to the critic: the verdicts are given, the critic explains them."""
    lines = ["Here is a step-by-step solution to a math problem, with the verdict on each step already known.",
             "", *solution_lines(problem, steps[:len(verdicts)])]
    lines.append("Known verdicts: " + "; ".join(f"Step {k} is {'correct' if ok else 'incorrect'}"
                                                for k, ok in enumerate(verdicts, 1)) + ".")
    lines.append("Explain each verdict in one sentence, one line per step, exactly in the form "
                 "'Step k: correct. <reason>' or 'Step k: incorrect. <reason>'.")
    return "\n".join(lines)


_LINE = re.compile(r"^\W*step\s*(\d+)\s*[:.)-]\s*(correct|incorrect|wrong|right)\b[.:,;]?\s*(.*)$", re.I)


def parse_judge_reasons(reply: str, verdicts: Sequence[bool]) -> tuple[list[str | None], int]:
    """Reasons per step from a critic's reply, and how many steps fell back (missing line, empty reason, or a
    verdict word contradicting the label)."""
    found: dict[int, tuple[bool, str]] = {}
    for line in (reply or "").splitlines():
        m = _LINE.match(line.strip())
        if m:
            k = int(m.group(1))
            if k not in found:
                found[k] = (m.group(2).lower() in ("correct", "right"), m.group(3).strip())
    reasons, fallback = [], 0
    for k, ok in enumerate(verdicts, 1):
        got = found.get(k)
        if got is None or got[0] != ok or not got[1]:
            reasons.append(None)
            fallback += 1
        else:
            reasons.append(got[1])
    return reasons, fallback


# ----------------------------------------------------------------------------------------------- feedback
def build_feedback(records: Sequence[Mapping], source: str = "template", judge: Any = None,
                   batch_size: int = 8) -> tuple[list[dict], dict[str, int]]:
    """Stage-1 examples ``{"id", "prompt": [user msg], "completion": [assistant msg]}`` (TRL's conversational
    prompt-completion layout: the loss covers the critique only) and counts.

    ``source``: "file" (each record has ``critique`` or ``feedback``), "template" or "judge" (``judge``: an
    ``llm-judge`` reward, or any callable ``list[str] (user messages) -> list[str] (replies)``).
    Counts: records, examples, skipped (no labels, or no critique for "file"), judge_fallback_steps,
    judge_calls.
    """
    if source not in FEEDBACK_SOURCES:
        raise CritiqueDataError(f"unknown feedback source {source!r} (allowed: {', '.join(FEEDBACK_SOURCES)})")
    if source == "judge" and judge is None:
        raise CritiqueDataError("feedback source 'judge' needs a judge (llm-judge model)")
    stats = {"records": len(records), "examples": 0, "skipped": 0, "judge_fallback_steps": 0, "judge_calls": 0}
    prepared = []
    for i, r in enumerate(records):
        steps = list(r["steps"])
        if source == "file":
            text = r.get("critique")
            if not text and r.get("feedback") and r.get("labels"):
                v = step_verdicts(r["labels"], len(steps))
                text = format_critique(v, list(r["feedback"])[:len(v)], final_answer_correct(r, v))
            if not text:
                stats["skipped"] += 1
                continue
            prepared.append((r, steps, None, str(text)))
            continue
        if not r.get("labels"):
            stats["skipped"] += 1
            continue
        prepared.append((r, steps, step_verdicts(r["labels"], len(steps)), None))
    replies: list[str | None] = [None] * len(prepared)
    if source == "judge":
        ask = _judge_caller(judge)
        prompts = [judge_feedback_prompt(r["problem"], st, v) for r, st, v, _ in prepared]
        for b in range(0, len(prompts), batch_size):
            got = ask(prompts[b:b + batch_size])
            if len(got) != len(prompts[b:b + batch_size]):
                raise CritiqueDataError(f"judge returned {len(got)} replies for {len(prompts[b:b + batch_size])}")
            replies[b:b + len(got)] = got
            stats["judge_calls"] += len(got)
    out = []
    for (r, steps, v, text), reply in zip(prepared, replies):
        if text is None:
            reasons: list[str | None] = [None] * len(v)
            if reply is not None:
                reasons, fb = parse_judge_reasons(reply, v)
                stats["judge_fallback_steps"] += fb
            text = format_critique(v, reasons, final_answer_correct(r, v))
        out.append({"id": str(r.get("id", len(out))),
                    "prompt": [{"role": "user", "content": critique_request(r["problem"], steps)}],
                    "completion": [{"role": "assistant", "content": text}]})
    stats["examples"] = len(out)
    return out, stats


def _build_judge(cfg: Mapping[str, Any]) -> Any:
    """The ``llm-judge`` reward named by ``training.judge_model``, built outside any ZeRO-3 context."""
    jm = resolve_model(cfg["judge_model"])
    with single_rank_hf():
        return build_reward("llm-judge", model=jm, backend=cfg["judge_backend"],
                            max_new_tokens=cfg["judge_max_new_tokens"])


def _judge_feedback_once(records: Sequence[Mapping], cfg: Mapping[str, Any], judge: Any,
                         shared: Path) -> tuple[list[dict], dict[str, int]]:
    """``build_feedback(records, "judge", ...)`` run by rank 0 alone; other ranks read its result.

    A judge is a generative model: on every rank it would cost N times the generation (and N copies of the
    judge in memory) for identical examples. Rank 0 writes ``shared`` (the examples and counts, or the error
    that stopped it) before a barrier, so a failure on rank 0 stops every rank with the same message instead
    of leaving the others waiting. Single-process runs skip the file.
    """
    import torch.distributed as dist


    def feedback() -> tuple[list[dict], dict[str, int]]:
        return build_feedback(records, "judge", judge if judge is not None else _build_judge(cfg))

    # rlkit.launch's workers join their process group before any trainer runs
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return feedback()
    if is_main_process():
        try:
            examples, stats = feedback()
        except Exception as e:
            atomic_write_text(shared, json.dumps({"error": f"{type(e).__name__}: {e}".splitlines()[0]}))
            wait_for_everyone()
            raise
        atomic_write_text(shared, json.dumps({"examples": examples, "stats": stats}))
        wait_for_everyone()
        return examples, stats
    wait_for_everyone()
    payload = json.loads(Path(shared).read_text())
    if "error" in payload:
        raise CritiqueDataError(f"judge feedback failed on rank 0: {payload['error']}")
    print(f"[critique] rank {dist.get_rank()}: {len(payload['examples'])} judge feedback examples from rank 0 "
          "(the judge ran there only)", flush=True)
    return payload["examples"], payload["stats"]


def _judge_caller(judge: Any) -> Callable[[list[str]], list[str]]:
    """User messages -> replies, from an LLMJudge (chat-formatted through its tokenizer) or a callable."""
    gen = getattr(judge, "generate", None)
    chat = getattr(judge, "chat_prompt", None)
    if callable(gen) and callable(chat):
        return lambda msgs: list(gen([chat(m) for m in msgs]))
    if callable(judge):
        return lambda msgs: list(judge(msgs))
    raise CritiqueDataError(f"a judge must be an llm-judge or a callable, got {type(judge).__name__}")


# ----------------------------------------------------------------------------------------------- stage 1
def sft_stage(model_path: str, examples: Sequence[Mapping], out_dir: str | Path, sft_kwargs: dict[str, Any],
              tokenizer: Any = None) -> dict[str, Any]:
    """Stage 1: TRL ``SFTTrainer`` on the critique examples; saves model + tokenizer to ``out_dir``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer


    path, tok = load_backbone_tokenizer(model_path, tokenizer)
    with single_rank_hf():  # whole on every rank; under ZeRO-3 the DeepSpeed engine partitions it
        model = AutoModelForCausalLM.from_pretrained(path)
    ds = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])
    out_dir = Path(out_dir)
    args = SFTConfig(**dict(sft_kwargs, output_dir=str(out_dir / "checkpoints")))
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    if len(trainer.train_dataset) == 0:  # TRL drops examples whose critique is cut off entirely
        raise CritiqueDataError(f"stage 1: no critique fits sft_max_length={args.max_length} tokens after "
                                f"its prompt (all {len(ds)} examples dropped); raise training.sft_max_length")
    result = trainer.train()
    final = save_final(trainer, tok, out_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"model_dir": str(final), "train_loss": result.training_loss,
            "global_step": trainer.state.global_step, "first_logged_loss": losses[0] if losses else None,
            "last_logged_loss": losses[-1] if losses else None, "losses": losses}


# ----------------------------------------------------------------------------------------------- weights check
def backbone_state(model: Any) -> dict[str, torch.Tensor]:
    """The backbone's tensors (the base model under ``base_model_prefix``), heads excluded."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), model)
    return {k: v.detach().float().cpu() for k, v in base.state_dict().items()}


def max_abs_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Max |a - b| over the tensors both hold (embeddings compared on their common rows); inf if none shared."""
    best, shared = 0.0, 0
    for k, x in a.items():
        y = b.get(k)
        if y is None:
            continue
        if x.shape != y.shape:
            if x.dim() == y.dim() and x.shape[1:] == y.shape[1:]:
                n = min(x.shape[0], y.shape[0])
                x, y = x[:n], y[:n]
            else:
                continue
        shared += 1
        best = max(best, float((x - y).abs().max()) if x.numel() else 0.0)
    return best if shared else float("inf")


def load_backbone(path: str) -> dict[str, torch.Tensor]:
    """:func:`backbone_state` of a causal LM folder / name, loaded whole by this rank (not ZeRO-3 sharded)."""
    from transformers import AutoModelForCausalLM


    path = resolve_model(path)
    with single_rank_hf():
        return backbone_state(AutoModelForCausalLM.from_pretrained(path))


def _sft_kwargs(recipe: Any, run_dir: Path, cfg: Mapping[str, Any]) -> dict[str, Any]:
    kw = {"num_train_epochs": cfg["sft_num_train_epochs"], "max_steps": cfg["sft_max_steps"],
          "learning_rate": cfg["sft_learning_rate"],
          "per_device_train_batch_size": cfg["sft_per_device_train_batch_size"],
          "gradient_accumulation_steps": cfg["sft_gradient_accumulation_steps"], "max_length": cfg["sft_max_length"],
          "seed": recipe.seed, "use_cpu": not cuda_available(), "save_strategy": "no",
          "report_to": recipe.training.get("report_to", ["tensorboard"]),
          "logging_steps": recipe.training.get("logging_steps", 1), "bf16": False}
    if cuda_available():
        kw["bf16"] = bool(recipe.training.get("bf16", False))
    if recipe.distribution != "none":
        kw["deepspeed"] = str(run_dir / "deepspeed.json")
    return kw


def train_critique_verifier(recipe: Any, run_dir: str | Path, judge: Any = None) -> dict[str, Any]:
    """Run both stages from one recipe (``algorithm.name: critique``); returns (and writes) a summary.

    ``model``: the verifier backbone (a causal LM). ``data.train``: labelled records (``rlkit label`` output;
    with ``feedback: file`` they may carry ``critique``/``feedback``). ``training``: stage 2's
    TrainingArguments fields plus :class:`CritiqueVerifierConfig`'s own. Stage 1 is saved to
    ``run_dir/stage1/final`` (a causal LM), stage 2 to ``run_dir/stage2/final``: with ``stage2: prm`` it loads
    as ``qwen-prm``, with ``stage2: orm`` as ``orm``. ``judge``: a built llm-judge (or callable) replacing
    ``judge_model``.

    Distributed (ZeRO-2/3 through ``distribution:``, every rank calls this): both stages train on all ranks
    with the run's DeepSpeed config; the weight comparisons, the critique file and ``critique_summary.json``
    (written atomically) are rank 0's, so on other ranks the comparison fields of the returned summary are
    None.
    """
    from transformers import set_seed


    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(recipe.seed)
    defaults = {f.name: f.default for f in dataclasses.fields(CritiqueVerifierConfig) if f.name in CRITIQUE_OWN_FIELDS}
    cfg = {**defaults, **{k: v for k, v in recipe.training.items() if k in CRITIQUE_OWN_FIELDS}}
    if cfg["stage2"] not in STAGE2_KINDS:
        raise CritiqueDataError(f"training.stage2: unknown value {cfg['stage2']!r} (allowed: prm, orm)")
    if cfg["stage2_score_head"] not in ("auto", "mlp2", "linear"):
        raise CritiqueDataError(f"training.stage2_score_head: unknown value {cfg['stage2_score_head']!r} "
                                f"(allowed: auto, mlp2, linear)")
    if cfg["feedback"] not in FEEDBACK_SOURCES:
        raise CritiqueDataError(f"training.feedback: unknown value {cfg['feedback']!r} "
                                f"(allowed: {', '.join(FEEDBACK_SOURCES)})")

    # ---- stage 1: critique SFT
    src = cfg["feedback_file"] if cfg["feedback"] == "file" and cfg["feedback_file"] else recipe.data.train
    records = read_records(src)
    if recipe.data.num_train is not None:
        records = records[:recipe.data.num_train]
    if cfg["feedback"] == "judge" and judge is None and not cfg["judge_model"]:
        raise CritiqueDataError("training.feedback: judge needs training.judge_model")
    if cfg["feedback"] == "judge":
        examples, fstats = _judge_feedback_once(records, cfg, judge, run_dir / "stage1" / "judge_feedback.json")
    else:
        examples, fstats = build_feedback(records, cfg["feedback"], judge)
    if is_main_process():
        print(f"[critique] stage 1 feedback ({cfg['feedback']}): {json.dumps(fstats)}")
    if not examples:
        raise CritiqueDataError(f"{src}: no record gave a critique example")

    if is_main_process():
        atomic_write_jsonl(run_dir / "stage1" / "critiques.jsonl", examples)
    stage1 = sft_stage(recipe.model, examples, run_dir / "stage1", _sft_kwargs(recipe, run_dir, cfg))
    stage1["feedback"] = fstats

    # ---- stage 2: the stage-1 checkpoint as a PRM / ORM
    # the weight comparisons load extra copies: rank 0 alone does them (every rank trains)
    main = is_main_process()
    s1_state = load_backbone(stage1["model_dir"]) if main else None
    base_change = max_abs_diff(s1_state, load_backbone(recipe.model)) if main else None
    train_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    s2_training = {k: v for k, v in recipe.training.items() if k in train_fields}
    s2_data = dataclasses.replace(recipe.data, train=cfg["stage2_data"] or recipe.data.train)
    ds_file = run_dir / "deepspeed.json" if recipe.distribution != "none" else None
    init_diff = None
    if cfg["stage2"] == "prm":
        s2_recipe = dataclasses.replace(recipe, model=stage1["model_dir"], data=s2_data, training=s2_training,
                                        algorithm=dataclasses.replace(recipe.algorithm, name="prm"))
        if main:
            with single_rank_hf():
                init_model, _ = prm_from_causal_lm(stage1["model_dir"])
            init_diff = max_abs_diff(backbone_state(init_model), s1_state)
            del init_model
        stage2 = train_prm(s2_recipe, run_dir / "stage2", max_length=cfg["stage2_max_length"],
                           deepspeed_file=ds_file)
    else:
        s2_training["max_length"] = cfg["stage2_max_length"]
        s2_recipe = dataclasses.replace(recipe, model=stage1["model_dir"], data=s2_data, training=s2_training,
                                        algorithm=dataclasses.replace(recipe.algorithm, name="orm"))
        with single_rank_hf():
            model, tok = orm_from_causal_lm(stage1["model_dir"], head=cfg["stage2_score_head"])
        if main:
            init_diff = max_abs_diff(backbone_state(model), s1_state)
        stage2 = train_orm(s2_recipe, run_dir / "stage2", model=model, tokenizer=tok, deepspeed_file=ds_file)
    summary = {"stage1": stage1, "stage2_kind": cfg["stage2"], "stage2": stage2,
               "stage1_max_change_from_base": base_change,
               "stage2_init_max_diff_from_stage1": init_diff,
               "model_dir": stage2["model_dir"]}
    write_summary(run_dir / "critique_summary.json", summary)
    wait_for_everyone()
    return summary
