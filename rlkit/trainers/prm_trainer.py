"""PRM training in the Qwen2.5-Math-PRM layout on top of the transformers ``Trainer``.

A causal LM folder becomes an ``AutoModelForTokenClassification`` model with two labels (backbone weights
loaded, a fresh 2-way head). Each labelled response is rendered exactly like ``qwen-prm`` scores it (the
formatting function is ``reward.models.qwen_prm.format_prm_input``): system prompt, question, and the steps
joined by ``<extra_0>`` with one after the last step. The loss is cross-entropy at the separator positions
only (``labels`` is -100 everywhere else): hard labels by default, soft labels (target distribution
[1 - y, y]) optionally. Being a ``Trainer``, it inherits accelerate, DeepSpeed, PEFT and checkpointing. The
saved folder (model + tokenizer) loads back with ``build_reward("qwen-prm", model=<dir>)``.

Example:
    >>> from rlkit.trainers.prm_trainer import PRMTrainer, build_prm_dataset, prm_from_causal_lm
    >>> model, tok = prm_from_causal_lm("path/to/causal-lm")
    >>> train = build_prm_dataset(records, tok)       # records: {"problem", "steps", "labels"} (labelled JSONL)
    >>> trainer = PRMTrainer(model=model, args=TrainingArguments("out"), train_dataset=train,
    ...                      processing_class=tok)
    >>> trainer.train(); trainer.save_model("out/final")

Records: ``{"problem", "steps": [...], "labels": [...]}`` where ``labels`` covers the first
``len(labels)`` steps (the labelling pipeline drops steps after the first negative one); later steps are left
out of the input. Hard labels: a step is positive when its label is > ``hard_threshold`` (default 0.0: "any
completion reached the answer", matching MC hard labels; 0/1 labels are unchanged).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import Trainer

from reward.labeling.io import read_records
from reward.models._hf import load_model
from reward.models.qwen_prm import DEFAULT_SYSTEM_PROMPT, format_prm_input
from rlkit.distributed import is_main_process, single_rank_hf
from rlkit.optim.trainer_hook import RecipeOptimizerMixin
from rlkit.recipe_glue import optimizer_block, trainer_kwargs
from rlkit.trainers.classifier_runner import ClassifierRun, train_classifier
from rlkit.trainers.common import (
    fill_classifier_trainer_kwargs,
    load_backbone_tokenizer,
)
from rlkit.trainers.prm_config import PRMTrainConfig

log = logging.getLogger(__name__)

SEPARATOR = "<extra_0>"
IGNORE = -100


class PRMDataError(ValueError):
    """Bad PRM training data (missing field, label count, nothing left after truncation)."""


# ----------------------------------------------------------------------------------------------- model
def ensure_separator(tokenizer: Any, model: Any = None, separator: str = SEPARATOR) -> int:
    """The separator's token id; adds it as a special token (and grows ``model``'s embeddings) when absent."""
    ids = tokenizer.encode(separator, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    tokenizer.add_special_tokens({"additional_special_tokens": [separator]})
    ids = tokenizer.encode(separator, add_special_tokens=False)
    if len(ids) != 1:
        raise PRMDataError(f"separator {separator!r} is not a single token even after adding it")
    if model is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return int(ids[0])


def prm_from_causal_lm(name: str, tokenizer: Any = None, separator: str = SEPARATOR, dtype: Any = None):
    """(token-classification model with 2 labels, tokenizer) from a causal LM folder / name.

    The backbone weights come from the causal LM (its LM head is dropped); the 2-way head is freshly
    initialised. ``embedded:...`` names resolve through rlkit.models. The tokenizer gets a pad token and the
    separator (as a special token) when it lacks them.
    """
    from transformers import AutoModelForTokenClassification


    path, tok = load_backbone_tokenizer(name, tokenizer)
    kw = {"num_labels": 2, "id2label": {0: "wrong", 1: "correct"}, "label2id": {"wrong": 0, "correct": 1}}
    if dtype is not None:
        kw["dtype"] = dtype
    model = AutoModelForTokenClassification.from_pretrained(path, **kw)
    ensure_separator(tok, model, separator)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


# ----------------------------------------------------------------------------------------------- data
def encode_record(record: Mapping, tokenizer: Any, separator_id: int, separator: str = SEPARATOR,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, max_length: int | None = 2048,
                  soft: bool = False, hard_threshold: float = 0.0) -> dict | None:
    """One training example ``{"input_ids", "labels"[, "soft_labels"]}``; None when no labelled step fits."""
    for k in ("problem", "steps", "labels"):
        if k not in record:
            raise PRMDataError(f"record {record.get('id', '?')}: missing field {k!r}")
    labels = list(record["labels"])
    if not labels:
        return None
    if len(labels) > len(record["steps"]):
        raise PRMDataError(f"record {record.get('id', '?')}: {len(labels)} labels for {len(record['steps'])} steps")
    steps = list(record["steps"])[: len(labels)]
    text = format_prm_input(tokenizer, record["problem"], steps, separator, system_prompt)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if max_length is not None:
        ids = ids[:max_length]
    pos = [i for i, t in enumerate(ids) if t == separator_id]
    if len(pos) > len(labels):
        raise PRMDataError(f"record {record.get('id', '?')}: {len(pos)} separators for {len(labels)} labels")
    if not pos:
        return None
    hard = [IGNORE] * len(ids)
    soft_t = [-1.0] * len(ids)
    for p, y in zip(pos, labels):
        y = float(y)
        hard[p] = 1 if y > hard_threshold else 0
        soft_t[p] = y
    ex = {"input_ids": ids, "labels": hard}
    if soft:
        ex["soft_labels"] = soft_t
    return ex


def build_prm_dataset(records: Sequence[Mapping], tokenizer: Any, separator: str = SEPARATOR,
                      system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, max_length: int | None = 2048,
                      soft: bool = False, hard_threshold: float = 0.0, return_stats: bool = False):
    """Tokenized examples for :class:`PRMTrainer` from labelled records (list of dicts).

    With ``return_stats`` also returns counts: records, examples, skipped (no label or nothing fits),
    steps (labelled positions), positive, negative.
    """
    sep_id = ensure_separator(tokenizer, None, separator)
    out, stats = [], {"records": len(records), "examples": 0, "skipped": 0, "steps": 0, "positive": 0,
                      "negative": 0}
    for r in records:
        ex = encode_record(r, tokenizer, sep_id, separator, system_prompt, max_length, soft, hard_threshold)
        if ex is None:
            stats["skipped"] += 1
            continue
        out.append(ex)
        lab = [v for v in ex["labels"] if v != IGNORE]
        stats["steps"] += len(lab)
        stats["positive"] += sum(lab)
        stats["negative"] += len(lab) - sum(lab)
    stats["examples"] = len(out)
    return (out, stats) if return_stats else out


class PRMCollator:
    """Right-pads a list of examples: input_ids (pad id), attention_mask, labels (-100), soft_labels (-1)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = int(pad_token_id)

    def __call__(self, feats: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in feats)
        batch = {
            "input_ids": torch.full((len(feats), n), self.pad, dtype=torch.long),
            "attention_mask": torch.zeros((len(feats), n), dtype=torch.long),
            "labels": torch.full((len(feats), n), IGNORE, dtype=torch.long),
        }
        soft = "soft_labels" in feats[0]
        if soft:
            batch["soft_labels"] = torch.full((len(feats), n), -1.0, dtype=torch.float32)
        for i, f in enumerate(feats):
            k = len(f["input_ids"])
            batch["input_ids"][i, :k] = torch.as_tensor(f["input_ids"])
            batch["attention_mask"][i, :k] = 1
            batch["labels"][i, :k] = torch.as_tensor(f["labels"])
            if soft:
                batch["soft_labels"][i, :k] = torch.as_tensor(f["soft_labels"], dtype=torch.float32)
        return batch


# ----------------------------------------------------------------------------------------------- trainer
def prm_loss(logits: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over separator positions (labels != -100); soft targets [1-y, y] when given."""
    mask = labels != IGNORE
    if not mask.any():
        return logits.sum() * 0.0
    lp = torch.log_softmax(logits[mask].float(), dim=-1)
    if soft_labels is None:
        return torch.nn.functional.nll_loss(lp, labels[mask])
    y = soft_labels[mask].clamp(0.0, 1.0)
    return -(y * lp[:, 1] + (1 - y) * lp[:, 0]).mean()


class PRMTrainer(RecipeOptimizerMixin, Trainer):
    """``transformers.Trainer`` with the PRM loss (:func:`prm_loss`) and :class:`PRMCollator` by default.

    Extra argument ``optimizer_cfg``: a recipe optimizer block in ``build_optimizer``'s shape
    (``{"name": "ondare", "p": ..., ...}``, from ``rlkit.trainers.common.optimizer_block``), used
    when the optimizer hook is available. Pass ``remove_unused_columns=False`` in the arguments when the
    examples carry ``soft_labels`` (set automatically here).
    """

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean; the Trainer divides it for accumulation

    def __init__(self, *args: Any, optimizer_cfg: dict | None = None, **kwargs: Any) -> None:
        fill_classifier_trainer_kwargs(args, kwargs, PRMCollator)
        self.rlkit_optimizer_cfg = optimizer_cfg
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        soft = inputs.pop("soft_labels", None)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
        loss = prm_loss(logits, labels, soft)
        return (loss, outputs) if return_outputs else loss


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def step_accuracy(model: Any, examples: Sequence[Mapping], batch_size: int = 16, pad_token_id: int = 0,
                  threshold: float = 0.5) -> dict[str, float]:
    """Accuracy / mean CE / positive-class and negative-class accuracy at separator positions of ``examples``."""
    model.eval()
    coll = PRMCollator(pad_token_id)
    dev = next(model.parameters()).device
    right = total = 0
    pos_right = pos = neg_right = neg = 0
    ce = 0.0
    for i in range(0, len(examples), batch_size):
        b = coll(examples[i:i + batch_size])
        logits = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits
        mask = b["labels"].to(dev) != IGNORE
        y = b["labels"].to(dev)[mask]
        lp = torch.log_softmax(logits[mask].float(), dim=-1)
        pred = (lp[:, 1].exp() >= threshold).long()
        right += int((pred == y).sum())
        total += int(y.numel())
        ce += float(torch.nn.functional.nll_loss(lp, y, reduction="sum"))
        pos_right += int(((pred == 1) & (y == 1)).sum())
        pos += int((y == 1).sum())
        neg_right += int(((pred == 0) & (y == 0)).sum())
        neg += int((y == 0).sum())
    return {"accuracy": right / max(total, 1), "cross_entropy": ce / max(total, 1), "n": total,
            "positive_accuracy": pos_right / pos if pos else float("nan"),
            "negative_accuracy": neg_right / neg if neg else float("nan")}


# ----------------------------------------------------------------------------------------------- recipe entry
def _read_records(src: str, limit: int | None = None) -> list[dict]:
    recs = read_records(src)
    return recs[:limit] if limit is not None else recs


def evaluate_saved_prm(model_dir: str | os.PathLike, examples: Sequence[Mapping], pad_token_id: int
                       ) -> dict[str, float]:
    """:func:`step_accuracy` of a saved PRM folder, loaded by this rank alone through the ``qwen-prm`` loader
    (full weights, no ZeRO-3 sharding: see ``rlkit.trainers.common.single_rank_hf``)."""
    with single_rank_hf():
        model, _ = load_model(str(model_dir), "token-classification")
        try:
            return step_accuracy(model, examples, pad_token_id=pad_token_id)
        finally:
            del model


def train_prm(recipe: Any, run_dir: str | os.PathLike, soft_labels: bool | None = None,
              max_length: int | None = None, deepspeed_file: str | os.PathLike | None = None
              ) -> dict[str, Any]:
    """Train a PRM from a recipe (``algorithm.name: prm``) into ``run_dir``; returns a summary dict.

    ``model``: the causal LM to start from. ``data.train`` / ``data.eval``: labelled JSONL files (the output
    of ``rlkit label``); ``data.num_train`` / ``num_eval`` cap them; ``data.system_prompt`` overrides the PRM
    system turn (keep it equal to the ``qwen-prm`` reward's ``system_prompt`` when scoring). ``training``:
    :class:`PRMTrainConfig` fields (``TrainingArguments`` + ``max_length``, ``soft_labels``); rlkit sets
    output_dir, seed, deepspeed (from ``distribution``) and use_cpu (no CUDA). ``optimizer``: adamw, or
    ondare/onties through the optimizer hook. The ``soft_labels`` / ``max_length`` arguments, when given, win
    over the recipe's. The final model is saved to ``run_dir/final``
    and loads with ``build_reward("qwen-prm", model=run_dir + "/final")``.

    Distributed (ZeRO-2/3, every rank calls this): the model is loaded whole on each rank (outside ZeRO-3's
    ``zero.Init``; the DeepSpeed engine partitions it), held-out evaluation runs on rank 0 alone (before
    training on the in-memory model, after training on the saved ``final`` folder), and rank 0 writes
    ``prm_summary.json`` atomically. Other ranks return the summary without the evaluation fields.
    ``deepspeed_file``: the DeepSpeed config when it is not ``run_dir/deepspeed.json`` (a sub-run).
    """
    def build(run_dir: Path) -> ClassifierRun:
        train_recs = _read_records(recipe.data.train, recipe.data.num_train)
        eval_recs = _read_records(recipe.data.eval, recipe.data.num_eval) if recipe.data.eval else []
        with single_rank_hf():  # whole on every rank, even while an earlier trainer config of this process lives
            model, tok = prm_from_causal_lm(recipe.model)
        system_prompt = recipe.data.system_prompt if recipe.data.system_prompt is not None else DEFAULT_SYSTEM_PROMPT
        kw = trainer_kwargs(recipe, run_dir, {"remove_unused_columns": False}, deepspeed_file)
        kw["remove_unused_columns"] = False
        if soft_labels is not None:
            kw["soft_labels"] = bool(soft_labels)
        if max_length:
            kw["max_length"] = int(max_length)
        args = PRMTrainConfig(**kw)  # the recipe's max_length / soft_labels unless given as arguments
        soft, length = args.soft_labels, args.max_length
        train_ds, tstats = build_prm_dataset(train_recs, tok, system_prompt=system_prompt, max_length=length,
                                             soft=soft, return_stats=True)
        if not train_ds:
            raise PRMDataError(f"{recipe.data.train}: no record has a labelled step that fits {length} tokens")
        eval_ds = build_prm_dataset(eval_recs, tok, system_prompt=system_prompt, max_length=length,
                                    soft=soft) if eval_recs else None
        if is_main_process():
            print(f"[prm] train: {json.dumps(tstats)}" + (f"; eval examples: {len(eval_ds)}" if eval_ds else ""))
        trainer = PRMTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tok, optimizer_cfg=optimizer_block(recipe))
        if not eval_ds:
            return ClassifierRun("prm", trainer, tok, tstats)
        return ClassifierRun("prm", trainer, tok, tstats,
                             before=lambda: step_accuracy(model, eval_ds, pad_token_id=tok.pad_token_id),
                             after=lambda final: evaluate_saved_prm(final, eval_ds, tok.pad_token_id))

    return train_classifier(recipe, run_dir, build)
