"""The memory plan of `rlkit check`: parameter counts by hand from config fields, then bytes per GPU for each
ZeRO stage and precision, AdamW vs OnDARE, LoRA, PPO's critic and reference, a PRM reward, vLLM's share, and
the --gpu-memory warning."""

from __future__ import annotations

import pytest

from rlkit import testing
from rlkit.cli import main
from rlkit.config import recipe_from_dict
from rlkit.memory import PROMPT_TOKENS, PlanError, format_plan, parse_params, parse_size, plan_memory
from rlkit.model_shapes import KNOWN_CONFIGS, model_shape

GB, GIB = 10**9, 2**30


def hand_count(c: dict, head: str = "lm") -> int:
    """Qwen2 parameters from config fields: embeddings, per layer q/k/v (with bias) + o + 3 MLP matrices + 2 norms,
    the final norm, then the head: ``lm`` (tied: none, else V x h), ``critic`` (h + 1), ``prm`` (2h + 2)."""
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    body = v * h + c["num_hidden_layers"] * layer + h
    return body + {"lm": 0 if c["tie_word_embeddings"] else v * h, "critic": h + 1, "prm": 2 * h + 2}[head]


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=400, tie_word_embeddings=True)
P = hand_count(TINY)                       # 64 * 400 + 2 * 37120 + 64 = 99904
L = 400 * 64                               # the largest module: the (tied) embedding
assert P == 99904


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tok = testing.tiny_tokenizer()
    assert len(tok) == TINY["vocab_size"]
    root = tmp_path_factory.mktemp("models")
    testing.tiny_causal_lm(tok).config.save_pretrained(root / "policy")         # config.json only, no weights
    testing.tiny_token_classifier(tok).config.save_pretrained(root / "prm")
    testing.tiny_sequence_classifier(tok).config.save_pretrained(root / "orm")
    return root


def plan(folders, gpu_memory=None, **recipe):
    data = {"model": str(folders / "policy"), "reward": {"name": "arithmetic"}, **recipe}
    return plan_memory(recipe_from_dict(data, check=False), gpu_memory, f"{gpu_memory}B")


def rows(p):
    return {c.name: c for c in p.components}


def test_parameter_counts_match_the_hand_count_of_config_fields(folders):
    s = model_shape(str(folders / "policy"))
    assert (s.params, s.trainable, s.largest_layer, s.hidden, s.layers, s.vocab) == (P, P, L, 64, 2, 400)
    assert model_shape(str(folders / "policy"), "critic").params == hand_count(TINY, "critic") == P + 65
    assert model_shape(str(folders / "prm"), "token-classifier").params == P + 2 * 64 + 2
    for name in ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-Math-1.5B-Instruct", "Qwen/Qwen2.5-7B"):
        assert model_shape(name).params == hand_count(KNOWN_CONFIGS[name][1])
    assert hand_count(KNOWN_CONFIGS["Qwen/Qwen2.5-0.5B"][1]) == 494_032_768  # the published 0.49B
    prm = model_shape("Qwen/Qwen2.5-Math-PRM-7B", "token-classifier")
    assert prm.kind == "prm-mlp2"  # backbone + Linear(h, h) + Linear(h, 2), both with bias
    assert prm.params == hand_count(KNOWN_CONFIGS["Qwen/Qwen2.5-Math-PRM-7B"][1], "prm") + 3584 * 3584 + 3584 \
        == 7_083_474_946
    assert model_shape("nobody/unknown-7b").params is None
    assert model_shape("nobody/unknown-7b", params=7 * 10**9).trainable == 7 * 10**9
    assert model_shape("nobody/unknown-7b", lora=object(), params=7 * 10**9).trainable is None  # adapters unknown


def test_zero3_bf16_adamw_is_deepspeeds_estimate_split_into_weights_and_states(folders):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    p = plan(folders, distribution="zero3", num_processes=8, training={"bf16": True})
    pol = rows(p)["policy"]
    assert pol.weights == 2 * P // 8 + 4 * L == 127_376           # 24976 + 102400
    assert pol.total == 4 * L + 18 * P // 8 == 327_184
    assert pol.total == estimate_zero3_model_states_mem_needs(P, L, 8, cpu_offload=False, cpu_offload_params=False)[1]
    assert "reference (KL)" not in rows(p) and "no reference model: beta = 0" in p.notes


def test_zero2_bf16_and_fp32_and_no_deepspeed(folders):
    pol = rows(plan(folders, distribution="zero2", num_processes=4, training={"bf16": True}))["policy"]
    assert (pol.weights, pol.states) == (2 * P, 18 * P // 4) == (199_808, 449_568)
    pol = rows(plan(folders, distribution="zero2", num_processes=4))["policy"]     # bf16 false: fp32 weights
    assert (pol.weights, pol.states) == (4 * P, 16 * P // 4)
    pol = rows(plan(folders, distribution="zero3", num_processes=4))["policy"]
    assert (pol.weights, pol.states) == (4 * P // 4 + 8 * L, 16 * P // 4)
    p = plan(folders, distribution="none", num_processes=8, training={"bf16": True})  # TRL loads fp32; autocast
    assert p.gpus == 1 and (rows(p)["policy"].weights, rows(p)["policy"].states) == (4 * P, 12 * P)
    pol = rows(plan(folders, training={"model_init_kwargs": {"dtype": "bfloat16"}}))["policy"]
    assert (pol.weights, pol.states) == (2 * P, 6 * P)            # torch AdamW keeps bf16 moments for bf16 weights


def test_ondare_and_onties_add_one_parameter_sized_tau(folders):
    opt = {"name": "ondare", "args": {"p": 0.1, "alpha": 1e-7}}
    assert rows(plan(folders, optimizer=opt))["ondare tau"].states == 4 * P
    r = rows(plan(folders, optimizer={**opt, "name": "onties"}, distribution="zero3", num_processes=8,
                  training={"bf16": True}))
    assert r["onties tau"].states == 4 * P // 8 and r["policy"].total == 4 * L + 18 * P // 8


def test_lora_trains_only_the_adapters_and_has_no_reference(folders):
    lora = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
    adapters = 2 * (4 * (64 + 64) + 4 * (64 + 32))                  # per layer: q 64->64, v 64->32
    assert adapters == 1792
    p = plan(folders, peft=lora, algorithm={"name": "ppo"})           # PPO: kl_coef 0.05, yet no reference
    pol = rows(p)["policy"]
    assert pol.params == P + adapters
    assert (pol.weights, pol.states) == (4 * adapters + 4 * P, 12 * adapters)  # fp32 adapters (PEFT) + fp32 base
    assert "reference (KL)" not in rows(p) and any("adapter-disabled" in n for n in p.notes)
    pol = rows(plan(folders, peft=lora, distribution="zero3", num_processes=2, training={"bf16": True}))["policy"]
    assert pol.weights == 2 * adapters // 2 + 4 * L + 2 * P // 2 and pol.states == 18 * adapters // 2 - adapters


def test_ppo_counts_critic_and_reference(folders):
    c = P + 65
    r = rows(plan(folders, algorithm={"name": "ppo"}, distribution="zero3", num_processes=8, training={"bf16": True}))
    assert r["critic"].params == c and r["critic"].total == 18 * c // 8     # no second gathered layer
    assert r["reference (KL)"].weights == 2 * P // 8                        # kl_coef 0.05 > 0, sharded
    r = rows(plan(folders, algorithm={"name": "ppo"}, training={"kl_coef": 0.0}))
    assert "reference (KL)" not in r and (r["critic"].weights, r["critic"].states) == (4 * c, 12 * c)


def test_prm_reward_is_replicated_in_its_dtype(folders):
    prm = P + 130
    reward = {"name": "qwen-prm", "args": {"model": str(folders / "prm"), "dtype": "bfloat16"}}
    r = rows(plan(folders, reward=reward, distribution="zero3", num_processes=8))
    assert r["reward qwen-prm"].weights == 2 * prm                           # not sharded by ZeRO
    reward = {"name": "composite", "args": {"components": [{"name": "orm", "args": {"model": str(folders / "orm"),
                                                                                     "dtype": "float32"}}]}}
    assert rows(plan(folders, reward=reward))["reward orm"].weights == 4 * (P + 64)   # 1-label score, no bias
    reward = {"name": "implicit-prm", "args": {"model": str(folders / "policy")}}
    r = rows(plan(folders, reward=reward))
    assert r["reward implicit-prm"].weights == r["reward implicit-prm ref"].weights == 2 * P   # "auto": bf16


def test_an_online_implicit_prm_is_trained_in_its_own_zero_engine(folders):
    reward = {"name": "implicit-prm", "args": {"model": str(folders / "policy"), "dtype": "float32"}}
    online = {"name": "grpo", "reward_update": "after_scoring"}
    r = rows(plan(folders, reward=reward, algorithm=online, distribution="zero2", num_processes=4,
                  training={"bf16": True}))
    assert (r["reward implicit-prm"].weights, r["reward implicit-prm"].states) == (2 * P, 18 * P // 4)
    assert (r["reward implicit-prm ref"].weights, r["reward implicit-prm ref"].states) == (2 * P, 0)  # frozen, bf16
    r = rows(plan(folders, reward=reward, algorithm=online, distribution="zero3", num_processes=4))
    assert (r["reward implicit-prm"].weights, r["reward implicit-prm"].states) == (4 * P // 4, 16 * P // 4)
    r = rows(plan(folders, reward=reward, algorithm=online))                 # no DeepSpeed: plain torch AdamW
    assert (r["reward implicit-prm"].weights, r["reward implicit-prm"].states) == (4 * P, 12 * P)
    r = rows(plan(folders, reward=reward, distribution="zero2", num_processes=4))   # fixed: a frozen replica
    assert (r["reward implicit-prm"].weights, r["reward implicit-prm"].states) == (4 * P, 0)


def test_activations_and_vllm_share(folders):
    t = {"per_device_train_batch_size": 2, "max_completion_length": 32, "gradient_checkpointing": True, "bf16": True}
    s = 32 + PROMPT_TOKENS
    p = plan(folders, training=t, generation={"backend": "vllm", "vllm_gpu_memory_utilization": 0.25},
             gpu_memory=80 * GB)
    r = rows(p)
    assert r["activations (rough)"].weights == 2 * s * 64 * 2 * (2 + 17) + 2 * s * 400 * 4
    assert r["vLLM colocate"].weights == 20 * GB and p.total == sum(c.total for c in p.components)
    t["gradient_checkpointing"] = False
    assert rows(plan(folders, training=t))["activations (rough)"].weights == 17 * 2 * s * 64 * 2 * 2 + 2 * s * 400 * 4
    no_size = plan(folders, generation={"backend": "vllm"})
    assert not no_size.complete and "give --gpu-memory" in rows(no_size)["vLLM colocate"].how
    assert ">= " in format_plan(no_size)


def test_sizes_and_counts_parse():
    assert [parse_size(s) for s in ("80GB", "80GiB", "141 GB", "0.5gib", "512MiB")] == \
        [80 * GB, 80 * GIB, 141 * GB, GIB // 2, 512 * 2**20]
    assert parse_params(["Qwen/Qwen2.5-7B=7.6B", "a/b=494e6", "c/d=12M"]) == \
        {"Qwen/Qwen2.5-7B": 7_600_000_000, "a/b": 494_000_000, "c/d": 12_000_000}
    for bad in ("80", "GB", "-1GB", "80 parsecs"):
        with pytest.raises(PlanError, match="--gpu-memory: expected a size"):
            parse_size(bad)
    with pytest.raises(PlanError, match="--params: expected MODEL=COUNT"):
        parse_params(["Qwen/Qwen2.5-7B"])


def test_check_prints_the_plan_and_warns_in_one_line(folders, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {folders / 'policy'}\nreward: {{name: arithmetic}}\n")
    assert main(["check", str(recipe), "--gpu-memory", "1MiB"]) == 0
    out, err = capsys.readouterr()
    assert "memory per GPU (1 GPU, no DeepSpeed, fp32 weights;" in out and "policy" in out
    total = 16 * P + rows(plan(folders))["activations (rough)"].weights       # fp32 weights 4P + grads/AdamW 12P
    line = (f"rlkit: warning: estimated {total / 2**20:.1f} MiB per GPU exceeds --gpu-memory 1MiB (1.0 MiB); "
            "see the plan above")
    assert err.strip().splitlines() == [line]
    assert main(["check", str(recipe), "--gpu-memory", "80GB"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["check", str(recipe), "--gpu-memory", "80"]) == 2
    assert capsys.readouterr().err == ("rlkit: error: --gpu-memory: expected a size such as 80GB, 80GiB or 141GB, "
                                       "got '80'\n")


def test_shipped_8gpu_recipe_plan_fits_80gb():
    from rlkit.config import load_recipe

    p = plan_memory(load_recipe("ppo_qwen_math_prm_8gpu"), 80 * GB, "80GB")
    r = rows(p)
    assert r["reward qwen-prm"].weights == 2 * 7_083_474_946 and r["vLLM colocate"].weights == 20 * GB
    assert p.complete and p.warning() is None and 30 * GIB < p.total < 80 * GB


def test_params_override_for_a_hub_model_that_is_not_local():
    r = recipe_from_dict({"model": "nobody/private-1k", "reward": {"name": "arithmetic"}}, check=False)
    unknown = plan_memory(r)
    assert rows(unknown)["policy"].total is None and "pass --params" in rows(unknown)["policy"].how
    p = plan_memory(r, params=parse_params(["nobody/private-1k=1K"]))
    assert (rows(p)["policy"].weights, rows(p)["policy"].states) == (4000, 12000)   # fp32 + grads + AdamW
    assert not p.complete and rows(p)["activations (rough)"].total is None           # no config: no sizes
