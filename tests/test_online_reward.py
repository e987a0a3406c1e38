"""An implicit PRM that learns inside the RL run (``algorithm.reward_update``, PRIME): each training rollout
gives it one SGD step on the verifier's labels of that rollout, exactly the gradient step of the outcome loss;
``after_scoring`` scores with the PRM as it was (all zeros at first, pi_phi = pi_ref), ``before_scoring`` with
the updated one; the PRM is saved with every checkpoint and in ``policy/``, and a resumed run ends on the same
PRM and policy as an uninterrupted one. Recipes that cannot learn online are refused in one line.
(ZeRO-2/3 on 2 processes: tests/test_ppo_zero.py runs its PPO with an online implicit PRM.)"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from reward.models.implicit_prm import ONLINE_STATE_FILE, outcome_loss
from reward.models.verifier import is_correct
from rlkit.checkpoints import COMPLETE_MARKER
from rlkit.config import RecipeError, recipe_from_dict
from rlkit.launch import new_run_dir, train
from rlkit.trainers.grpo_runner import build_grpo_trainer
from rlkit.checkpoints import ONLINE_REWARD_DIR

LR = 0.05


def _recipe(policy: str, update: str, steps: int = 2, algo: str = "grpo", **training) -> dict:
    return {"name": "online_prm", "model": policy, "seed": 3,
            "algorithm": {"name": algo, "reward_update": update},
            "reward": {"name": "implicit-prm", "args": {"model": policy, "beta": 0.5, "lr": LR, "optimizer": "sgd"}},
            "data": {"train": "builtin:arithmetic", "num_train": 16, "num_eval": 0},
            "training": {"max_steps": steps, "num_generations": 2, "per_device_train_batch_size": 4,
                         "max_completion_length": 12, "learning_rate": 1e-3, "report_to": [], "logging_steps": 1,
                         "save_strategy": "no", **training}}


def _trainer(tmp_path, policy, update, **kw):
    recipe = recipe_from_dict(_recipe(policy, update, **kw))
    return build_grpo_trainer(recipe, new_run_dir(recipe, str(tmp_path)))


def test_each_rollout_takes_the_outcome_loss_gradient_step_on_the_verifier_labels(tmp_path, tiny_dirs):
    trainer = _trainer(tmp_path, tiny_dirs["policy"], "after_scoring")
    prm = trainer.step_reward
    answers = {r["question"]: r["answer"] for r in trainer.train_dataset}
    seen, real_update = [], prm.update

    def checked_update(batch, reduce_gradients=None):
        # the expected step, computed apart on a copy: theta - lr * grad of the outcome loss on these labels
        twin = copy.deepcopy(prm.model)
        twin.zero_grad()
        original, prm.model = prm.model, twin
        try:
            loss = outcome_loss(prm.response_rewards(batch["prompts"], batch["responses"]),
                                torch.tensor(batch["labels"]))
        finally:
            prm.model = original
        loss.backward()
        expected = {n: p.detach() - LR * p.grad for n, p in twin.named_parameters() if p.grad is not None}
        stats = real_update(batch, reduce_gradients)
        got = {n: p.detach() for n, p in prm.model.named_parameters()}
        seen.append((batch, stats, max(float((got[n] - w).abs().max()) for n, w in expected.items()),
                     max(float((got[n] - twin.get_parameter(n).detach()).abs().max()) for n in expected)))
        return stats

    prm.update = checked_update
    trainer.train()
    assert len(seen) == 2  # one update per training rollout
    for batch, stats, err, moved in seen:
        assert len(batch["responses"]) == 4
        assert batch["labels"] == [float(is_correct(r, answers[q])) for q, r in zip(batch["prompts"],
                                                                                   batch["responses"])]
        assert err < 1e-6 and moved > 1e-4
    assert seen[0][1]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # pi_phi = pi_ref: every reward is 0
    hist = trainer.state.log_history
    logged = [h["online_reward/loss"] for h in hist if "online_reward/loss" in h]
    assert logged == pytest.approx([s["loss"] for _, s, _, _ in seen], abs=1e-6)
    first = next(h for h in hist if "prm/step_score_mean" in h)
    assert first["prm/step_score_mean"] == 0.0  # after_scoring: the first rollout met the untrained PRM
    # raw log-ratio scores say "correct" from 0 on (not from 0.5, a probability's threshold): every response
    # scored 0, so PRM and verifier agree exactly where the verifier says correct
    labels = seen[0][0]["labels"]
    assert first["prm/verifier_agreement"] == pytest.approx(sum(labels) / len(labels))
    assert seen[0][1]["accuracy"] == pytest.approx(sum(labels) / len(labels))  # the same rule in the update


def test_before_scoring_scores_the_first_rollout_with_the_updated_prm(tmp_path, tiny_dirs):
    trainer = _trainer(tmp_path, tiny_dirs["policy"], "before_scoring", steps=1)
    trainer.train()
    first = next(h for h in trainer.state.log_history if "prm/step_score_mean" in h)
    assert first["online_reward/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(first["prm/step_score_mean"]) > 1e-6


def test_recipes_that_cannot_learn_online_are_refused(tiny_dirs):
    bad = _recipe(tiny_dirs["policy"], "after_scoring")
    bad["reward"] = {"name": "arithmetic"}
    with pytest.raises(RecipeError, match="reward 'arithmetic' cannot learn online .* rewards that can: implicit-prm"):
        recipe_from_dict(bad)
    with pytest.raises(RecipeError, match="unknown value 'always'"):
        recipe_from_dict(_recipe(tiny_dirs["policy"], "always"))


@pytest.mark.slow
def test_checkpoints_hold_the_prm_and_a_resumed_run_ends_on_the_same_prm_and_policy(tmp_path, tiny_dirs):
    def run(name, **training):
        recipe = recipe_from_dict(_recipe(tiny_dirs["policy"], "after_scoring", steps=3, save_strategy="steps",
                                          save_steps=1, save_total_limit=3, **training))
        return train(recipe, run_dir=tmp_path / name)

    whole = run("whole")
    ckpt = whole / "checkpoints" / "checkpoint-1"
    marker = json.loads((ckpt / COMPLETE_MARKER).read_text())
    assert f"{ONLINE_REWARD_DIR}/{ONLINE_STATE_FILE}" in marker["files"]  # covered by the completion marker
    assert torch.load(ckpt / ONLINE_REWARD_DIR / ONLINE_STATE_FILE, weights_only=True)["updates"] == 1
    start = load_file(str(tiny_dirs["policy"] + "/model.safetensors"))
    final_prm = load_file(str(whole / "policy" / ONLINE_REWARD_DIR / "model.safetensors"))
    assert max(float((final_prm[k] - start[k]).abs().max()) for k in start) > 1e-4
    assert not (whole / "policy" / ONLINE_REWARD_DIR / ONLINE_STATE_FILE).exists()  # no optimizer in policy/

    resumed = run("resumed", resume_from_checkpoint=str(ckpt))
    for part in ("model.safetensors", f"{ONLINE_REWARD_DIR}/model.safetensors"):
        a, b = load_file(str(whole / "policy" / part)), load_file(str(resumed / "policy" / part))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5, part
    losses = [{h["step"]: h["online_reward/loss"] for h in json.loads((r / "metrics.json").read_text())
               if "online_reward/loss" in h} for r in (whole, resumed)]
    assert sorted(losses[0]) == [1, 2, 3]
    assert [losses[1][s] for s in (2, 3)] == pytest.approx([losses[0][s] for s in (2, 3)], abs=1e-5)
