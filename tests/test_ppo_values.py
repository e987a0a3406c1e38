"""PPO's critic reads one convention everywhere: column t of ``state_values`` is V(s_t), the state *before*
completion token t. Before this was fixed the loss regressed V(s_{t+1}) onto R_t (one token off).

* a critic trained on a reward that always lands on completion token K (gamma = 1, lambda = 0.5, frozen greedy
  policy) learns V(s_t) = 1 up to and including s_K and 0 after it;
* the advantages, returns and value loss of a rollout equal a plain-Python recomputation from the critic's
  outputs (read by hand at the positions before each completion token);
* PPO epochs reshuffle the rollout into new mini-batches.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from reward.base import StepRewardModel
from reward.steps import StepSplitter
from rlkit import testing
from rlkit.data import load_prompts
from rlkit.trainers.ppo_config import PRMPPOConfig
from rlkit.trainers.ppo_trainer import PRMPPOTrainer

K = 2  # the completion token that gets the reward


class OneStep(StepRewardModel):
    """Every response is one step scored 0.25 (the token rewards below replace it for the critic test)."""

    def __init__(self):
        super().__init__(StepSplitter("double_newline", max_steps=1))

    def score_steps(self, prompts, steps, references=None):
        return [[0.25] * len(s) for s in steps]


class RewardOnTokenK(PRMPPOTrainer):
    """Reward 1 on completion token K of every response, 0 elsewhere."""

    def token_rewards(self, step_rewards, step_mask, step_ends, token_mask, verified):
        r = torch.zeros_like(token_mask, dtype=torch.float32)
        r[:, K] = 1.0
        return r * token_mask


def _config(tmp_path, **kw):
    cfg = dict(output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=2,
               max_completion_length=6, max_steps=2, learning_rate=0.0, logging_steps=1, report_to=[], disable_tqdm=True,
               use_cpu=True, bf16=False, save_strategy="no", gradient_checkpointing=False, seed=0, kl_coef=0.0,
               whiten_advantages=False)
    cfg.update(kw)
    return PRMPPOConfig(**cfg)


def _one_prompt_dataset(n: int = 64) -> Dataset:
    row = load_prompts("builtin:arithmetic", n=1)[0]
    return Dataset.from_list([row] * n)


def _by_hand_values(trainer, out) -> torch.Tensor:
    """V(s_t) read from the critic's logits: the output at the position of the token before completion token t."""
    ids, mask = out["completion_ids"], out["completion_mask"]
    input_ids = torch.cat([out["prompt_ids"], ids], 1)
    attn = torch.cat([out["prompt_mask"], mask], 1)
    P, T = out["prompt_ids"].shape[1], ids.shape[1]
    with torch.no_grad():
        logits = trainer.critic(input_ids=input_ids, attention_mask=attn).logits[..., 0]
    return torch.stack([logits[:, P - 1 + t] for t in range(T)], dim=1)


def test_critic_learns_the_values_before_and_after_the_reward_token(tok, tmp_path):
    # frozen policy sampling greedily (top_k 1) and at least 6 tokens: every rollout is the same sequence
    trainer = RewardOnTokenK(
        model=testing.tiny_causal_lm(tok), processing_class=tok, train_dataset=_one_prompt_dataset(),
        step_reward=OneStep(),
        args=_config(tmp_path, max_steps=80, top_k=1, generation_kwargs={"min_new_tokens": 6}, gamma=1.0, lam=0.5,
                     vf_coef=1.0, cliprange_value=100.0, critic_learning_rate=1e-3,
                     lr_scheduler_type="constant"))
    trainer.train()
    trainer.model.train()
    out = trainer._generate_and_score_completions([trainer.train_dataset[0]] * 2)
    assert out["completion_mask"][:, : K + 2].all()
    v = _by_hand_values(trainer, out)[0]
    # gamma = 1 and one reward of 1 on token K: V(s_t) = 1 for t <= K, 0 afterwards
    assert v[: K + 1].tolist() == pytest.approx([1.0] * (K + 1), abs=0.1), v
    assert v[K + 1:].tolist() == pytest.approx([0.0] * (len(v) - K - 1), abs=0.1), v


def _gae_by_hand(r: list[float], v: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    n, adv, running = len(r), [0.0] * len(r), 0.0
    for t in reversed(range(n)):
        nxt = v[t + 1] if t + 1 < n else 0.0
        running = r[t] + gamma * nxt - v[t] + gamma * lam * running
        adv[t] = running
    return adv, [a + b for a, b in zip(adv, v)]


def test_rollout_advantages_returns_and_value_loss_equal_a_recomputation(tok, tmp_path):
    gamma, lam, clip = 0.9, 0.7, 0.05
    trainer = PRMPPOTrainer(model=testing.tiny_causal_lm(tok), processing_class=tok,
                            train_dataset=load_prompts("builtin:arithmetic", n=8), step_reward=OneStep(),
                            args=_config(tmp_path, gamma=gamma, lam=lam, cliprange_value=clip, max_completion_length=10))
    trainer.model.train()
    out = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in (0, 0, 1, 1)])
    mask = out["completion_mask"]
    values = _by_hand_values(trainer, out)
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        r = [0.0] * n
        r[n - 1] = 0.25  # the one step's score on the last token
        adv, ret = _gae_by_hand(r, values[b, :n].tolist(), gamma, lam)
        assert out["old_values"][b, :n].tolist() == pytest.approx(values[b, :n].tolist(), abs=1e-5)
        assert out["advantages"][b, :n].tolist() == pytest.approx(adv, abs=1e-5)
        assert out["returns"][b, :n].tolist() == pytest.approx(ret, abs=1e-5)
    # the value loss regresses the same V(s_t): with targets moved by +1 the clipped term is what counts
    out["returns"] = out["returns"] + mask.float()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop otherwise
    trainer._compute_loss(trainer.model, out)
    ret, old, m = out["returns"], out["old_values"], mask.float()
    clipped = old + (values - old).clamp(-clip, clip)
    expect = 0.5 * (torch.max((values - ret) ** 2, (clipped - ret) ** 2) * m).sum() / m.sum()
    assert trainer._metrics["train"]["value_loss"][-1] == pytest.approx(expect.item(), abs=1e-5)


def test_each_ppo_epoch_reshuffles_the_rollout_into_new_minibatches(tok, tmp_path):
    seen: list[list[tuple[int, ...]]] = []

    class Recording(PRMPPOTrainer):
        def _compute_loss(self, model, inputs):
            seen.append(sorted(tuple(row.tolist()) for row in inputs["completion_ids"]))
            return super()._compute_loss(model, inputs)

    trainer = Recording(model=testing.tiny_causal_lm(tok), processing_class=tok,
                        train_dataset=load_prompts("builtin:arithmetic", n=16), step_reward=OneStep(),
                        args=_config(tmp_path, max_steps=4, steps_per_generation=2, num_iterations=2,
                                     max_completion_length=8, learning_rate=1e-4))
    trainer.train()
    assert len(seen) == 4  # one rollout: epoch 1 = steps 1-2, epoch 2 = steps 3-4
    epoch1, epoch2 = {tuple(seen[0]), tuple(seen[1])}, {tuple(seen[2]), tuple(seen[3])}
    assert sorted(seen[0] + seen[1]) == sorted(seen[2] + seen[3])  # the same rollout in both epochs
    assert epoch1 != epoch2, "the second epoch swept the same mini-batches"
