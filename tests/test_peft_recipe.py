"""LoRA from a recipe: the top-level ``peft:`` block becomes the ``peft_config`` of the GRPO / PPO trainer.

Checked: the block's validation (one line naming the key, before anything loads; exit 2 and no run folder from
the CLI), a GRPO recipe that trains only adapter weights, saves ``policy/`` as an adapter folder that reloads to
the trained policy's log-probs and is what the report's after-training evaluation loads, and the same for PPO
through ``rlkit train`` under DeepSpeed ZeRO-3 on 2 CPU processes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from reward.base import StepRewardModel
from reward.registry import register
from reward.steps import StepSplitter
from rlkit.config import RecipeError, load_recipe
from rlkit.testing import rlkit_train, train_ok

REPO = Path(__file__).resolve().parents[1]
TINY = ["training.max_steps=2", "training.max_completion_length=8", "training.num_generations=2",
        "training.per_device_train_batch_size=4", "data.num_train=8", "data.num_eval=4",
        "training.learning_rate=1e-2"]
LORA = "peft={r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj]}"
SENTENCE = "12 + 30 = 42. The answer is 42."


@register("test-space-share")
class SpaceShare(StepRewardModel):
    """Test reward with spread inside every group: each step scores the share of its characters that are spaces."""

    def __init__(self):
        super().__init__(StepSplitter("regex", pattern=r"[.=]"))

    def score_steps(self, prompts, steps, references=None):
        return [[s.text.count(" ") / max(len(s.text), 1) for s in st] for st in steps]


def _logps(model, tok):
    ids = tok(SENTENCE, return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]


# ----------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("overrides, message", [
    (["peft.r=0"], "peft.r: the LoRA rank must be >= 1, got 0"),
    (["peft.rank=8"], "unknown key 'peft.rank' (allowed: r, lora_alpha, lora_dropout, target_modules)"),
    (["peft.r=eight"], "peft.r: expected an integer, got 'eight'"),
    (["peft.lora_alpha=0"], "peft.lora_alpha: must be > 0, got 0"),
    (["peft.lora_dropout=1.5"], "peft.lora_dropout: must be in [0, 1), got 1.5"),
    (["peft.target_modules=[]"], "peft.target_modules: expected 'all-linear', a regular expression or a non-empty"),
    (["peft.target_modules=[q_proj, 3]"], "peft.target_modules[1]: expected a string, got 3"),
    (["peft.target_modules=5"], "peft.target_modules: expected list or str, got 5"),
    (["peft=true"], "peft: expected a mapping, got True"),
    (["peft={}", "optimizer={name: onties, args: {alpha: 0}}"], "peft: optimizer onties cannot train a LoRA policy"),
    (["peft={}", "optimizer.name=ondare"], "peft: optimizer ondare cannot train a LoRA policy"),  # alpha 1e-7
    (["peft={}", "algorithm.name=prm"], "peft: LoRA is supported for algorithm.name grpo, ppo and sft only, not 'prm'"),
    (["training.use_peft=true"], "training.use_peft: LoRA is the recipe's top-level peft: block"),
    (["training.lora_r=8"], "training.lora_r: LoRA is the recipe's top-level peft: block"),
])
def test_bad_peft_blocks_raise_one_line(overrides, message):
    with pytest.raises(RecipeError) as e:
        load_recipe("grpo_prm_quickstart", overrides)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_peft_block_defaults_and_lora_config():
    assert load_recipe("grpo_prm_quickstart").peft is None  # absent: full fine-tuning
    r = load_recipe("ppo_prm_quickstart", ["peft={}", "optimizer={name: ondare, args: {alpha: 0}}"])
    assert (r.peft.r, r.peft.lora_alpha, r.peft.lora_dropout, r.peft.target_modules) == (16, 32.0, 0.0, "all-linear")
    r = load_recipe("grpo_prm_quickstart", ["peft.r=8", "peft.target_modules=[q_proj, v_proj]"])
    cfg = r.peft.to_lora_config()
    assert (cfg.r, cfg.lora_alpha, str(cfg.task_type)) == (8, 32.0, "CAUSAL_LM")
    assert cfg.target_modules == {"q_proj", "v_proj"}
    assert r.to_dict()["peft"] == {"r": 8, "lora_alpha": 32.0, "lora_dropout": 0.0,
                                   "target_modules": ["q_proj", "v_proj"]}


def test_missing_peft_package_is_a_recipe_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(RecipeError, match=r"^peft: the package peft is not installed"):
        load_recipe("grpo_prm_quickstart", ["peft={}"])


def test_cli_bad_peft_exit_2_and_no_run_folder(tmp_path):
    out = tmp_path / "runs"
    res = rlkit_train("ppo_prm_quickstart", out, "peft.r=0", timeout=300, cwd=REPO)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["rlkit: error: peft.r: the LoRA rank must be >= 1, got 0"]
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- GRPO in-process

def test_grpo_recipe_with_peft_trains_adapter_and_reports_on_it(tiny_dirs, tok, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rlkit import report
    from rlkit.distributed import write_run_files
    from rlkit.launch import new_run_dir
    from rlkit.trainers.common import train_and_report
    from rlkit.trainers.grpo_runner import build_grpo_trainer

    recipe = load_recipe("grpo_prm_quickstart", [f"model={tiny_dirs['policy']}", *TINY, LORA,
                                                 "reward={name: test-space-share}"])
    run = new_run_dir(recipe, str(tmp_path / "runs"))
    write_run_files(recipe, run)
    trainer = build_grpo_trainer(recipe, run)
    assert isinstance(trainer.model, PeftModel)
    lora_cfg = trainer.model.peft_config["default"]
    assert (lora_cfg.r, lora_cfg.lora_alpha, lora_cfg.target_modules) == (4, 8.0, {"q_proj", "v_proj"})
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(trainable) == 8 and all("lora_" in n for n in trainable)  # 2 layers x (q, v) x (A, B)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    train_and_report(trainer, recipe, run)

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_B" in n for n in changed)  # B starts at 0: the adapter now changes the output

    policy = run / "policy"
    assert (policy / "adapter_config.json").is_file() and not (policy / "model.safetensors").exists()
    saved_cfg = json.loads((policy / "adapter_config.json").read_text())
    assert saved_cfg["r"] == 4 and saved_cfg["lora_alpha"] == 8.0 and saved_cfg["task_type"] == "CAUSAL_LM"
    assert saved_cfg["base_model_name_or_path"] == str(tiny_dirs["policy"])
    keys = load_file(str(policy / "adapter_model.safetensors")).keys()
    assert len(keys) == 8 and all("lora_" in k for k in keys)

    trained = _logps(trainer.model, tok)
    base = _logps(AutoModelForCausalLM.from_pretrained(tiny_dirs["policy"], dtype=torch.float32), tok)
    reloaded = _logps(AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32), tok)  # as the report
    assert torch.allclose(reloaded, trained, atol=1e-5)
    assert (trained - base).abs().max().item() > 1e-4  # the adapter moved the policy

    # the report's after-training evaluation loads the adapter folder: the same greedy answers as the live model
    index = (run / "report" / "index.md").read_text()
    assert "held-out accuracy before training" in index and "after training" in index
    from rlkit.recipe_glue import load_datasets

    _, eval_ds = load_datasets(recipe)
    from_folder = report.evaluate_policy(str(policy), trainer.processing_class, eval_ds, trainer.step_reward,
                                         max_new_tokens=8)
    live = report.evaluate_policy(trainer.model, trainer.processing_class, eval_ds, trainer.step_reward,
                                  max_new_tokens=8)
    assert from_folder["n"] == 4
    assert [s["response"] for s in from_folder["samples"]] == [s["response"] for s in live["samples"]]
    assert json.loads((run / "run_info.json").read_text())["global_step"] == 2


# ----------------------------------------------------------------------------------------------- PPO via rlkit train

def _rlkit_train(recipe: str, out: Path, *sets: str, timeout: int = 420) -> Path:
    return train_ok(recipe, out, *sets, timeout=timeout, cwd=REPO, OMP_NUM_THREADS="1")


def _check_ppo_adapter_run(run: Path, tiny_dirs, tok) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    hist = json.loads((run / "metrics.json").read_text())
    losses = [h["loss"] for h in hist if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    kls = [h["ppo/kl"] for h in hist if "ppo/kl" in h]
    assert kls[0] == 0.0 and abs(kls[-1]) > 1e-7, kls  # policy == base until the adapter moved
    policy = run / "policy"
    assert (policy / "adapter_config.json").is_file() and not (policy / "model.safetensors").exists()
    keys = load_file(str(policy / "adapter_model.safetensors")).keys()
    assert len(keys) == 8 and all("lora_" in k and "rlkit_critic" not in k for k in keys)
    critic = load_file(str(policy / "critic" / "model.safetensors"))
    assert critic["score.weight"].shape == (1, 64) and not any("lora_" in k for k in critic)
    base_model = AutoModelForCausalLM.from_pretrained(tiny_dirs["policy"], dtype=torch.float32)
    base = _logps(base_model, tok)
    direct = _logps(AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32), tok)
    via_peft = _logps(PeftModel.from_pretrained(base_model, str(policy)), tok)
    assert torch.allclose(direct, via_peft, atol=1e-6)
    assert (direct - base).abs().max().item() > 1e-4
    assert json.loads((run / "run_info.json").read_text())["global_step"] == 2


PPO_TINY = [*TINY, "training.steps_per_generation=1", "training.num_iterations=1",
            "training.critic_learning_rate=1e-3", LORA]


@pytest.mark.slow
def test_ppo_recipe_with_peft_through_rlkit_train_under_zero3(tiny_dirs, tok, tmp_path):
    """One `rlkit train` run covers the recipe -> LoRA PPO path and DeepSpeed (ZeRO-3: the stage whose sharded
    parameters could leave placeholders in a saved adapter); the held-out evaluation on rank 0 loads the
    adapter folder after training."""
    run = _rlkit_train("ppo_prm_quickstart", tmp_path / "runs", f"model={tiny_dirs['policy']}", *PPO_TINY,
                       "distribution=zero3", "data.num_eval=2")
    assert json.loads((run / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 3
    assert json.loads((run / "run_info.json").read_text())["deepspeed"] is True
    _check_ppo_adapter_run(run, tiny_dirs, tok)
    index = (run / "report" / "index.md").read_text()
    assert "held-out accuracy before training" in index and "after training" in index
