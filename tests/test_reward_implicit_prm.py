"""implicit-prm (PRIME): step scores against log-probs from a plain forward pass, and one SGD update against
an autograd computation of the outcome loss, on tiny random Qwen2 causal LMs."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from reward.base import RewardError
from reward.models.implicit_prm import ImplicitPRM, outcome_loss
from reward.registry import build_reward, check_reward_args
from rlkit import testing

BETA = 0.5
PROMPTS = ["Natalia sold 48 clips in April and half as many in May. How many clips did she sell?",
           "What is 2 + 3?"]
RESPONSES = ["Step 1: 48 / 2 = 24 clips in May.\n\nStep 2: 48 + 24 = 72 clips.\n\nThe answer is \\boxed{72}.\n",
             "  2 + 3 = 5\n\nSo 5."]


@pytest.fixture()
def models(tok):
    return testing.tiny_causal_lm(tok, seed=1), testing.tiny_causal_lm(tok, seed=2)


def plain_log_probs(model, tok, prompt: str, response: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """log p(token | prefix) of every response token, by one unpadded forward, and each token's char offsets."""
    head = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                   tokenize=False)
    head_ids = tok.encode(head, add_special_tokens=False)
    enc = tok(response, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([head_ids + enc["input_ids"]])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    n = len(head_ids)
    lp = torch.stack([logp[t - 1, ids[0, t]] for t in range(n, ids.shape[1])])
    return lp, enc["offset_mapping"]


def test_step_scores_are_summed_token_log_ratios(tok, models):
    phi, ref = models
    rm = ImplicitPRM(phi, ref_model=ref, tokenizer=tok, beta=BETA)
    out = rm.score(PROMPTS, RESPONSES)
    for prompt, response, got in zip(PROMPTS, RESPONSES, out):
        with torch.no_grad():
            lp_phi, offsets = plain_log_probs(phi, tok, prompt, response)
            lp_ref, _ = plain_log_probs(ref, tok, prompt, response)
        token_rewards = BETA * (lp_phi - lp_ref)
        # a token belongs to the first step it starts inside of (or before): the separator's tokens go to the
        # next step, a token straddling a step's end to that step; the last step owns the rest (the trailing
        # newline of the first response)
        ends = [s.end for s in got.steps]
        owner = [min([i for i, e in enumerate(ends) if start < e] or [len(ends) - 1]) for start, _ in offsets]
        want = [float(sum(r for r, o in zip(token_rewards, owner) if o == i)) for i in range(len(ends))]
        assert len(got.scores) == len(ends) >= 2
        assert got.scores == pytest.approx(want, abs=1e-5)
        assert got.meta["response_reward"] == pytest.approx(float(token_rewards.sum()), abs=1e-5)
        assert all(abs(s) > 1e-4 for s in got.scores)  # two different random models: nonzero log-ratios
    assert ImplicitPRM.probabilistic is False and rm.probabilistic is False


def test_reference_defaults_to_a_frozen_copy_so_rewards_start_at_zero(tok, models):
    rm = ImplicitPRM(models[0], tokenizer=tok)
    scores = rm.score(PROMPTS, RESPONSES)
    assert all(v == pytest.approx(0.0, abs=1e-6) for s in scores for v in s.scores)
    assert not any(p.requires_grad for p in rm.ref_model.parameters())
    assert rm.score(["q"], [""])[0].scores == []


def test_an_engine_in_bf16_brings_the_reference_to_bf16_so_equal_models_still_score_zero(tok, models):
    import types

    rm = ImplicitPRM(models[0], tokenizer=tok)
    rm.model.to(torch.bfloat16)  # what DeepSpeed's bf16 mode does to the module it is given
    before = rm.score(PROMPTS, RESPONSES)
    assert any(abs(v) > 1e-4 for s in before for v in s.scores)  # bf16 pi_phi against an fp32 copy: noise
    engine = types.SimpleNamespace(module=rm.model, optimizer=None, zero_optimization_partition_weights=lambda: False)
    rm.attach_engine(engine)
    assert next(rm.ref_model.parameters()).dtype == torch.bfloat16 and rm.engine is engine
    assert all(v == 0.0 for s in rm.score(PROMPTS, RESPONSES) for v in s.scores)
    with pytest.raises(RewardError, match="must wrap this reward's pi_phi"):
        rm.attach_engine(types.SimpleNamespace(module=models[1]))


def test_one_sgd_update_moves_parameters_by_minus_lr_times_the_loss_gradient(tok, models):
    phi, ref = models
    before, ref_before = copy.deepcopy(phi), copy.deepcopy(ref)
    lr, labels = 0.1, [1, 0]
    rm = ImplicitPRM(phi, ref_model=ref, tokenizer=tok, beta=BETA, optimizer="sgd", lr=lr)

    # the loss by hand: r = beta * sum_t (log pi_phi - log pi_ref), BCE of sigmoid(r) against the label
    expect = copy.deepcopy(before)
    rewards = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        lp_phi, _ = plain_log_probs(expect, tok, prompt, response)
        with torch.no_grad():
            lp_ref, _ = plain_log_probs(ref, tok, prompt, response)
        rewards.append(BETA * (lp_phi - lp_ref).sum())
    losses = [-(y * torch.nn.functional.logsigmoid(r) + (1 - y) * torch.nn.functional.logsigmoid(-r))
              for r, y in zip(rewards, labels)]
    loss = sum(losses) / len(losses)
    loss.backward()

    stats = rm.update({"prompts": PROMPTS, "responses": RESPONSES, "labels": labels})
    assert stats["loss"] == pytest.approx(float(loss.detach()), abs=1e-6)
    assert stats["reward_mean"] == pytest.approx(float(sum(rewards).detach()) / 2, abs=1e-5)
    moved = 0
    for (name, p_new), p_old, p_exp in zip(phi.named_parameters(), before.parameters(), expect.parameters()):
        want = p_old.detach() - lr * p_exp.grad
        torch.testing.assert_close(p_new.detach(), want, atol=1e-6, rtol=0, msg=name)
        moved += int((p_new.detach() - p_old.detach()).abs().max() > 1e-6)
    assert moved >= 10  # the step really changed the weights
    for p_r, p_0 in zip(ref.parameters(), ref_before.parameters()):
        assert torch.equal(p_r, p_0)  # the reference never moves
    assert not phi.training  # back in eval mode


def test_outcome_loss_by_hand():
    r, y = torch.tensor([1.5, -0.5, 0.0]), torch.tensor([1, 1, 0])
    want = (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(0.5)) + math.log(2)) / 3
    assert float(outcome_loss(r, y)) == pytest.approx(want, rel=1e-6)
    with pytest.raises(RewardError, match=r"\(2,\) rewards for \(3,\) labels"):
        outcome_loss(torch.zeros(2), torch.zeros(3))


def test_registered_loads_from_folders_and_refuses_bad_input(tok, models, tmp_path):
    phi_dir = testing.save_tiny(models[0], tok, tmp_path / "phi")
    ref_dir = testing.save_tiny(models[1], tok, tmp_path / "ref")
    assert check_reward_args("implicit-prm", {"model": phi_dir, "ref_model": ref_dir, "beta": 0.1}) == []
    rm = build_reward("implicit-prm", model=phi_dir, ref_model=ref_dir, beta=BETA)
    # (the folder's tokenizer loads as transformers' Qwen2Tokenizer, which splits digits differently)
    direct = ImplicitPRM(models[0], ref_model=models[1], tokenizer=rm.tokenizer, beta=BETA)
    assert rm.score(PROMPTS, RESPONSES)[0].scores == pytest.approx(direct.score(PROMPTS, RESPONSES)[0].scores,
                                                                    abs=1e-5)
    with pytest.raises(RewardError, match="labels must be 0 or 1"):
        rm.update({"prompts": ["q"], "responses": ["a"], "labels": [2]})
    with pytest.raises(RewardError, match="equally many prompts, responses and labels, got 1, 1, 0"):
        rm.update({"prompts": ["q"], "responses": ["a"], "labels": []})
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        ImplicitPRM(models[0], tokenizer=tok, optimizer="adam")
    short = ImplicitPRM(models[0], ref_model=models[1], tokenizer=tok, max_length=40)
    s = short.score(PROMPTS[1:], ["1 + 1 = 2\n\n" * 10 + "So 2."])[0]
    assert s.meta["unscored_steps"] > 0 and s.scores[-1] == 0.0
    with pytest.raises(RewardError, match="the prompt alone is"):
        ImplicitPRM(models[0], tokenizer=tok, max_length=5).score(PROMPTS[:1], RESPONSES[:1])
