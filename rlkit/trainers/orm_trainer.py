"""Listwise outcome reward model training (the Qwen2.5-Math RM recipe) on top of the transformers ``Trainer``.

Data: for each problem, n sampled responses labelled correct / incorrect by the rule verifier
(``reward.models.verifier.is_correct``, the ``verifier`` reward's check) unless a row already carries
``correct``. Problems whose responses are all right or all wrong carry no ranking signal: they are dropped
and counted (:func:`label_groups`).

Loss, per problem with k correct responses out of n (:func:`listwise_loss`)::

    L = -1 / (k (n - k)) * sum over (pos, neg) pairs of log sigmoid(r(x, y_pos) - r(x, y_neg))

and the batch loss is the mean of the per-problem losses, so every problem weighs the same whatever k is.
One training example is one whole problem (all its responses); ``per_device_train_batch_size`` counts
problems.

Head: the model is the policy-family backbone (an ``AutoModelForSequenceClassification`` architecture with
``num_labels=1``; backbone weights from the causal LM, LM head dropped) with the Qwen2.5-Math-RM scalar head
``Linear(h, h) -> ReLU -> Linear(h, 1)`` as its ``score`` layer (``training.score_head: mlp2``, the default
for a causal LM; ``linear`` keeps the architecture's single ``Linear(h, 1)``). The saved config records the
head (``rlkit_score_head``) and the ``orm`` reward's loader rebuilds it before the weights load, so the folder
loads with ``build_reward("orm", model=<dir>)``, no code shipped and no ``trust_remote_code``; plain HF
sequence classifiers (no ``rlkit_score_head``) load as before.

Input layout: exactly what the ``orm`` reward scores (:func:`encode_orm_input`: the tokenizer's chat
template of [system (optional), user = problem, assistant = response], cut from the left at ``max_length``),
scored at the last token by the model's own pooling, right-padded like ``orm``'s batches.

The saved folder (model + tokenizer) loads with ``build_reward("orm", model=<dir>)`` and works inside
``qwen-math-shaping`` (r = sigmoid(0.5 r_m) + (r_v - 1)).

Example (sketch; ``rows`` as read by :func:`read_group_rows`)::

    from rlkit.trainers.orm_config import ListwiseRMConfig
    from rlkit.trainers.orm_trainer import (ListwiseRMTrainer, build_orm_dataset, label_groups,
                                            orm_from_causal_lm)
    groups, stats = label_groups(rows)          # rows: {"problem", "reference", "responses": [...]}
    model, tok = orm_from_causal_lm("path/to/causal-lm")
    trainer = ListwiseRMTrainer(model=model, args=ListwiseRMConfig("out"),
                                train_dataset=build_orm_dataset(groups, tok), processing_class=tok)
    trainer.train(); trainer.save_model("out/final"); tok.save_pretrained("out/final")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from transformers import Trainer

from reward.evaluation.ranking import group_listwise_loss, outcome_metrics
from reward.labeling.io import PROBLEM_KEYS, REFERENCE_KEYS, LabelDataError, read_jsonl
from reward.models._hf import load_model, render_chat, score_head_of, sequence_classifier_class
from reward.models.verifier import is_correct
from rlkit.distributed import is_main_process, single_rank_hf
from rlkit.optim.trainer_hook import RecipeOptimizerMixin
from rlkit.recipe_glue import optimizer_block, trainer_kwargs
from rlkit.trainers.classifier_runner import ClassifierRun, train_classifier
from rlkit.trainers.common import (
    fill_classifier_trainer_kwargs,
    load_backbone_tokenizer,
)
from rlkit.trainers.orm_config import SCORE_HEAD_CHOICES, ListwiseRMConfig


class ORMDataError(ValueError):
    """Bad outcome-RM training data (missing field, nothing left after dropping one-class groups)."""


def listwise_loss(scores: torch.Tensor, correct: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean over the groups in a batch of :func:`group_listwise_loss` (groups without a pair are skipped).

    ``scores``, ``correct``, ``groups``: (M,) flat over all responses of the batch; ``groups[i]`` names the
    problem of response i. A batch without any pair returns a zero that still carries the graph.

    Example:
        >>> s = torch.tensor([2.0, 0.0, 1.0, 5.0])
        >>> round(float(listwise_loss(s, torch.tensor([1, 0, 1, 1]), torch.tensor([0, 0, 1, 1]))), 4)
        0.1269
    """
    losses = []
    for g in torch.unique(groups):
        m = groups == g
        v = group_listwise_loss(scores[m], correct[m])
        if v is not None:
            losses.append(v)
    if not losses:
        return scores.sum() * 0.0
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------------------------- data
def _first(row: Mapping, keys: Sequence[str]) -> Any:
    for k in keys:
        if row.get(k) is not None:
            return row[k]
    return None


def read_group_rows(path: str | Path) -> list[dict]:
    """Problems with their responses from a JSONL file, in one of two layouts.

    Grouped (the ``rlkit eval bon`` layout): ``{"id"?, "problem", "reference", "responses": [str |
    {"text", "correct"?}, ...]}``. Flat: one response per line, ``{"problem", "reference", "response",
    "correct"?}``, grouped by problem text (first-seen order). ``question``/``prompt`` and
    ``answer``/``ground_truth`` are accepted as in the labelling pipeline.
    """
    rows = read_jsonl(path)
    out: list[dict] = []
    by_problem: dict[str, dict] = {}
    for r in rows:
        where = f"{path}:{r['_line']}"
        problem = _first(r, PROBLEM_KEYS)
        if not isinstance(problem, str) or not problem.strip():
            raise LabelDataError(f"{where}: missing field 'problem' (or question/prompt)")
        ref = _first(r, REFERENCE_KEYS)
        if "responses" in r:
            if not isinstance(r["responses"], list):
                raise LabelDataError(f"{where}: 'responses' must be a list")
            out.append({"id": str(r.get("id", f"line-{r['_line']}")), "problem": problem,
                        "reference": None if ref is None else str(ref), "responses": list(r["responses"])})
        elif "response" in r:
            g = by_problem.get(problem)
            if g is None:
                g = {"id": str(r.get("group_id", r.get("id", f"line-{r['_line']}"))), "problem": problem,
                     "reference": None if ref is None else str(ref), "responses": []}
                by_problem[problem] = g
                out.append(g)
            resp = {"text": r["response"]}
            if r.get("correct") is not None:
                resp["correct"] = bool(r["correct"])
            g["responses"].append(resp)
        else:
            raise LabelDataError(f"{where}: missing field 'responses' (grouped) or 'response' (flat)")
    return out


def label_groups(rows: Sequence[Mapping], verify: Callable[[str, str], bool] | None = None
                 ) -> tuple[list[dict], dict[str, int]]:
    """Label every response with the verifier and drop groups without a (correct, incorrect) pair.

    ``rows``: ``{"id"?, "problem", "reference", "responses": [str | {"text", "correct"?}]}``. A response's
    given ``correct`` is kept; otherwise ``verify(text, reference)`` (default: the ``verifier`` reward's
    ``is_correct``) decides, so such rows need a reference.

    Returns (groups ``{"id", "problem", "reference", "responses": [str], "correct": [bool]}``, counts
    ``{"problems", "kept", "all_correct", "all_wrong", "responses", "pairs"}``; responses/pairs count kept
    groups only).
    """
    if verify is None:
        verify = is_correct
    groups, stats = [], {"problems": 0, "kept": 0, "all_correct": 0, "all_wrong": 0, "responses": 0, "pairs": 0}
    for i, r in enumerate(rows):
        stats["problems"] += 1
        texts, ok = [], []
        for resp in r["responses"]:
            text, given = (resp.get("text"), resp.get("correct")) if isinstance(resp, Mapping) else (resp, None)
            if not isinstance(text, str):
                raise ORMDataError(f"problem {r.get('id', i)}: a response is not a string")
            if given is None:
                if r.get("reference") is None:
                    raise ORMDataError(f"problem {r.get('id', i)}: no reference to verify responses against")
                given = verify(text, str(r["reference"]))
            texts.append(text)
            ok.append(bool(given))
        k = sum(ok)
        if k == len(ok):
            stats["all_correct"] += 1
            continue
        if k == 0:
            stats["all_wrong"] += 1
            continue
        stats["kept"] += 1
        stats["responses"] += len(ok)
        stats["pairs"] += k * (len(ok) - k)
        groups.append({"id": str(r.get("id", i)), "problem": r["problem"], "reference": r.get("reference"),
                       "responses": texts, "correct": ok})
    return groups, stats


def encode_orm_input(tokenizer: Any, problem: str, response: str, system_prompt: str | None = None,
                     max_length: int | None = None) -> list[int]:
    """Token ids exactly as the ``orm`` reward builds them (``OutcomeRM.encode``), cut from the left."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": problem}, {"role": "assistant", "content": response}]
    ids = tokenizer.encode(render_chat(tokenizer, messages), add_special_tokens=False)
    return ids[-max_length:] if max_length else ids


def build_orm_dataset(groups: Sequence[Mapping], tokenizer: Any, system_prompt: str | None = None,
                      max_length: int | None = 2048) -> list[dict]:
    """One example per group: ``{"input_ids": [[ids] per response], "correct": [0/1 per response]}``."""
    out = []
    for g in groups:
        ids = [encode_orm_input(tokenizer, g["problem"], t, system_prompt, max_length) for t in g["responses"]]
        out.append({"input_ids": ids, "correct": [int(c) for c in g["correct"]]})
    return out


class GroupCollator:
    """Flattens a batch of groups into right-padded rows with ``correct`` and ``group`` (index in the batch)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = int(pad_token_id)

    def __call__(self, feats: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        seqs, correct, group = [], [], []
        for g, f in enumerate(feats):
            for ids, c in zip(f["input_ids"], f["correct"]):
                seqs.append(list(ids))
                correct.append(int(c))
                group.append(g)
        n = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), n), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "correct": torch.tensor(correct),
                "group": torch.tensor(group)}


def existing_score_head(config: Any) -> str | None:
    """The head of a folder that already is a sequence classifier ("mlp2" / "linear"); None for a causal LM."""
    head = score_head_of(config)
    if head is not None:
        return head
    archs = getattr(config, "architectures", None) or []
    return "linear" if any(str(a).endswith("ForSequenceClassification") for a in archs) else None


def orm_from_causal_lm(name: Any, tokenizer: Any = None, dtype: Any = None, head: str = "auto"):
    """(sequence classifier with one output, tokenizer) from a causal LM (or an existing ORM) folder / name.

    The backbone weights come from the causal LM (its LM head is dropped) and the scalar head is new:
    ``head="mlp2"`` (the default for a causal LM) is the Qwen2.5-Math-RM head ``Linear(h, h) -> ReLU ->
    Linear(h, 1)`` (``reward.models._hf.ScalarMLPHead``), ``"linear"`` the architecture's own ``score`` layer
    (``Linear(h, 1)``, no bias). The choice is recorded in the config (``rlkit_score_head``), which is how the
    ``orm`` reward rebuilds the head when it loads the saved folder. An existing sequence classifier folder
    (rlkit ORM or a plain HF one) loads with its trained head (to continue training); asking it for another
    head is an error, as its trained head would be dropped. ``embedded:...`` names resolve through
    rlkit.models. The tokenizer gets a pad token when it lacks one, and the model config the tokenizer's pad
    id (HF sequence classifiers find each row's last token through it).
    """
    from transformers import AutoConfig


    if head not in SCORE_HEAD_CHOICES:
        raise ValueError(f"score head: unknown value {head!r} (allowed: {', '.join(SCORE_HEAD_CHOICES)})")
    path, tok = load_backbone_tokenizer(name, tokenizer)
    config = AutoConfig.from_pretrained(path)
    has = existing_score_head(config)
    if has is not None and head not in ("auto", has):
        raise ValueError(f"{name} already is an ORM with a trained {has!r} head; score head {head!r} would "
                         f"drop it (use 'auto' or {has!r})")
    chosen = has or ("mlp2" if head == "auto" else head)
    kw: dict[str, Any] = {"num_labels": 1}
    if dtype is not None:
        kw["dtype"] = dtype
    model = sequence_classifier_class(config, chosen).from_pretrained(path, **kw)
    model.config.rlkit_score_head = chosen
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


class ListwiseRMTrainer(RecipeOptimizerMixin, Trainer):
    """``transformers.Trainer`` with the listwise loss (:func:`listwise_loss`) and :class:`GroupCollator`.

    Extra argument ``optimizer_cfg``: a recipe optimizer block in ``build_optimizer``'s shape
    (``{"name": "ondare", "p": ..., ...}``, from ``rlkit.trainers.common.optimizer_block``).
    ``per_device_train_batch_size`` counts problems (each brings all its responses).
    """

    def __init__(self, *args: Any, optimizer_cfg: dict | None = None, **kwargs: Any) -> None:
        fill_classifier_trainer_kwargs(args, kwargs, GroupCollator)
        self.rlkit_optimizer_cfg = optimizer_cfg
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean; the Trainer scales it for GA

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        correct = inputs.pop("correct")
        groups = inputs.pop("group")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
        loss = listwise_loss(logits[:, 0], correct, groups)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, dict(inputs))
        return loss.detach(), None, None


@torch.no_grad()
def model_scores(model: Any, examples: Sequence[Mapping], pad_token_id: int, batch_groups: int = 8
                 ) -> list[list[float]]:
    """Raw scores of every response of every example (:func:`build_orm_dataset` output), group by group."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    coll = GroupCollator(pad_token_id)
    out: list[list[float]] = []
    try:
        for i in range(0, len(examples), batch_groups):
            chunk = examples[i:i + batch_groups]
            b = coll(chunk)
            logits = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits
            flat = logits[:, 0].float().cpu().tolist()
            k = 0
            for ex in chunk:
                n = len(ex["input_ids"])
                out.append(flat[k:k + n])
                k += n
    finally:
        model.train(was)
    return out


def ranking_metrics(model: Any, groups: Sequence[Mapping], tokenizer: Any, system_prompt: str | None = None,
                    max_length: int | None = 2048, batch_groups: int = 8) -> dict[str, Any]:
    """:func:`outcome_metrics` of a sequence-classifier ``model`` (in memory) on labelled ``groups``."""
    ex = build_orm_dataset(groups, tokenizer, system_prompt, max_length)
    return outcome_metrics(groups, model_scores(model, ex, tokenizer.pad_token_id, batch_groups))


def _load_groups(src: str, limit: int | None) -> tuple[list[dict], dict[str, int]]:
    rows = read_group_rows(src)
    if limit is not None:
        rows = rows[:limit]
    return label_groups(rows)


def evaluate_saved_orm(model_dir: str | Path, groups: Sequence[Mapping], tokenizer: Any,
                       system_prompt: str | None = None, max_length: int | None = 2048, batch_groups: int = 8
                       ) -> dict[str, Any]:
    """:func:`ranking_metrics` of a saved ORM folder, loaded by this rank alone through the ``orm`` reward's
    loader (full weights, no ZeRO-3 sharding: see ``rlkit.trainers.common.single_rank_hf``)."""
    with single_rank_hf():
        model, _ = load_model(str(model_dir), "sequence-classification", tokenizer=tokenizer)
        try:
            return ranking_metrics(model, groups, tokenizer, system_prompt, max_length, batch_groups)
        finally:
            del model


def train_orm(recipe: Any, run_dir: str | Path, model: Any = None, tokenizer: Any = None,
              deepspeed_file: str | Path | None = None) -> dict[str, Any]:
    """Train a listwise outcome RM from a recipe (``algorithm.name: orm``) into ``run_dir``; returns a summary.

    ``model``: the causal LM to start from (or an ORM folder to continue). ``data.train`` / ``data.eval``:
    JSONL of problems with responses (:func:`read_group_rows`); ``data.num_train`` / ``num_eval`` cap the
    problems read; ``data.system_prompt``: the ORM's system turn (give the ``orm`` reward the same
    ``system_prompt`` when scoring). ``training``: :class:`ListwiseRMConfig` fields. The final model and
    tokenizer are saved to ``run_dir/final``, loadable with ``build_reward("orm", model=run_dir + "/final")``.
    ``model`` / ``tokenizer`` arguments (built objects) replace the recipe's model (the critique verifier's
    stage 2 passes its stage-1 checkpoint this way).

    Distributed (ZeRO-2/3, every rank calls this): the model is loaded whole on each rank (outside ZeRO-3's
    ``zero.Init``; the DeepSpeed engine partitions it), held-out ranking metrics are measured on rank 0 alone
    (before training on the in-memory model, after training on the saved ``final`` folder) and rank 0 writes
    ``orm_summary.json`` atomically. Other ranks return the summary without the evaluation fields.
    ``deepspeed_file``: the DeepSpeed config when it is not ``run_dir/deepspeed.json`` (a sub-run).
    """
    def build(run_dir: Path) -> ClassifierRun:
        nonlocal model, tokenizer
        main = is_main_process()
        train_groups, tstats = _load_groups(recipe.data.train, recipe.data.num_train)
        if main:
            print(f"[orm] train groups: {json.dumps(tstats)}")
        if not train_groups:
            raise ORMDataError(f"{recipe.data.train}: no problem has both a correct and an incorrect response "
                               f"({tstats['all_correct']} all correct, {tstats['all_wrong']} all wrong)")
        eval_groups, estats = ([], None)
        if recipe.data.eval and recipe.data.num_eval != 0:
            eval_groups, estats = _load_groups(recipe.data.eval, recipe.data.num_eval)
            if main:
                print(f"[orm] eval groups: {json.dumps(estats)}")
        if model is None:
            with single_rank_hf():  # whole on every rank, even when an earlier trainer config is alive
                model, tokenizer = orm_from_causal_lm(recipe.model, tokenizer,
                                                      head=recipe.training.get("score_head", "auto"))
        sp = recipe.data.system_prompt
        kw = trainer_kwargs(recipe, run_dir, {"remove_unused_columns": False}, deepspeed_file)
        kw["remove_unused_columns"] = False
        args = ListwiseRMConfig(**kw)
        train_ds = build_orm_dataset(train_groups, tokenizer, sp, args.max_length)
        trainer = ListwiseRMTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                                    optimizer_cfg=optimizer_block(recipe))
        if not eval_groups:
            return ClassifierRun("orm", trainer, tokenizer, tstats, summary={"eval_groups": estats})
        return ClassifierRun(
            "orm", trainer, tokenizer, tstats, summary={"eval_groups": estats},
            before=lambda: ranking_metrics(model, eval_groups, tokenizer, sp, args.max_length, args.eval_batch_groups),
            after=lambda final: evaluate_saved_orm(final, eval_groups, tokenizer, sp, args.max_length,
                                                   args.eval_batch_groups))

    return train_classifier(recipe, run_dir, build)
