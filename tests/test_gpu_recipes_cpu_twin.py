"""The 8-GPU recipes, run as their CPU twin: same recipe file, tiny policy and tiny qwen-prm instead of the
Qwen checkpoints, 2 CPU processes instead of 8 GPUs, HF generate instead of vLLM. Everything else (ZeRO-3,
process_grpo / PPO credit, weighted outcome reward, the qwen-prm reward path) is exercised as written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlkit.config import load_recipe
from rlkit.testing import train_ok

REPO = Path(__file__).resolve().parents[1]
GPU_RECIPES = ["grpo_qwen_math_prm_8gpu", "ppo_qwen_math_prm_8gpu"]


def twin_overrides(policy: str, prm: str) -> list[str]:
    return [f"model={policy}", f"reward={{name: qwen-prm, args: {{model: {prm}}}}}", "data.train=builtin:arithmetic",
            "data.eval=null", "data.num_train=8", "data.num_eval=0", "data.system_prompt=null", "num_processes=2",
            "generation.backend=hf", "training.bf16=false", "training.gradient_checkpointing=false",
            "training.max_steps=1", "training.max_completion_length=8", "training.per_device_train_batch_size=2",
            "training.num_generations=2", "training.save_strategy=no"]


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipe_validates_as_written(name):
    r = load_recipe(name)
    assert r.distribution == "zero3" and r.num_processes == 8 and r.generation.backend == "vllm"
    assert r.reward.name == "qwen-prm" and r.reward.args["model"] == "Qwen/Qwen2.5-Math-PRM-7B"


@pytest.mark.slow
@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipe_cpu_twin_runs_under_zero3(name, tiny_dirs, tmp_path):
    sets = twin_overrides(tiny_dirs["policy"], tiny_dirs["prm"])
    if name.startswith("ppo"):
        sets += ["training.steps_per_generation=1", "training.num_iterations=1"]
    else:
        sets += ["training.gradient_accumulation_steps=1"]
    run = train_ok(name, tmp_path, *sets, cwd=REPO)
    hist = json.loads((run / "metrics.json").read_text())
    losses = [h["loss"] for h in hist if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    assert json.loads((run / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 3
