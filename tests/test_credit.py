"""Hand-computed advantages for every credit mode (rlkit/credit.py)."""

import math

import pytest
import torch

from rlkit import credit

S3 = math.sqrt(3) / 4  # population std of {1, 0, 1, 1}


def _t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def test_process_grpo_two_responses_hand_computed():
    r = _t([[1.0, 0.0], [1.0, 1.0]])
    m = torch.ones(2, 2, dtype=torch.bool)
    e = _t([[1, 3], [1, 3]], torch.long)
    adv = credit.process_grpo(r, m, e, torch.ones(2, 4), group_size=2, eps=0.0)
    hi, lo = 0.25 / S3, -0.75 / S3
    assert torch.allclose(adv[0], _t([hi + lo, hi + lo, lo, lo]), atol=1e-5)
    assert torch.allclose(adv[1], _t([2 * hi, 2 * hi, hi, hi]), atol=1e-5)


def test_process_grpo_padded_batch_single_step_and_token_mask():
    # response 0: 3 steps ending at tokens 0, 2, 4; response 1: one step (no separator) ending at token 2,
    # then padding (token mask 0 at 3, 4).
    r = _t([[0.5, 1.0, 0.0], [1.0, 0.0, 0.0]])
    m = _t([[1, 1, 1], [1, 0, 0]], torch.bool)
    e = _t([[0, 2, 4], [2, 0, 0]], torch.long)
    tm = _t([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    adv = credit.process_grpo(r, m, e, tm, group_size=2, eps=0.0)
    vals = torch.tensor([0.5, 1.0, 0.0, 1.0])
    mean, std = vals.mean(), vals.std(unbiased=False)
    n = lambda v: (v - mean) / std  # noqa: E731
    exp0 = [n(0.5) + n(1.0) + n(0.0), n(1.0) + n(0.0), n(1.0) + n(0.0), n(0.0), n(0.0)]
    exp1 = [n(1.0), n(1.0), n(1.0), 0.0, 0.0]
    assert torch.allclose(adv[0], torch.stack([torch.as_tensor(x) for x in exp0]).float(), atol=1e-5)
    assert torch.allclose(adv[1], torch.tensor(exp1, dtype=torch.float32), atol=1e-5)


def test_groups_are_normalised_separately():
    r = _t([[1.0], [0.0], [5.0], [3.0]])
    m = torch.ones(4, 1, dtype=torch.bool)
    e = torch.zeros(4, 1, dtype=torch.long)
    adv = credit.process_grpo(r, m, e, torch.ones(4, 1), group_size=2, eps=0.0)
    assert adv.flatten().tolist() == pytest.approx([1.0, -1.0, 1.0, -1.0])


def test_scale_false_only_centres():
    r = _t([[1.0], [0.0]])
    adv = credit.process_grpo(r, torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, 1, dtype=torch.long),
                              torch.ones(2, 1), group_size=2, scale=False)
    assert adv.flatten().tolist() == pytest.approx([0.5, -0.5])


def test_min_form_hand_computed_and_split_invariance():
    r = _t([[1.0, 0.0], [1.0, 1.0]])
    m = torch.ones(2, 2, dtype=torch.bool)
    e = _t([[1, 3], [1, 3]], torch.long)
    adv = credit.min_form(r, m, e, torch.ones(2, 4), group_size=2, eps=0.0)
    hi, lo = 0.25 / S3, -0.75 / S3
    assert torch.allclose(adv[0], _t([lo, lo, lo, lo]), atol=1e-5)
    assert torch.allclose(adv[1], _t([hi, hi, hi, hi]), atol=1e-5)
    # Splitting a "good" step into three steps of equal score inflates summed credit but not min-form credit.
    r_split = _t([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    m_split = _t([[1, 1, 1, 1], [1, 1, 0, 0]], torch.bool)
    e_split = _t([[0, 0, 1, 3], [1, 3, 0, 0]], torch.long)
    a_min = credit.min_form(r_split, m_split, e_split, torch.ones(2, 4), group_size=2, scale=False)
    a_sum = credit.process_grpo(r_split, m_split, e_split, torch.ones(2, 4), group_size=2, scale=False)
    mean = 5 / 6
    assert a_min[0, 0].item() == pytest.approx(0.0 - mean)  # min over future steps = the bad final step
    assert a_sum[0, 0].item() == pytest.approx(3 * (1 - mean) + (0 - mean))


def test_outcome_broadcasts_group_normalised_reward():
    adv = credit.outcome(_t([1.0, 0.0, 1.0, 1.0]), _t([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]),
                         group_size=4, eps=0.0)
    hi, lo = 0.25 / S3, -0.75 / S3
    assert torch.allclose(adv, _t([[hi, hi, 0], [lo, lo, lo], [hi, 0, 0], [hi, hi, hi]]), atol=1e-5)


def test_identical_group_gives_zero_advantage_not_nan():
    r = _t([[0.7, 0.7], [0.7, 0.7]])
    adv = credit.process_grpo(r, torch.ones(2, 2, dtype=torch.bool), _t([[0, 1], [0, 1]], torch.long),
                              torch.ones(2, 2), group_size=2)
    assert torch.equal(adv, torch.zeros(2, 2))


def test_shaping_weighted_and_qwen_math():
    r = _t([[0.9, 0.8], [0.6, 0.0]])
    m = _t([[1, 1], [1, 0]], torch.bool)
    v = _t([1.0, 0.0])
    w = credit.shape_with_outcome(r, m, v, "weighted", weight=2.0)
    assert w.flatten().tolist() == pytest.approx([0.9, 2.8, 0.6, 0.0])
    q = credit.shape_with_outcome(r, m, v, "qwen_math")
    sig = lambda x: 1 / (1 + math.exp(-0.5 * x))  # noqa: E731
    assert q[0].tolist() == pytest.approx([sig(0.9), sig(0.8)])
    assert q[1, 0].item() == pytest.approx(sig(0.6) - 1)
    # any verified-correct response outranks any wrong one
    assert q[0].min() > q[1, 0]


def test_pad_steps_and_errors():
    r, m, e = credit.pad_steps([[0.5, 1.0], [], [0.2]], [[3, 7], [], [1]])
    assert r.shape == (3, 2) and m.tolist() == [[True, True], [False, False], [True, False]]
    assert e[0].tolist() == [3, 7]
    with pytest.raises(ValueError, match="NaN"):
        credit.process_grpo(_t([[float("nan")]]), torch.ones(1, 1, dtype=torch.bool),
                            torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1), group_size=1)
    with pytest.raises(ValueError, match="out of range"):
        credit.process_grpo(_t([[1.0]]), torch.ones(1, 1, dtype=torch.bool), _t([[5]], torch.long),
                            torch.ones(1, 2), group_size=1)
    with pytest.raises(ValueError, match="groups of 2"):
        credit.outcome(_t([1.0, 0.0, 1.0]), torch.ones(3, 1), group_size=2)
