"""shepherd-prm and orm: hand-checked scores on tiny models with known heads."""

from __future__ import annotations

import math

import pytest
import torch

from reward.base import RewardError
from reward.models.orm import OutcomeRM
from reward.models.shepherd import ShepherdPRM
from reward.registry import build_reward

RESP = ["48 / 2 = 24\n\n48 + 24 = 72\n\nThe answer is \\boxed{72}.", "So 4.", ""]
PROMPTS = ["Natalia sold 48 clips?", "2+2?", "empty?"]


def _bias_head(model, attr: str, out_features: int, bias: torch.Tensor) -> None:
    """Replace a model's output head by Linear(h, out) with zero weights and the given bias: known logits."""
    head = torch.nn.Linear(model.config.hidden_size, out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(bias)
    setattr(model, attr, head)


def test_shepherd_known_logits(tok, policy):
    plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    bias = torch.zeros(len(tok))
    bias[plus], bias[minus] = 2.0, 0.5
    bias[tok.convert_tokens_to_ids("<ki>")] = 9.0   # other tokens must not matter: only + vs - compete
    _bias_head(policy, "lm_head", len(tok), bias)
    rm = ShepherdPRM(policy, tokenizer=tok, step_tag="<ki>")
    out = rm.score(PROMPTS, RESP)
    p = 1.0 / (1.0 + math.exp(-(2.0 - 0.5)))   # softmax([2, 0.5])[0] = sigmoid(1.5)
    assert [len(o.scores) for o in out] == [3, 1, 0]
    assert out[0].scores == pytest.approx([p] * 3, abs=1e-6)
    # swapping good and bad tokens gives 1 - p
    swapped = ShepherdPRM(policy, tokenizer=tok, step_tag="<ki>", good_token="-", bad_token="+")
    assert swapped.score(PROMPTS[:1], RESP[:1])[0].scores == pytest.approx([1 - p] * 3, abs=1e-6)


def test_shepherd_reads_the_tag_positions(tok, policy):
    rm = ShepherdPRM(policy, tokenizer=tok, step_tag="<ki>")
    text = rm.format_input(PROMPTS[0], ["48 / 2 = 24", "48 + 24 = 72", "The answer is \\boxed{72}."])
    assert text == "Natalia sold 48 clips? 48 / 2 = 24 <ki>\n48 + 24 = 72 <ki>\nThe answer is \\boxed{72}. <ki>"
    ids = tok.encode(text)
    tag = tok.convert_tokens_to_ids("<ki>")
    positions = [t for t, i in enumerate(ids) if i == tag]
    plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([ids])).logits[0]
    manual = [float(logits[t, [plus, minus]].softmax(-1)[0]) for t in positions]
    got = rm.score(PROMPTS[:1], RESP[:1])[0].scores
    assert got == pytest.approx(manual, abs=1e-5)
    # batched (mixed lengths) == one at a time
    many = [RESP[0] + "\n\nmore" * k for k in range(6)]
    a = rm.score(PROMPTS[:1] * 6, many)
    b = ShepherdPRM(policy, tokenizer=tok, step_tag="<ki>", max_batch_size=1).score(PROMPTS[:1] * 6, many)
    for x, y in zip(a, b):
        assert x.scores == pytest.approx(y.scores, abs=1e-5)


def test_shepherd_multi_token_tag_and_bad_tokens(tok, policy):
    # a tag that is several BPE tokens: the score is read at its last token
    rm = ShepherdPRM(policy, tokenizer=tok, step_tag="good")
    assert len(rm.score(["q"], ["a\n\nb"])[0].scores) == 2
    with pytest.raises(RewardError, match="good_token"):
        ShepherdPRM(policy, tokenizer=tok, step_tag="<ki>", good_token="not a token")


def test_orm_known_logit_and_placement(tok, orm_model):
    _bias_head(orm_model, "score", 1, torch.tensor([0.7]))
    raw = OutcomeRM(orm_model, tokenizer=tok)
    out = raw.score(PROMPTS, RESP)
    assert out[0].scores == pytest.approx([0.7] * 3, abs=1e-6)         # same score on every step
    assert out[1].scores == pytest.approx([0.7], abs=1e-6)
    assert out[2].scores == [] and out[2].meta["response_score"] == pytest.approx(0.7, abs=1e-6)
    assert out[0].meta["outcome"] is True and not raw.probabilistic
    sig = OutcomeRM(orm_model, tokenizer=tok, sigmoid=True, prefix_score=0.0).score(PROMPTS[:1], RESP[:1])[0]
    assert sig.scores == pytest.approx([0.0, 0.0, 1 / (1 + math.exp(-0.7))], abs=1e-6)


def test_orm_reads_last_token_and_batches(tok, orm_model):
    rm = OutcomeRM(orm_model, tokenizer=tok)
    prompts = PROMPTS * 3
    responses = [r + " and so on" * k for k, r in enumerate(RESP * 3)]
    scores, _ = rm.response_scores(prompts, responses)
    for p, r, s in zip(prompts, responses, scores):
        ids = rm.encode(p, r)
        with torch.no_grad():
            manual = float(orm_model(input_ids=torch.tensor([ids])).logits[0, 0])
        assert s == pytest.approx(manual, abs=1e-5)
    single = OutcomeRM(orm_model, tokenizer=tok, max_batch_size=1).response_scores(prompts, responses)[0]
    assert scores == pytest.approx(single, abs=1e-5)


def test_orm_truncates_from_the_left(tok, orm_model):
    rm = OutcomeRM(orm_model, tokenizer=tok, max_length=16)
    s = rm.score(["a long question " * 10], ["x\n\ny"])[0]
    assert s.meta["truncated"] is True
    ids = rm.encode("a long question " * 10, "x\n\ny")[-16:]
    with torch.no_grad():
        manual = float(orm_model(input_ids=torch.tensor([ids])).logits[0, 0])
    assert s.scores[-1] == pytest.approx(manual, abs=1e-5)


def test_orm_and_shepherd_from_saved_folders(tiny_dirs):
    assert len(build_reward("orm", model=tiny_dirs["orm"]).score(["q"], ["a\n\nb"])[0].scores) == 2
    rm = build_reward("shepherd-prm", model=tiny_dirs["policy"], step_tag="<ki>")
    assert len(rm.score(["q"], ["a\n\nb"])[0].scores) == 2
    with pytest.raises(RewardError, match="lacks trained weights"):
        build_reward("orm", model=tiny_dirs["policy"])
