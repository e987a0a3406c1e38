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


# Every (credit mode x outcome shaping) pair by hand. One group of two responses, centring only (scale=False) so
# the numbers stay readable: steps [0.9, 0.3] (correct answer) and [0.6, 0.6] (wrong answer), step k ends on
# token k, aggregation min (0.3 and 0.6), outcome_weight 2. Group step mean 0.6: centred steps [0.3, -0.3] and
# [0, 0]; the verifier [1, 0] centred is [0.5, -0.5].
# qwen_math: r_m = logit(p) of the aggregated probability, sigmoid(0.5 * logit(p)) = sqrt(p) / (sqrt(p) +
# sqrt(1 - p)): p = 0.3 -> 0.395644, p = 0.6 -> 0.550510; rewards [0.395644, 0.550510 - 1 = -0.449490], group
# mean -0.026923, centred [0.422567, -0.422567].
SHAPING_CASES = [
    ("process_grpo", "none", [[0.0, -0.3], [0.0, 0.0]]),
    ("min_form", "none", [[-0.3, -0.3], [0.0, 0.0]]),
    ("outcome", "none", [[-0.15, -0.15], [0.15, 0.15]]),                # R = [0.3, 0.6]
    ("process_grpo", "weighted", [[1.0, 0.7], [-1.0, -1.0]]),           # + 2 * [0.5, -0.5]
    ("min_form", "weighted", [[0.7, 0.7], [-1.0, -1.0]]),
    ("outcome", "weighted", [[0.85, 0.85], [-0.85, -0.85]]),            # R = [0.3 + 2, 0.6], after the min
    ("process_grpo", "qwen_math", [[0.422567, 0.122567], [-0.422567, -0.422567]]),
    ("min_form", "qwen_math", [[0.122567, 0.122567], [-0.422567, -0.422567]]),
    ("outcome", "qwen_math", [[0.422567, 0.422567], [-0.422567, -0.422567]]),
]


@pytest.mark.parametrize("mode, shaping, expected", SHAPING_CASES)
def test_every_credit_mode_with_every_shaping_by_hand(mode, shaping, expected):
    r = _t([[0.9, 0.3], [0.6, 0.6]])
    m = torch.ones(2, 2, dtype=torch.bool)
    e = _t([[0, 1], [0, 1]], torch.long)
    adv = credit.grpo_advantages(r, m, e, torch.ones(2, 2), group_size=2, credit=mode, aggregation="min",
                                 verified=_t([1.0, 0.0]), shaping=shaping, weight=2.0, scale=False)
    assert torch.allclose(adv, _t(expected), atol=1e-5), adv


def test_weighted_outcome_is_not_hidden_by_the_min():
    # the case: [0.9, 0.3] with a correct answer must score 0.3 + w under min, not min(0.9, 0.3 + w)
    r = _t([[0.9, 0.3], [0.6, 0.6], [0.6, 0.6]])
    R = credit.shaped_response_reward(credit.aggregate_steps(r, torch.ones(3, 2, dtype=torch.bool), "min"),
                                      _t([1.0, 0.0, 0.0]), "weighted", weight=1.0)
    assert R.tolist() == pytest.approx([1.3, 0.6, 0.6])


def test_scaled_weighted_process_grpo_by_hand():
    # scale=True, eps=0: step std sqrt(0.045) = 0.212132, r~ = [1.414214, -1.414214] and [0, 0]; the verifier
    # normalised is [1, -1], times 2
    r = _t([[0.9, 0.3], [0.6, 0.6]])
    adv = credit.grpo_advantages(r, torch.ones(2, 2, dtype=torch.bool), _t([[0, 1], [0, 1]], torch.long),
                                 torch.ones(2, 2), 2, "process_grpo", verified=_t([1.0, 0.0]), shaping="weighted",
                                 weight=2.0, eps=0.0)
    assert torch.allclose(adv, _t([[2.0, 2.0 - 1.414214], [-2.0, -2.0]]), atol=1e-5), adv


def test_qwen_math_takes_raw_scores_of_non_probabilistic_models_and_ranks_correct_first():
    raw = _t([2.0, -1.0, 5.0])  # an outcome RM's raw scores; the third response is wrong despite its high score
    q = credit.qwen_math_reward(raw, _t([1.0, 1.0, 0.0]), probabilistic=False)
    # sigmoid(1) = 0.731059, sigmoid(-0.5) = 0.377541, sigmoid(2.5) - 1 = -0.075858
    assert q.tolist() == pytest.approx([0.731059, 0.377541, -0.075858], abs=1e-5)
    assert q[:2].min() > q[2]


def test_aggregate_steps_matches_reward_aggregate():
    from reward.base import AGGREGATIONS, aggregate

    rows = [[0.9, 0.3, 0.5], [0.4], []]
    r, m, _ = credit.pad_steps(rows, [[0, 1, 2], [0], []])
    for how in AGGREGATIONS:
        assert credit.aggregate_steps(r, m, how).tolist() == pytest.approx([aggregate(x, how) for x in rows]), how


def test_shaping_needs_the_verifier_and_a_known_mode():
    r, m, e = _t([[0.5]]), torch.ones(1, 1, dtype=torch.bool), _t([[0]], torch.long)
    with pytest.raises(ValueError, match="verifier"):
        credit.grpo_advantages(r, m, e, torch.ones(1, 1), 1, shaping="qwen_math")
    with pytest.raises(ValueError, match="unknown outcome shaping"):
        credit.grpo_advantages(r, m, e, torch.ones(1, 1), 1, verified=_t([1.0]), shaping="both")


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


def test_credit_by_registered_name_or_import_path_and_one_line_errors(tmp_path, monkeypatch):
    mod = tmp_path / "my_credit_mod.py"
    mod.write_text("import torch\n\ndef last_only(step_rewards, step_mask, step_ends, token_mask, group_size, "
                   "scale=True):\n    return torch.full(token_mask.shape, 7.0) * token_mask\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = credit.resolve_credit("my_credit_mod:last_only")
    r, m, e = _t([[0.5]]), torch.ones(1, 1, dtype=torch.bool), _t([[0]], torch.long)
    assert credit.grpo_advantages(r, m, e, torch.ones(1, 2), 1, credit="my_credit_mod:last_only").tolist() == \
        [[7.0, 7.0]]
    assert fn(r, m, e, torch.ones(1, 1), 1).item() == 7.0

    @credit.register_credit("test_double_sum")
    def double_sum(step_rewards, step_mask, step_ends, token_mask, group_size, scale=True):
        return 2 * credit.process_grpo(step_rewards, step_mask, step_ends, token_mask, group_size, scale)

    try:
        assert credit.resolve_credit("test_double_sum") is double_sum
        assert credit.credit_problem("test_double_sum") is None
    finally:
        credit.CREDIT_FUNCTIONS.pop("test_double_sum")
    assert "cannot be imported" in credit.credit_problem("no_such_module_xyz:fn")
    assert "unknown credit mode 'sumform'" in credit.credit_problem("sumform")
    with pytest.raises(ValueError, match="built in"):
        credit.register_credit("outcome")
