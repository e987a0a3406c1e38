"""PRMPPOTrainer on tiny models: advantages are GAE of PRM scores on step-end tokens, training changes policy and
critic, the value loss falls on a fixed reward, merging optimizers touch the policy only, save/resume are exact,
and `rlkit train` runs the PPO quickstart recipe end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from reward.base import StepRewardModel
from reward.steps import StepSplitter
from rlkit import credit, testing
from rlkit.data import load_prompts
from rlkit.testing import train_ok

REPO = Path(__file__).resolve().parents[1]


class CharCountReward(StepRewardModel):
    """Test reward: each step scores the share of its characters equal to ``char``."""

    def __init__(self, char: str = " ", splitter=None):
        super().__init__(splitter or StepSplitter("regex", pattern=r"[.=]"))
        self.char = char

    def score_steps(self, prompts, steps, references=None):
        return [[s.text.count(self.char) / max(len(s.text), 1) for s in st] for st in steps]


class ConstantReward(StepRewardModel):
    """Every response is one step scored ``value``: a fixed reward the critic can learn."""

    def __init__(self, value: float = 1.0):
        super().__init__(StepSplitter("double_newline", max_steps=1))
        self.value = value

    def score_steps(self, prompts, steps, references=None):
        return [[self.value] * len(st) for st in steps]


def _args(tmp_path, **cfg):
    from rlkit.trainers.ppo_config import PRMPPOConfig

    kw = dict(output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=4,
              max_completion_length=12, max_steps=2, learning_rate=1e-3, logging_steps=1, report_to=[],
              use_cpu=True, bf16=False, save_strategy="no", gradient_checkpointing=False, seed=0, temperature=1.0,
              kl_coef=0.0)
    kw.update(cfg)
    return PRMPPOConfig(**kw)


def _trainer(tok, tmp_path, reward=None, model=None, optimizer_cfg=None, **cfg):
    from rlkit.trainers.ppo_trainer import PRMPPOTrainer

    return PRMPPOTrainer(model=model if model is not None else testing.tiny_causal_lm(tok), processing_class=tok,
                         args=_args(tmp_path, **cfg), train_dataset=load_prompts("builtin:arithmetic", n=16),
                         step_reward=reward or CharCountReward(), optimizer_cfg=optimizer_cfg)


def _losses(trainer, key="loss", after_step=0):
    return [h[key] for h in trainer.state.log_history if key in h and h.get("step", 0) > after_step]


def test_config_rejects_beta_and_bad_gae_params(tmp_path):
    with pytest.raises(ValueError, match="kl_coef"):
        _args(tmp_path, beta=0.3, kl_coef=0.1)
    with pytest.raises(ValueError, match="lam"):
        _args(tmp_path, lam=1.5)
    assert _args(tmp_path, kl_coef=0.2).beta == 0.2  # mirrors kl_coef: TRL builds the reference model


def test_advantages_are_gae_of_step_scores_on_step_end_tokens(tok, tmp_path, tiny_dirs):
    reward = CharCountReward()
    trainer = _trainer(tok, tmp_path, reward, model=tiny_dirs["policy"], whiten_advantages=False, kl_coef=0.1,
                       gamma=0.9, lam=0.8)
    trainer.model.train()
    batch = [trainer.train_dataset[i] for i in (0, 0, 1, 1)]
    out = trainer._generate_and_score_completions(batch)
    ids, mask = out["completion_ids"], out["completion_mask"]
    assert out["advantages"].shape == ids.shape == out["returns"].shape == out["old_values"].shape
    # independent recomputation: decode, split, score, place each score on its step's last token
    r, sm, e = testing.recompute_step_rewards(tok, reward, ids, mask)
    token_r = credit.place_step_rewards(r, sm, e, mask.float())
    # KL penalty from the policy (at rollout) and the reference (the same weights now: KL = 0 at the start)
    input_ids = torch.cat([out["prompt_ids"], ids], 1)
    attn = torch.cat([out["prompt_mask"], mask], 1)
    with torch.no_grad():
        logp = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attn, ids.shape[1])[0]
        ref = trainer._get_per_token_logps_and_entropies(trainer.ref_model, input_ids, attn, ids.shape[1])[0]
        values = trainer.critic(input_ids=input_ids, attention_mask=attn).logits[:, -ids.shape[1] - 1:-1, 0]
    token_r = token_r - 0.1 * (logp - ref) * mask
    adv, ret = credit.gae(token_r, values * mask, mask.float(), gamma=0.9, lam=0.8)
    assert torch.allclose(out["old_values"], values * mask, atol=1e-5)
    assert torch.allclose(out["advantages"], adv, atol=1e-5) and torch.allclose(out["returns"], ret, atol=1e-5)
    assert trainer._metrics["train"]["prm/steps_per_response"] and "ppo/kl" in trainer._metrics["train"]


def test_training_changes_policy_and_critic_with_finite_loss(tok, tmp_path, tiny_dirs):
    trainer = _trainer(tok, tmp_path, model=tiny_dirs["policy"], kl_coef=0.05, num_iterations=2,
                       steps_per_generation=2, max_steps=4)
    assert trainer.ref_model is not None and trainer.beta == 0.0  # KL is in the reward, not the loss
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert all(math.isfinite(x) for x in _losses(trainer, "value_loss"))
    changed = {k for k, v in trainer.model.named_parameters() if not torch.equal(before[k], v)}
    assert any(k.startswith("rlkit_critic.") for k in changed), "critic did not change"
    assert any(not k.startswith("rlkit_critic.") for k in changed), "policy did not change"
    assert any("ppo/kl" in h for h in trainer.state.log_history)


def test_value_loss_goes_down_on_a_fixed_reward(tok, tmp_path):
    # frozen policy (lr 0) and a constant reward: the returns are fixed, so only the critic learns
    trainer = _trainer(tok, tmp_path, ConstantReward(1.0), max_steps=6, learning_rate=0.0, critic_learning_rate=1e-2,
                       vf_coef=1.0, cliprange_value=100.0, lam=1.0, lr_scheduler_type="constant")
    trainer.train()
    vl = _losses(trainer, "value_loss")
    assert len(vl) == 6 and all(math.isfinite(x) for x in vl)
    # the critic starts near 0 against returns of ~1 (loss ~0.5) and fits them within a few steps
    assert sum(vl[-3:]) / 3 < 0.2 * vl[0], vl


def test_merging_optimizer_acts_on_the_policy_only(tok, tmp_path):
    from rlkit.optim import OnDAREAdamW
    from rlkit.optim.actor_critic import ActorCriticOptimizer

    trainer = _trainer(tok, tmp_path, optimizer_cfg={"name": "ondare", "p": 0.5, "alpha": 0.0}, max_steps=1)
    trainer.create_optimizer()
    opt = trainer.optimizer
    assert isinstance(opt, ActorCriticOptimizer) and isinstance(opt.actor, OnDAREAdamW)
    assert type(opt.critic) is torch.optim.AdamW
    critic_ids = {id(p) for p in trainer.critic.parameters()}
    actor_ids = {id(p) for g in opt.actor.param_groups for p in g["params"]}
    assert actor_ids and not actor_ids & critic_ids
    assert {id(p) for g in opt.critic.param_groups for p in g["params"]} == critic_ids
    policy_ids = {id(p) for n, p in trainer.model.named_parameters() if not n.startswith("rlkit_critic.")}
    assert actor_ids == policy_ids
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    changed = {k for k, v in trainer.model.named_parameters() if not torch.equal(before[k], v)}
    assert any(k.startswith("rlkit_critic.") for k in changed) and any(not k.startswith("rlkit_") for k in changed)
    # OnDARE with p = 0.5 leaves about half of each policy tensor's entries untouched; AdamW moves all critic entries
    name = "model.layers.0.mlp.up_proj.weight"
    frac = (dict(trainer.model.named_parameters())[name] != before[name]).float().mean().item()
    assert 0.3 < frac < 0.7
    cname = "rlkit_critic.model.layers.0.mlp.up_proj.weight"
    assert (dict(trainer.model.named_parameters())[cname] != before[cname]).float().mean().item() > 0.95


def test_save_model_writes_policy_without_critic_and_critic_folder(tok, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rlkit.trainers.ppo_critic import build_critic

    trainer = _trainer(tok, tmp_path, max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "policy"))
    keys = load_file(str(tmp_path / "policy" / "model.safetensors")).keys()
    assert keys and not any("rlkit_critic" in k for k in keys)
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "policy"))  # a plain HF policy folder
    critic = build_critic(str(tmp_path / "policy" / "critic"))
    for n, p in critic.named_parameters():
        assert torch.equal(p, dict(trainer.critic.named_parameters())[n]), n


def test_resume_gives_the_same_next_step_loss(tok, tmp_path, tiny_dirs):
    # 2 PPO epochs x 2 mini-batches per rollout; checkpoint after step 4 (a rollout boundary), compare steps 5-6
    cfg = dict(model=tiny_dirs["policy"], kl_coef=0.05, num_iterations=2, steps_per_generation=2, max_steps=6,
               save_strategy="steps", save_steps=4)
    full = _trainer(tok, tmp_path / "a", **cfg)
    full.train()
    ref_losses = _losses(full)
    ref_vl = _losses(full, "value_loss")
    ckpt = tmp_path / "a" / "out" / "checkpoint-4"
    assert (ckpt / "critic" / "model.safetensors").is_file()
    resumed = _trainer(tok, tmp_path / "b", **cfg)
    resumed.train(resume_from_checkpoint=str(ckpt))
    got = _losses(resumed, after_step=4)  # the log history before the checkpoint comes back with it
    got_vl = _losses(resumed, "value_loss", after_step=4)
    assert len(got) == 2 and len(ref_losses) == 6
    assert got == pytest.approx(ref_losses[4:], abs=1e-5), (got, ref_losses)
    assert got_vl == pytest.approx(ref_vl[4:], abs=1e-5)
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-5), n


def test_cli_runs_ppo_quickstart_end_to_end(tok, tmp_path, tiny_dirs):
    run = train_ok(REPO / "rlkit" / "recipes" / "ppo_prm_quickstart.yaml", tmp_path / "runs", f"model={tiny_dirs['policy']}",
                   "training.max_steps=2", "training.max_completion_length=12", "data.num_train=8",
                   "data.num_eval=2", "training.per_device_train_batch_size=4", cwd=REPO)
    assert (run / "policy" / "model.safetensors").is_file() and (run / "policy" / "critic" / "config.json").is_file()
    hist = json.loads((run / "metrics.json").read_text())
    losses = [h["loss"] for h in hist if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert any("value_loss" in h for h in hist)
    assert yaml.safe_load((run / "recipe.yaml").read_text())["algorithm"]["name"] == "ppo"
    report = (run / "report" / "index.md").read_text()
    assert "algorithm: `ppo`; credit: GAE over step-end rewards (gamma 1.0, lambda 0.95)" in report
