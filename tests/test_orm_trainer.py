"""Listwise outcome RM: the loss by hand, verifier labelling with one-class groups dropped, the input layout
equals the `orm` reward's, and a tiny ORM learns a synthetic rule, beats its own initialisation on held-out
groups, loads back as `orm` and works inside `qwen-math-shaping`."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from reward.registry import build_reward
from rlkit import testing
from rlkit.trainers.orm_config import ListwiseRMConfig
from reward.evaluation.ranking import (evaluate_outcome_rm, group_listwise_loss, outcome_metrics,
                                       pairwise_accuracy)
from rlkit.trainers.orm_trainer import (GroupCollator, ListwiseRMTrainer, build_orm_dataset, encode_orm_input,
                                        label_groups, listwise_loss, model_scores, orm_from_causal_lm,
                                        ranking_metrics, read_group_rows)


def nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log(1.0 + math.exp(-x))


# ----------------------------------------------------------------------------------------------- loss by hand
def test_loss_k_equals_one():
    # n = 3, k = 1: pairs (0,1), (0,2); 1/(k(n-k)) = 1/2
    s = torch.tensor([1.0, 0.5, -1.0])
    got = listwise_loss(s, torch.tensor([1, 0, 0]), torch.tensor([0, 0, 0]))
    assert got.item() == pytest.approx((nls(0.5) + nls(2.0)) / 2, abs=1e-6)


def test_loss_k_equals_n_minus_one():
    # n = 4, k = 3: pairs (0,3), (1,3), (2,3); 1/(3*1)
    s = torch.tensor([0.2, 3.0, -0.4, 0.7])
    got = listwise_loss(s, torch.tensor([1, 1, 1, 0]), torch.tensor([5, 5, 5, 5]))
    assert got.item() == pytest.approx((nls(-0.5) + nls(2.3) + nls(-1.1)) / 3, abs=1e-6)


def test_loss_ties_and_two_by_two():
    # all scores equal: every pair gives log 2, whatever k
    s = torch.zeros(5)
    assert listwise_loss(s, torch.tensor([1, 0, 0, 1, 0]), torch.zeros(5, dtype=torch.long)).item() == \
        pytest.approx(math.log(2), abs=1e-6)
    # k = 2, n = 4 with a tie between a positive and a negative: 4 pairs
    s = torch.tensor([1.0, 2.0, 1.0, 0.0])
    want = (nls(0.0) + nls(1.0) + nls(1.0) + nls(2.0)) / 4
    assert group_listwise_loss(s, torch.tensor([1, 1, 0, 0])).item() == pytest.approx(want, abs=1e-6)


def test_loss_groups_are_averaged_and_one_class_groups_skipped():
    s = torch.tensor([1.0, 0.5, -1.0, 0.2, 3.0, -0.4, 0.7, 9.0, 9.0, -3.0])
    c = torch.tensor([1, 0, 0, 1, 1, 1, 0, 1, 1, 0])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 3])  # group 2: all correct, group 3: all wrong
    g0 = (nls(0.5) + nls(2.0)) / 2
    g1 = (nls(-0.5) + nls(2.3) + nls(-1.1)) / 3
    assert listwise_loss(s, c, g).item() == pytest.approx((g0 + g1) / 2, abs=1e-6)
    # nothing to rank: zero loss that still backpropagates
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    z = listwise_loss(x, torch.tensor([1, 1]), torch.tensor([0, 0]))
    z.backward()
    assert z.item() == 0.0 and x.grad.tolist() == [0.0, 0.0]


def test_loss_gradient_by_hand():
    # d/dr_pos of -log sigmoid(r_pos - r_neg) = -(1 - sigmoid(d)); k = 1, n = 2
    x = torch.tensor([0.3, -0.2], requires_grad=True)
    listwise_loss(x, torch.tensor([1, 0]), torch.tensor([0, 0])).backward()
    sig = 1 / (1 + math.exp(-0.5))
    assert x.grad.tolist() == pytest.approx([-(1 - sig), 1 - sig], abs=1e-6)


# ----------------------------------------------------------------------------------------------- data
def test_label_groups_drops_and_counts(tmp_path):
    rows = [
        {"id": "a", "problem": "2+2?", "reference": "4",
         "responses": ["2+2=4\n\n\\boxed{4}", "\\boxed{5}", {"text": "\\boxed{9}", "correct": True}]},
        {"id": "b", "problem": "1+1?", "reference": "2", "responses": ["\\boxed{2}", "The answer is 2"]},
        {"id": "c", "problem": "3+3?", "reference": "#### 6", "responses": ["\\boxed{7}", "\\boxed{8}"]},
    ]
    groups, stats = label_groups(rows)
    assert stats == {"problems": 3, "kept": 1, "all_correct": 1, "all_wrong": 1, "responses": 3, "pairs": 2}
    assert groups[0]["correct"] == [True, False, True] and groups[0]["id"] == "a"
    # flat layout, grouped by problem
    p = tmp_path / "flat.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "q1", "answer": "1", "response": "\\boxed{1}"},
        {"question": "q2", "answer": "2", "response": "\\boxed{2}"},
        {"question": "q1", "answer": "1", "response": "\\boxed{3}"}]))
    rows = read_group_rows(p)
    assert [len(r["responses"]) for r in rows] == [2, 1]
    groups, stats = label_groups(rows)
    assert stats["kept"] == 1 and stats["all_correct"] == 1 and groups[0]["correct"] == [True, False]


def test_input_layout_equals_orm_reward(tok, orm_model):
    from reward.models.orm import OutcomeRM

    rm = OutcomeRM(orm_model, tokenizer=tok, system_prompt="Be exact.")
    assert encode_orm_input(tok, "1+1?", "So \\boxed{2}.", "Be exact.") == rm.encode("1+1?", "So \\boxed{2}.")
    ids = encode_orm_input(tok, "1+1?", "So \\boxed{2}.", None, max_length=5)
    assert ids == OutcomeRM(orm_model, tokenizer=tok).encode("1+1?", "So \\boxed{2}.")[-5:]
    c = GroupCollator(0)([{"input_ids": [[1, 2, 3], [4]], "correct": [1, 0]}, {"input_ids": [[5, 6]], "correct": [1]}])
    assert c["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    assert c["group"].tolist() == [0, 0, 1] and c["correct"].tolist() == [1, 0, 1]


def test_metrics_by_hand():
    groups = [{"problem": "p", "responses": ["\\boxed{1}", "\\boxed{2}", "\\boxed{2}"], "correct": [True, False, False]},
              {"problem": "q", "responses": ["\\boxed{3}", "\\boxed{3}", "\\boxed{4}"], "correct": [True, True, False]}]
    scores = [[0.1, 0.9, 0.1], [0.5, 0.2, 0.4]]
    m = outcome_metrics(groups, scores)
    # rm@3: p picks response 1 (wrong), q picks response 0 (right); maj@3: p majority "2" wrong, q "3" right
    assert m["rm@n"] == 0.5 and m["maj@n"] == 0.5 and m["pass@n"] == 1.0
    # pairs: p (0,1) wrong, (0,2) tie -> 0.5; q (0,2) right, (1,2) wrong -> 1.5 / 4
    assert m["pairwise_accuracy"] == pytest.approx(1.5 / 4)
    assert pairwise_accuracy([[1.0, 1.0]], [[True, True]]) != pairwise_accuracy([[1.0, 1.0]], [[True, True]])  # nan


# ----------------------------------------------------------------------------------------------- learning
def synthetic_groups(n_problems: int, seed: int, n: int = 6) -> list[dict]:
    """'What is a + b?' with n responses each; a right sum is written with 'good', a wrong one with 'bad'.

    The verifier (not the marker) decides correctness; some problems are all right / all wrong on purpose.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n_problems):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        kind = rng.random()
        k = n if kind < 0.1 else 0 if kind < 0.2 else rng.randint(1, n - 1)
        flags = [True] * k + [False] * (n - k)
        rng.shuffle(flags)
        resps = []
        for ok in flags:
            x = a + b if ok else a + b + rng.choice([-3, -2, -1, 1, 2, 3])
            resps.append(f"{a} + {b} = {x} {'good' if ok else 'bad'}.\n\nThe answer is \\boxed{{{x}}}.")
        rows.append({"id": f"s{seed}-{i}", "problem": f"What is {a} + {b}?", "reference": str(a + b),
                     "responses": resps})
    return rows


@pytest.mark.slow
def test_tiny_orm_learns_beats_init_and_loads_as_orm(tmp_path, tiny_dirs, tok):
    lm = testing.tiny_causal_lm(tok)  # the weights saved in tiny_dirs["policy"]
    model, tok = orm_from_causal_lm(tiny_dirs["policy"])
    assert type(model).__name__ == "Qwen2ForSequenceClassificationMLP2" and model.config.num_labels == 1
    assert model.config.rlkit_score_head == "mlp2" and model.score[0].weight.shape == (64, 64)
    assert torch.equal(model.model.embed_tokens.weight, lm.model.embed_tokens.weight)  # backbone from the LM
    train_groups, tstats = label_groups(synthetic_groups(64, seed=1))
    held_groups, hstats = label_groups(synthetic_groups(32, seed=2))
    assert tstats["all_correct"] + tstats["all_wrong"] > 0 and tstats["kept"] == len(train_groups) >= 40
    before = ranking_metrics(model, held_groups, tok)
    args = ListwiseRMConfig(output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=4, num_train_epochs=3,
                            learning_rate=2e-3, warmup_steps=2, logging_steps=2, save_strategy="no", report_to=[],
                            use_cpu=True, seed=0, disable_tqdm=True)
    trainer = ListwiseRMTrainer(model=model, args=args, train_dataset=build_orm_dataset(train_groups, tok),
                                processing_class=tok)
    trainer.train()
    after = ranking_metrics(trainer.model, held_groups, tok)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"before": before, "after": after, "first_loss": losses[0], "last_loss": losses[-1]}))
    # real numbers on held-out groups: the untrained head ranks near chance, the trained one near perfectly
    assert after["n_problems"] == before["n_problems"] == hstats["kept"] >= 20
    assert after["pairwise_accuracy"] >= 0.95 and after["pairwise_accuracy"] >= before["pairwise_accuracy"] + 0.2
    assert after["rm@n"] >= 0.95 and after["rm@n"] > before["rm@n"]
    assert after["listwise_loss"] < 0.5 * before["listwise_loss"]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3

    out = tmp_path / "orm"
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    # loads as the `orm` reward with no code change; same scores as in training
    rm = build_reward("orm", model=str(out))
    ex = build_orm_dataset(held_groups[:4], tok)
    want = model_scores(trainer.model, ex, tok.pad_token_id)
    for g, w in zip(held_groups[:4], want):
        got = [s.meta["response_score"] for s in rm.score([g["problem"]] * len(g["responses"]), g["responses"])]
        assert got == pytest.approx(w, abs=1e-4)
    # rm@N through the generic evaluator (any registered reward) equals the in-memory measurement
    ev = evaluate_outcome_rm({"name": "orm", "args": {"model": str(out)}}, held_groups)
    assert ev["rm@n"] == after["rm@n"] and ev["pairwise_accuracy"] == pytest.approx(after["pairwise_accuracy"])
    # Qwen2.5-Math shaping: r = sigmoid(0.5 r_m) + (r_v - 1); correct responses above wrong ones
    shaping = build_reward("qwen-math-shaping", reward_model={"name": "orm", "args": {"model": str(out)}})
    g = held_groups[0]
    res = shaping.score([g["problem"]] * len(g["responses"]), g["responses"], [g["reference"]] * len(g["responses"]))
    for s, ok, w in zip(res, g["correct"], want[0]):
        r = 1 / (1 + math.exp(-0.5 * w)) + (1.0 if ok else 0.0) - 1.0
        assert s.meta["response_score"] == pytest.approx(r, abs=1e-4)
        assert (s.meta["response_score"] > 0) == ok


@pytest.mark.slow
def test_train_orm_from_recipe(tmp_path, tiny_dirs):
    from rlkit.config import load_recipe, recipe_from_dict
    from rlkit.trainers.orm_trainer import train_orm

    data, held = tmp_path / "groups.jsonl", tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_groups(24, seed=3)))
    held.write_text("".join(json.dumps(r) + "\n" for r in synthetic_groups(8, seed=4)))
    recipe = recipe_from_dict({
        "name": "orm_test", "model": tiny_dirs["policy"], "algorithm": {"name": "orm"},
        "data": {"train": str(data), "eval": str(held), "num_eval": 8},
        "training": {"max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 2e-3,
                     "max_length": 64, "logging_steps": 1, "report_to": []}})
    summary = train_orm(recipe, tmp_path / "run")
    assert summary["global_step"] == 6 and summary["train"]["problems"] == 24
    assert summary["eval_after"]["listwise_loss"] < summary["eval_before"]["listwise_loss"]
    assert json.loads((tmp_path / "run" / "orm_summary.json").read_text())["global_step"] == 6
    rm = build_reward("orm", model=summary["model_dir"])
    assert len(rm.score(["q"], ["a\n\nb"])[0].scores) == 2
    r = load_recipe("orm_listwise", check=False)
    assert r.algorithm.name == "orm"
