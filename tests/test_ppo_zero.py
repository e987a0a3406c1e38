"""PRMPPOTrainer under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes, through `rlkit train`.

Policy and critic live in one DeepSpeed engine (the critic is the policy's ``rlkit_critic`` submodule). Checked:
the runs finish, ZeRO-2 and ZeRO-3 give the same losses, the saved policy is a full plain HF folder (no
placeholder shapes, no critic keys) with the critic beside it, the checkpoint is a DeepSpeed one, evaluation on
rank 0 alone does not hang under ZeRO-3, and resuming a ZeRO-3 checkpoint reproduces the next steps' losses.
The runs' reward is an implicit PRM learning online (``algorithm.reward_update``) through a DeepSpeed engine of
its own: it trains, its optimizer state is sharded over the two ranks (half each), it is saved with the
checkpoints and the policy, agrees between ZeRO-2 and ZeRO-3, and resumes with the run.
DeepSpeed compiles its shm_comm_op extension on first use (~40 s, cached in TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlkit.testing import train_ok

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "rlkit" / "recipes" / "ppo_prm_quickstart.yaml"
COMMON = ["training.max_completion_length=10", "data.num_train=16", "training.learning_rate=1e-3",
          "training.critic_learning_rate=1e-3", "training.per_device_train_batch_size=4",
          "training.steps_per_generation=1", "training.num_iterations=2", "training.kl_coef=0.05",
          "training.save_strategy=steps", "training.save_steps=2"]


def _train(tmp_path, tiny_dirs, name, *sets, timeout=240):
    run = train_ok(RECIPE, tmp_path / name, f"model={tiny_dirs['policy']}", *COMMON, *sets, timeout=timeout,
                   cwd=REPO, OMP_NUM_THREADS="1")
    hist = json.loads((run / "metrics.json").read_text())
    return run, hist


def _by_step(hist, key="loss"):
    return {h["step"]: h[key] for h in hist if key in h}


def _online_prm(tiny_dirs) -> list[str]:
    """An implicit PRM that learns from every rollout's verifier labels, in its own ZeRO engine."""
    return [f"reward={{name: implicit-prm, args: {{model: {tiny_dirs['policy']}, beta: 0.5, lr: 0.05, "
            f"optimizer: sgd}}}}", "algorithm.reward_update=after_scoring"]


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory, tiny_dirs):
    root = tmp_path_factory.mktemp("ppo_zero")
    return {stage: _train(root, tiny_dirs, f"zero{stage}", f"distribution=zero{stage}", "training.max_steps=4",
                          f"data.num_eval={2 if stage == 3 else 0}", *_online_prm(tiny_dirs))
            for stage in (2, 3)}


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_run_trains_and_saves_policy_and_critic(zero_runs, tiny_dirs, stage):
    from safetensors.torch import load_file

    run, hist = zero_runs[stage]
    losses = _by_step(hist)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(x) for x in losses.values())
    assert all(math.isfinite(x) for x in _by_step(hist, "value_loss").values())
    policy = load_file(str(run / "policy" / "model.safetensors"))
    start = load_file(str(Path(tiny_dirs["policy"]) / "model.safetensors"))
    if "lm_head.weight" in policy and "lm_head.weight" not in start:  # tied to the embedding (ZeRO-2 saves both)
        assert torch.equal(policy.pop("lm_head.weight"), policy["model.embed_tokens.weight"])
    assert set(policy) == set(start)                                # no critic keys, nothing missing
    assert all(policy[k].shape == start[k].shape for k in start)    # full tensors, not ZeRO-3 placeholders
    assert max(float((policy[k] - start[k]).abs().max()) for k in start) > 1e-4  # the policy trained
    critic = load_file(str(run / "policy" / "critic" / "model.safetensors"))
    assert critic["score.weight"].shape == (1, 64) and "model.embed_tokens.weight" in critic
    ckpt = run / "checkpoints" / "checkpoint-2"
    assert list(ckpt.glob("global_step*/*optim_states.pt")), "not a DeepSpeed checkpoint"
    assert (ckpt / "critic" / "model.safetensors").is_file()
    shards = sorted((ckpt / "online_reward" / "engine").glob("zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2, shards  # the implicit PRM's optimizer state: one shard per rank
    n_prm = sum(t.numel() for t in start.values())
    for shard in shards:
        state = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        flat = state["single_partition_of_fp32_groups" if stage == 2 else "fp32_flat_groups"]
        assert sum(t.numel() for t in flat) == pytest.approx(n_prm / 2, abs=64)  # half of pi_phi on each rank
    prm = load_file(str(run / "policy" / "online_reward" / "model.safetensors"))
    assert max(float((prm[k] - start[k]).abs().max()) for k in start) > 1e-4  # the implicit PRM learned
    assert sorted(_by_step(hist, "online_reward/loss")) == [1, 3]  # one update per rollout (2 PPO epochs each)
    if stage == 3:
        assert (run / "report").is_dir()  # rank-0 evaluation before and after training did not hang


def test_zero2_and_zero3_agree(zero_runs):
    l2, l3 = _by_step(zero_runs[2][1]), _by_step(zero_runs[3][1])
    assert l2 == pytest.approx(l3, abs=1e-5)
    v2, v3 = _by_step(zero_runs[2][1], "value_loss"), _by_step(zero_runs[3][1], "value_loss")
    assert v2 == pytest.approx(v3, abs=1e-5)
    p2, p3 = (_by_step(zero_runs[s][1], "online_reward/loss") for s in (2, 3))
    assert p2 == pytest.approx(p3, abs=1e-5)


def test_zero3_resume_gives_the_same_next_step_losses(zero_runs, tmp_path, tiny_dirs):
    run, hist = zero_runs[3]
    ckpt = run / "checkpoints" / "checkpoint-2"
    _, resumed = _train(tmp_path, tiny_dirs, "zero3_resume", "distribution=zero3", "training.max_steps=4",
                        "data.num_eval=0", f"training.resume_from_checkpoint={ckpt}", *_online_prm(tiny_dirs))
    want, got = _by_step(hist), _by_step(resumed)
    assert [got[s] for s in (3, 4)] == pytest.approx([want[s] for s in (3, 4)], abs=1e-5)
    wv, gv = _by_step(hist, "value_loss"), _by_step(resumed, "value_loss")
    assert [gv[s] for s in (3, 4)] == pytest.approx([wv[s] for s in (3, 4)], abs=1e-5)
    wp, gp = _by_step(hist, "online_reward/loss"), _by_step(resumed, "online_reward/loss")
    assert gp[3] == pytest.approx(wp[3], abs=1e-5)  # the rollout after the checkpoint, scored by the restored PRM


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_merging_optimizer_acts_on_the_policy_only(tmp_path, tiny_dirs, stage):
    # OnDARE with p = 0.5 keeps each policy update entry with prob 0.5: after 2 steps ~75% of entries moved;
    # the critic (plain AdamW inside the same DeepSpeed optimizer) moves every entry
    from safetensors.torch import load_file

    run, hist = _train(tmp_path, tiny_dirs, f"ondare{stage}", f"distribution=zero{stage}", "training.max_steps=2",
                       "data.num_eval=0", "optimizer={name: ondare, args: {p: 0.5, alpha: 0.0}}",
                       "training.save_strategy=no")
    start = load_file(str(Path(tiny_dirs["policy"]) / "model.safetensors"))
    policy = load_file(str(run / "policy" / "model.safetensors"))
    critic = load_file(str(run / "policy" / "critic" / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    moved_policy = (policy[name] != start[name]).float().mean().item()
    moved_critic = (critic[name] != start[name]).float().mean().item()
    assert 0.65 < moved_policy < 0.85, moved_policy
    assert moved_critic > 0.99, moved_critic
