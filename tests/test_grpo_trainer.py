"""PRMGRPOTrainer on tiny models: advantages land on the right tokens, training changes the policy, and a
trivially learnable step reward goes up."""

from __future__ import annotations

import math

import pytest
import torch

from reward.base import StepRewardModel
from reward.steps import StepSplitter
from rlkit import credit, testing
from rlkit.data import load_prompts


class CharCountReward(StepRewardModel):
    """Test reward: each step scores the share of its characters equal to ``char``."""

    def __init__(self, char: str = "a", splitter=None):
        super().__init__(splitter)
        self.char = char

    def score_steps(self, prompts, steps, references=None):
        return [[s.text.count(self.char) / max(len(s.text), 1) for s in st] for st in steps]


def _trainer(tok, tmp_path, reward, credit_mode="process_grpo", model=None, **cfg):
    from trl import GRPOConfig

    from rlkit.trainers.grpo_trainer import PRMGRPOTrainer

    kw = dict(output_dir=str(tmp_path / "out"), num_generations=4, per_device_train_batch_size=8,
              max_completion_length=16, max_steps=2, learning_rate=1e-3, logging_steps=1, report_to=[],
              use_cpu=True, bf16=False, save_strategy="no", gradient_checkpointing=False, seed=0,
              temperature=1.0)
    kw.update(cfg)
    ds = load_prompts("builtin:arithmetic", n=16)
    return PRMGRPOTrainer(model=model or testing.tiny_causal_lm(tok), processing_class=tok, args=GRPOConfig(**kw),
                          train_dataset=ds, step_reward=reward, credit=credit_mode)


def test_advantages_match_credit_of_step_scores(tok, tmp_path):
    reward = CharCountReward(" ", splitter=StepSplitter("regex", pattern=r"[.=]"))
    trainer = _trainer(tok, tmp_path, reward)
    batch = [trainer.train_dataset[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    trainer.model.train()
    out = trainer._generate_and_score_completions(batch)
    ids, mask = out["completion_ids"], out["completion_mask"]
    assert out["advantages"].shape == ids.shape
    # Recompute independently: decode, split, score, place each score on its step's last token.
    r, sm, e = testing.recompute_step_rewards(tok, reward, ids, mask)
    expected = credit.process_grpo(r, sm, e, mask.float(), group_size=4)
    assert torch.allclose(out["advantages"] * mask, expected, atol=1e-5)
    metrics = trainer._metrics["train"]
    assert metrics["prm/steps_per_response"] and metrics["outcome/accuracy"]


@pytest.mark.parametrize("mode", ["process_grpo", "min_form", "outcome"])
def test_training_runs_and_changes_policy(tok, tmp_path, mode):
    reward = CharCountReward(" ", splitter=StepSplitter("regex", pattern=r"[.=]"))
    trainer = _trainer(tok, tmp_path, reward, credit_mode=mode)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    changed = sum(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
    assert changed > 0


def test_trivially_learnable_step_reward_goes_up(tok, tmp_path):
    # Reward: share of 'a' characters in each step. A random tiny policy learns to emit 'a' within ~20 steps
    # (measured: mean reward ~0.03 over the first 4 steps, ~0.49 over the last 4; ~10 s on 2 cores).
    trainer = _trainer(tok, tmp_path, CharCountReward("a"), max_steps=24, learning_rate=2e-2,
                       max_completion_length=6, per_device_train_batch_size=16, num_generations=8)
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > 3 * first and last > first + 0.15, rewards


@pytest.mark.slow
def test_resume_gives_same_next_step_loss(tok, tmp_path):
    reward = CharCountReward(" ", splitter=StepSplitter("regex", pattern=r"[.=]"))
    common = dict(max_steps=3, save_strategy="steps", save_steps=2, learning_rate=1e-2)
    full = _trainer(tok, tmp_path / "a", reward, **common)
    full.train()
    losses = {h["step"]: h["loss"] for h in full.state.log_history if "loss" in h}
    assert losses[3] != 0.0
    resumed = _trainer(tok, tmp_path / "a", reward, **common)  # same output_dir: its checkpoint-2
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-2"))
    again = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    assert again[3] == pytest.approx(losses[3], abs=1e-5)


def test_kl_loss_types_and_peft(tok, tmp_path, tiny_dirs):
    """TRL's machinery keeps working under our advantages: KL to a reference (beta > 0), another loss type,
    and a LoRA policy through PEFT (only adapter weights change)."""
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from rlkit.trainers.grpo_trainer import PRMGRPOTrainer

    reward = CharCountReward(" ", splitter=StepSplitter("regex", pattern=r"[.=]"))
    # TRL builds the KL reference model from the policy's path, so this one starts from a saved folder
    saved_tok = AutoTokenizer.from_pretrained(tiny_dirs["policy"])
    trainer = _trainer(saved_tok, tmp_path / "kl", reward, model=tiny_dirs["policy"], beta=0.1, loss_type="grpo")
    trainer.train()
    hist = [h for h in trainer.state.log_history if "loss" in h]
    assert all("kl" in h and math.isfinite(h["kl"]) for h in hist)

    from trl import GRPOConfig

    cfg = GRPOConfig(output_dir=str(tmp_path / "lora"), num_generations=4, per_device_train_batch_size=8,
                     max_completion_length=16, max_steps=2, learning_rate=1e-2, report_to=[], use_cpu=True,
                     bf16=False, save_strategy="no", gradient_checkpointing=False, seed=0)
    lora = PRMGRPOTrainer(model=testing.tiny_causal_lm(tok), processing_class=tok, args=cfg,
                          train_dataset=load_prompts("builtin:arithmetic", n=16), step_reward=reward,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    before = {k: v.clone() for k, v in lora.model.named_parameters()}
    lora.train()
    changed = {k for k, v in lora.model.named_parameters() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed)
