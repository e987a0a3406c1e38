"""PPO credit pieces by hand: step rewards placed on tokens, GAE (multi-step, one step, padded batch,
truncated response with and without bootstrapping) and masked whitening."""

from __future__ import annotations

import pytest
import torch

from rlkit import credit


def test_place_step_rewards_on_step_end_tokens():
    r = torch.tensor([[0.5, 1.0, 0.0], [0.25, 0.0, 0.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    e = torch.tensor([[1, 3, 0], [1, 0, 0]])
    tm = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = credit.place_step_rewards(r, m, e, tm)
    assert torch.equal(out, torch.tensor([[0.0, 0.5, 0.0, 1.0], [0.0, 0.25, 0.0, 0.0]]))


def test_place_step_rewards_same_end_adds():
    r = torch.tensor([[0.5, 0.25]])
    m = torch.ones(1, 2, dtype=torch.bool)
    out = credit.place_step_rewards(r, m, torch.tensor([[2, 2]]), torch.ones(1, 3))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 0.75]]))


# PPO token rewards x each shaping, by hand: steps 0.9 (ends on token 0) and 0.3 (ends on token 2, the last real
# token; token 3 is padding), verified correct. min aggregation = 0.3; sigmoid(0.5 * logit(0.3)) =
# sqrt(0.3) / (sqrt(0.3) + sqrt(0.7)) = 0.395644.
@pytest.mark.parametrize("shaping, last", [("none", 0.3), ("weighted", 0.3 + 2.0), ("qwen_math", 0.3 + 0.395644)])
def test_ppo_token_rewards_put_the_outcome_term_on_the_last_real_token(shaping, last):
    r = torch.tensor([[0.9, 0.3]])
    m = torch.ones(1, 2, dtype=torch.bool)
    out = credit.ppo_token_rewards(r, m, torch.tensor([[0, 2]]), torch.tensor([[1, 1, 1, 0]]),
                                   torch.tensor([1.0]), shaping, weight=2.0, aggregation="min")
    assert out[0].tolist() == pytest.approx([0.9, 0.0, last, 0.0], abs=1e-5)


def test_ppo_token_rewards_wrong_answer_and_empty_row():
    r = torch.tensor([[0.6], [0.0]])
    m = torch.tensor([[True], [False]])
    tm = torch.tensor([[1, 1], [0, 0]])
    out = credit.ppo_token_rewards(r, m, torch.tensor([[1], [0]]), tm, torch.tensor([0.0, 0.0]), "qwen_math")
    # sigmoid(0.5 * logit(0.6)) - 1 = sqrt(.6) / (sqrt(.6) + sqrt(.4)) - 1 = -0.449490 on the last token
    assert torch.allclose(out, torch.tensor([[0.0, 0.6 - 0.449490], [0.0, 0.0]]), atol=1e-5), out
    with pytest.raises(ValueError, match="verifier"):
        credit.ppo_token_rewards(r, m, torch.tensor([[1], [0]]), tm, None, "weighted")


def test_place_step_rewards_rejects_out_of_range_end():
    with pytest.raises(ValueError, match="out of range"):
        credit.place_step_rewards(torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool), torch.tensor([[5]]),
                                  torch.ones(1, 3))


def test_gae_multi_step_by_hand():
    # steps end on tokens 1 and 3 with scores 0.5 and 1.0; gamma 0.9, lambda 0.5
    r = torch.tensor([[0.0, 0.5, 0.0, 1.0]])
    v = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    adv, ret = credit.gae(r, v, torch.ones(1, 4), gamma=0.9, lam=0.5)
    # delta = [0.9*0.4-0.2, 0.5+0.9*0.6-0.4, 0.9*0.8-0.6, 1.0-0.8] = [0.16, 0.64, 0.12, 0.2]
    # A3 = 0.2; A2 = 0.12 + 0.45*0.2 = 0.21; A1 = 0.64 + 0.45*0.21 = 0.7345; A0 = 0.16 + 0.45*0.7345 = 0.490525
    assert torch.allclose(adv, torch.tensor([[0.490525, 0.7345, 0.21, 0.2]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.690525, 1.1345, 0.81, 1.0]]), atol=1e-6)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    r = torch.tensor([[0.0, 0.5, 0.0, 1.0]])
    v = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    adv, ret = credit.gae(r, v, torch.ones(1, 4), gamma=1.0, lam=1.0)
    assert torch.allclose(ret, torch.tensor([[1.5, 1.5, 1.0, 1.0]]))
    assert torch.allclose(adv, ret - v)


def test_gae_lambda_zero_is_one_step_td():
    r = torch.tensor([[0.0, 0.5, 0.0, 1.0]])
    v = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    adv, _ = credit.gae(r, v, torch.ones(1, 4), gamma=0.9, lam=0.0)
    assert torch.allclose(adv, torch.tensor([[0.16, 0.64, 0.12, 0.2]]), atol=1e-6)


def test_gae_one_step_response():
    adv, ret = credit.gae(torch.tensor([[1.0]]), torch.tensor([[0.3]]), torch.ones(1, 1), gamma=0.99, lam=0.95)
    assert torch.allclose(adv, torch.tensor([[0.7]])) and torch.allclose(ret, torch.tensor([[1.0]]))


def test_gae_padded_batch_ignores_padding_and_matches_rows_alone():
    # row 0: 4 tokens (the multi-step case); row 1: 1 token, padded with garbage rewards/values
    r = torch.tensor([[0.0, 0.5, 0.0, 1.0], [1.0, 7.0, 7.0, 7.0]])
    v = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.3, 9.0, 9.0, 9.0]])
    tm = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    adv, ret = credit.gae(r, v, tm, gamma=0.9, lam=0.5)
    assert torch.allclose(adv[0], torch.tensor([0.490525, 0.7345, 0.21, 0.2]), atol=1e-6)
    # the padded row: the next value after token 0 is terminal (0), not the padding's 9.0
    assert torch.allclose(adv[1], torch.tensor([0.7, 0.0, 0.0, 0.0]))
    assert torch.allclose(ret[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    for b in range(2):
        n = int(tm[b].sum())
        a1, r1 = credit.gae(r[b:b + 1, :n], v[b:b + 1, :n], torch.ones(1, n), gamma=0.9, lam=0.5)
        assert torch.allclose(adv[b:b + 1, :n], a1) and torch.allclose(ret[b:b + 1, :n], r1)


def test_gae_truncated_response_terminal_vs_bootstrapped():
    # a response cut off by the length limit: no reward yet, values 0.1 0.2 0.3, value after the cut 0.5
    r = torch.zeros(1, 3)
    v = torch.tensor([[0.1, 0.2, 0.3]])
    adv, ret = credit.gae(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0)  # treated as terminal
    assert torch.allclose(adv, torch.tensor([[-0.1, -0.2, -0.3]])) and torch.allclose(ret, torch.zeros(1, 3))
    adv, ret = credit.gae(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0, next_values=torch.tensor([0.5]))
    # delta = [0.2-0.1, 0.3-0.2, 0.5-0.3] = [0.1, 0.1, 0.2]; A = [0.4, 0.3, 0.2]; R = 0.5 everywhere
    assert torch.allclose(adv, torch.tensor([[0.4, 0.3, 0.2]])) and torch.allclose(ret, torch.full((1, 3), 0.5))


def test_gae_bootstrap_lands_on_each_rows_last_real_token():
    r = torch.zeros(2, 3)
    v = torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.2, 5.0]])
    tm = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = credit.gae(r, v, tm, gamma=0.5, lam=1.0, next_values=torch.tensor([0.0, 0.8]))
    # row 1: delta = [0.5*0.2-0.1, 0.5*0.8-0.2] = [0.0, 0.2]; A = [0.0 + 0.5*0.2, 0.2] = [0.1, 0.2]
    assert torch.allclose(adv[1], torch.tensor([0.1, 0.2, 0.0]))
    assert torch.allclose(ret[1], torch.tensor([0.2, 0.4, 0.0]))
    # row 0 with next value 0 is the terminal case: delta = [0.0, -0.05, -0.3]; A2=-0.3, A1=-0.2, A0=-0.1
    assert torch.allclose(adv[0], torch.tensor([-0.1, -0.2, -0.3]))


def test_gae_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes"):
        credit.gae(torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        credit.gae(torch.tensor([[float("nan")]]), torch.zeros(1, 1), torch.ones(1, 1))


def test_whiten_masked_by_hand():
    x = torch.tensor([[1.0, 3.0, 100.0], [2.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = credit.whiten(x, m, eps=0.0)
    # masked entries 1, 3, 2: mean 2, population var 2/3
    s = (2.0 / 3.0) ** 0.5
    assert torch.allclose(out, torch.tensor([[-1 / s, 1 / s, 0.0], [0.0, 0.0, 0.0]]), atol=1e-6)
    kept = credit.whiten(x, m, shift_mean=False, eps=0.0)
    assert torch.allclose(kept, torch.tensor([[-1 / s + 2, 1 / s + 2, 0.0], [2.0, 0.0, 0.0]]), atol=1e-6)
    # global statistics passed in (as a trainer does for a batch spread over ranks)
    g = credit.whiten(x, m, mean=0.0, var=4.0, eps=0.0)
    assert torch.allclose(g, torch.tensor([[0.5, 1.5, 0.0], [1.0, 0.0, 0.0]]))
