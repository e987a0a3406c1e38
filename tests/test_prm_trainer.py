"""PRM trainer: data layout equals qwen-prm's, loss only at separators, a tiny PRM learns a synthetic rule,
and the saved folder loads back through the reward registry."""

from __future__ import annotations

import json
import random

import pytest
import torch

from reward.models.qwen_prm import format_prm_input
from reward.registry import build_reward
from reward.steps import Step
from rlkit import testing
from rlkit.trainers.prm_trainer import (
    IGNORE,
    PRMCollator,
    PRMTrainer,
    build_prm_dataset,
    prm_from_causal_lm,
    prm_loss,
    step_accuracy,
)


def synthetic_records(n, seed):
    """Steps end in 'good' (label 1) or 'bad' (label 0); labels stop at the first bad step."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(1, 4)
        steps, labels = [], []
        for j in range(k):
            bad = rng.random() < 0.45
            steps.append(f"Step {j + 1}: {rng.randint(0, 99)} + {rng.randint(0, 9)} = {'bad' if bad else 'good'}")
            labels.append(0 if bad else 1)
            if bad:
                break
        extra = ["The answer is #### 18"] if labels[-1] == 0 else []
        out.append({"id": f"s{seed}-{i}", "problem": f"Weng earns ${rng.randint(1, 30)} an hour. How much?",
                    "steps": steps + extra, "labels": labels})
    return out


def test_dataset_layout_matches_qwen_prm(tok):
    rec = {"problem": "What is 2+2?", "steps": ["2+2=4", "So 5.", "dropped"], "labels": [1, 0]}
    (ex,), stats = build_prm_dataset([rec], tok, return_stats=True)
    text = format_prm_input(tok, rec["problem"], rec["steps"][:2])
    assert ex["input_ids"] == tok.encode(text, add_special_tokens=False)
    sep = tok.convert_tokens_to_ids("<extra_0>")
    pos = [i for i, t in enumerate(ex["input_ids"]) if t == sep]
    assert len(pos) == 2 and [ex["labels"][p] for p in pos] == [1, 0]
    assert all(v == IGNORE for i, v in enumerate(ex["labels"]) if i not in pos)
    assert stats == {"records": 1, "examples": 1, "skipped": 0, "steps": 2, "positive": 1, "negative": 1}
    # soft labels and hard thresholding of fractional labels
    (ex,) = build_prm_dataset([dict(rec, labels=[0.25, 0.0])], tok, soft=True)
    assert [ex["labels"][p] for p in pos] == [1, 0] and [ex["soft_labels"][p] for p in pos] == [0.25, 0.0]
    # truncation drops the separators that do not fit; nothing left -> skipped
    (ex,) = build_prm_dataset([rec], tok, max_length=pos[0] + 1)
    assert sum(v != IGNORE for v in ex["labels"]) == 1
    assert build_prm_dataset([rec], tok, max_length=5) == []
    assert build_prm_dataset([dict(rec, labels=[])], tok) == []


def test_loss_only_at_separators():
    logits = torch.randn(2, 5, 2, requires_grad=True)
    labels = torch.full((2, 5), IGNORE)
    labels[0, 2], labels[1, 4] = 1, 0
    loss = prm_loss(logits, labels)
    ref = torch.nn.functional.cross_entropy(torch.stack([logits[0, 2], logits[1, 4]]), torch.tensor([1, 0]))
    assert torch.allclose(loss, ref)
    loss.backward()
    g = logits.grad.abs().sum(-1)
    assert g[0, 2] > 0 and g[1, 4] > 0 and g.sum() == g[0, 2] + g[1, 4]
    soft = torch.full((2, 5), -1.0)
    soft[0, 2], soft[1, 4] = 1.0, 0.0
    assert torch.allclose(prm_loss(logits, labels, soft), ref)  # 0/1 soft targets = hard CE
    c = PRMCollator(7)([{"input_ids": [1, 2, 3], "labels": [IGNORE, 1, IGNORE]}, {"input_ids": [4], "labels": [0]}])
    assert c["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]] and c["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert c["labels"].tolist() == [[IGNORE, 1, IGNORE], [0, IGNORE, IGNORE]]


@pytest.mark.slow
def test_tiny_prm_learns_and_loads_back(tmp_path, tok, tiny_dirs):
    from transformers import TrainingArguments

    model, ptok = prm_from_causal_lm(tiny_dirs["policy"])
    assert model.config.num_labels == 2 and type(model).__name__ == "Qwen2ForTokenClassification"
    # backbone weights come from the causal LM
    lm = testing.tiny_causal_lm(tok)
    assert torch.equal(model.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    train = build_prm_dataset(synthetic_records(192, seed=1), ptok)
    held_recs = synthetic_records(64, seed=2)
    held = build_prm_dataset(held_recs, ptok)
    before = step_accuracy(model, held, pad_token_id=ptok.pad_token_id)
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=16, num_train_epochs=4,
                             learning_rate=3e-3, warmup_steps=2, logging_steps=2, save_strategy="no", report_to=[],
                             use_cpu=True, seed=0, disable_tqdm=True)
    trainer = PRMTrainer(model=model, args=args, train_dataset=train, processing_class=ptok)
    trainer.train()
    after = step_accuracy(trainer.model, held, pad_token_id=ptok.pad_token_id)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"before": before, "after": after, "first_loss": losses[0], "last_loss": losses[-1]}))
    assert after["n"] == before["n"] > 100
    assert after["accuracy"] >= 0.95 and after["accuracy"] > before["accuracy"] + 0.2
    assert after["negative_accuracy"] >= 0.9 and after["positive_accuracy"] >= 0.9
    assert after["cross_entropy"] < 0.5 * before["cross_entropy"]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3

    out = tmp_path / "prm"
    trainer.save_model(str(out))
    ptok.save_pretrained(str(out))
    rm = build_reward("qwen-prm", model=str(out))
    r = held_recs[:8]
    steps = [[Step(s, 0, len(s)) for s in rec["steps"][: len(rec["labels"])]] for rec in r]
    scores = rm.score_split([rec["problem"] for rec in r], steps)
    got = [[int(v >= 0.5) for v in s.scores] for s in scores]
    assert got == [rec["labels"] for rec in r]


@pytest.mark.slow
def test_train_prm_from_recipe(tmp_path, tiny_dirs):
    from rlkit.config import load_recipe, recipe_from_dict
    from rlkit.trainers.prm_trainer import train_prm

    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records(48, seed=3)))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records(16, seed=4)))
    recipe = recipe_from_dict({
        "name": "prm_test", "model": tiny_dirs["policy"], "algorithm": {"name": "prm"},
        "data": {"train": str(data), "eval": str(held), "num_eval": 16},
        "training": {"max_steps": 24, "per_device_train_batch_size": 8, "learning_rate": 3e-3,
                     "logging_steps": 1, "report_to": []}})
    summary = train_prm(recipe, tmp_path / "run")
    assert summary["global_step"] == 24 and summary["train"]["examples"] == 48
    assert summary["eval_after"]["cross_entropy"] < summary["eval_before"]["cross_entropy"]
    assert json.loads((tmp_path / "run" / "prm_summary.json").read_text())["global_step"] == 24
    rm = build_reward("qwen-prm", model=summary["model_dir"])
    assert len(rm.score(["q"], ["a good\n\nb bad"])[0].scores) == 2
    # the shipped recipe parses (its data file is produced by the example, so only the schema is checked here)
    r = load_recipe("prm_train", check=False)
    assert r.algorithm.name == "prm" and r.data.train.endswith("consensus.jsonl")


def test_recipe_sets_prm_max_length_and_soft_labels(tmp_path, tiny_dirs):
    """``training.max_length`` / ``training.soft_labels`` reach the PRM data; a misspelt key is refused."""
    from rlkit.config import RecipeError, load_recipe, recipe_from_dict
    from rlkit.trainers.prm_trainer import train_prm

    recs = synthetic_records(8, seed=5)
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    base = {"name": "prm_len", "model": tiny_dirs["policy"], "algorithm": {"name": "prm"},
            "data": {"train": str(data), "num_eval": 0},
            "training": {"max_steps": 1, "per_device_train_batch_size": 8, "report_to": []}}
    full = train_prm(recipe_from_dict(base), tmp_path / "full")["train"]
    short = dict(base, training={**base["training"], "max_length": 80, "soft_labels": True})
    cut = train_prm(recipe_from_dict(short), tmp_path / "cut")["train"]
    # with the policy's chat template these inputs run past 80 tokens: 3 records keep no separator (skipped),
    # the others lose their second step; measured counts, deterministic for the tiny tokenizer
    assert full["steps"] == sum(len(r["labels"]) for r in recs) == 10 and full["skipped"] == 0, full
    assert (cut["steps"], cut["skipped"], cut["examples"]) == (5, 3, 5), cut
    ok = load_recipe("prm_train", [f"model={tiny_dirs['policy']}", f"data.train={data}", "training.max_length=512",
                                   "training.soft_labels=true"])
    assert ok.training["max_length"] == 512 and ok.training["soft_labels"] is True
    with pytest.raises(RecipeError, match="max_lenght"):
        load_recipe("prm_train", [f"model={tiny_dirs['policy']}", f"data.train={data}", "training.max_lenght=512"])
    with pytest.raises(RecipeError, match=r"^training\.max_length: must be >= 1, got -5$"):
        load_recipe("prm_train", [f"model={tiny_dirs['policy']}", f"data.train={data}", "training.max_length=-5"])
