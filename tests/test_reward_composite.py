"""composite (weighted sum) and qwen-math-shaping (sigmoid(0.5 r_m) + r_v - 1)."""

from __future__ import annotations

import math

import pytest
import torch

from reward.base import RewardError, StepRewardModel
from reward.models.composite import CompositeReward, QwenMathShaping
from reward.models.orm import OutcomeRM
from reward.registry import build_reward, register
from reward.steps import StepSplitter


@register("test-step-index")
class StepIndex(StepRewardModel):
    """Step j scores j + offset."""

    def __init__(self, offset: float = 0.0, splitter=None):
        super().__init__(splitter)
        self.offset = offset

    def score_steps(self, prompts, steps, references=None):
        return [[j + self.offset for j in range(len(st))] for st in steps]


@register("test-contains-answer")
class ContainsAnswer(StepRewardModel):
    """A stand-in verifier: last step 1.0 when the reference appears in the response, else 0.0."""

    def score_steps(self, prompts, steps, references=None):
        out = []
        for st, ref in zip(steps, references):
            text = "\n\n".join(s.text for s in st)
            out.append([1.0] * (len(st) - 1) + [1.0 if ref in text else 0.0] if st else [])
        return out


def test_weighted_sum_by_hand():
    rm = build_reward("composite", components=[
        {"name": "test-step-index", "args": {"offset": 1.0}, "weight": 2.0},
        {"name": "test-step-index", "weight": -0.5},
    ])
    out = rm.score(["q", "q"], ["a\n\nb\n\nc", ""])
    # step j: 2 (j + 1) - 0.5 j = 2 + 1.5 j
    assert out[0].scores == [2.0, 3.5, 5.0] and out[1].scores == []
    assert out[0].meta["components"] == {"test-step-index#0": 3.0, "test-step-index#1": 2.0}  # unweighted
    assert not rm.probabilistic


def test_components_share_the_composite_splitter():
    rm = CompositeReward([{"name": "test-step-index", "args": {"splitter": {"mode": "double_newline"}}}],
                         splitter={"mode": "newline"})
    assert rm.score(["q"], ["a\nb\nc"])[0].scores == [0.0, 1.0, 2.0]
    # pre-split input goes through score_split
    _, steps = StepSplitter.from_list(["x", "y"])
    assert rm.score_split(["q"], [steps])[0].scores == [0.0, 1.0]


def test_composite_with_an_orm_uses_the_raw_response(tok, orm_model):
    orm = OutcomeRM(orm_model, tokenizer=tok)
    rm = CompositeReward([{"model": orm, "weight": 1.0}, {"name": "test-step-index", "weight": 1.0}])
    resp = "a  \n\n  b"
    s = rm.score(["q"], [resp])[0]
    r = orm.response_scores(["q"], [resp])[0][0]        # scored on the original text, spaces included
    assert s.scores == pytest.approx([r, r + 1.0], abs=1e-6)
    assert s.meta["components"]["orm"] == pytest.approx(r, abs=1e-6)


def test_bad_components():
    with pytest.raises(ValueError, match="at least one"):
        CompositeReward([])
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        CompositeReward([{"name": "nope"}])
    with pytest.raises(ValueError, match="weight"):
        CompositeReward([{"name": "test-step-index", "weight": "heavy"}])


def _orm_with_logit(tok, orm_model, value: float) -> OutcomeRM:
    head = torch.nn.Linear(orm_model.config.hidden_size, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(value)
    orm_model.score = head
    return OutcomeRM(orm_model, tokenizer=tok)


def test_qwen_math_shaping_by_hand(tok, orm_model):
    rm = QwenMathShaping(reward_model=_orm_with_logit(tok, orm_model, 2.0),
                         verifier={"name": "test-contains-answer"})
    out = rm.score(["q", "q", "q"], ["x\n\nso 72", "x\n\nso 71", ""], references=["72", "72", "72"])
    right = 1 / (1 + math.exp(-1.0))             # sigmoid(0.5 * 2) + (1 - 1)
    wrong = right - 1.0                          # sigmoid(0.5 * 2) + (0 - 1)
    assert out[0].scores == pytest.approx([right, right]) and out[0].meta["r_v"] == 1.0
    assert out[1].scores == pytest.approx([wrong, wrong]) and out[1].meta["r_m"] == pytest.approx(2.0)
    assert out[2].scores == [] and out[2].meta["response_score"] == pytest.approx(wrong)
    assert 0 < right < 1 and -1 < wrong < 0
    with pytest.raises(RewardError, match="references"):
        rm.score(["q"], ["a"])


def test_qwen_math_shaping_with_the_project_verifier(tok, orm_model):
    pytest.importorskip("reward.models.verifier")
    rm = build_reward("qwen-math-shaping", reward_model=_orm_with_logit(tok, orm_model, -4.0))
    out = rm.score(["q", "q"], ["48/2 = 24\n\nThe answer is \\boxed{72}", "So \\boxed{70}"], ["#### 72", "#### 72"])
    s = 1 / (1 + math.exp(2.0))
    assert out[0].aggregate("last") == pytest.approx(s) and out[1].aggregate("last") == pytest.approx(s - 1)
