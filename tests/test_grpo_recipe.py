"""`rlkit train` end to end on a tiny policy: in-process, and under DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU
processes (accelerate launch with a DeepSpeed config generated from the recipe)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from rlkit.testing import rlkit_train

REPO = Path(__file__).resolve().parents[1]
TINY = ["training.max_steps=2", "training.max_completion_length=8", "training.num_generations=2",
        "training.per_device_train_batch_size=2", "data.num_train=8", "data.num_eval=4",
        "training.learning_rate=1e-3"]


def run_recipe(model_dir: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return rlkit_train("grpo_prm_quickstart", out, f"model={model_dir}", *TINY, *extra, cwd=REPO)


def _losses(run_dir: Path) -> list[float]:
    hist = json.loads((run_dir / "metrics.json").read_text())
    return [h["loss"] for h in hist if "loss" in h]


def _only_run(out: Path) -> Path:
    runs = list(out.iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_quickstart_recipe_in_process_writes_run_folder(tiny_dirs, tmp_path):
    # with a search: block, the trained policy is also evaluated by PRM-guided search (RUN/search/)
    search = ("search={methods: [beam, bon], budgets: [2], beam_width: 2, num_problems: 2, max_steps: 2, "
              "max_step_tokens: 6, max_tokens: 12, seeds: [3], backend: hf}")
    res = run_recipe(tiny_dirs["policy"], tmp_path / "runs", search)
    assert res.returncode == 0, res.stderr[-3000:]
    run = _only_run(tmp_path / "runs")
    found = json.loads((run / "search" / "results.json").read_text())
    assert found["n_problems"] == 2 and found["config"]["policy"] == str(run / "policy")
    assert found["config"]["seeds"] == [3] and found["config"]["reward"] == "arithmetic"
    assert sorted((r["method"], r["budget"]) for r in found["rows"]) == [("beam", 2), ("bon", 2)]
    bon = next(r for r in found["rows"] if r["method"] == "bon")
    assert bon["samples_per_problem"] == 2 and 0 < bon["tokens_per_problem"] <= 2 * 12
    assert (run / "search" / "index.html").is_file()
    for f in ("recipe.yaml", "metrics.json", "policy/config.json", "policy/model.safetensors",
              "report/index.md", "report/training.png", "report/samples.html"):
        assert (run / f).is_file(), f
    assert list((run / "tensorboard").iterdir())
    losses = _losses(run)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert "held-out accuracy before training" in (run / "report" / "index.md").read_text()


def test_a_failed_search_leaves_the_trained_policy_and_resume_runs_only_the_search(tiny_dirs, tmp_path):
    import os
    import sys

    run = tmp_path / "run"
    sets = [f"model={tiny_dirs['policy']}", *TINY, "data.num_eval=0",
            "search={methods: [bon], budgets: [2], num_problems: 2, max_tokens: 8, backend: hf}"]
    args = ["train", "grpo_prm_quickstart", "--run-dir", str(run)] + [x for s in sets for x in ("--set", s)]
    failing = ("import sys, rlkit.launch as launch\n"
               "def boom(recipe, run_dir): raise ValueError('the search broke')\n"
               "launch.search_trained_policy = boom\n"
               "from rlkit.cli import main\n"
               f"sys.exit(main({args!r}))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-c", failing], capture_output=True, text=True, timeout=600, cwd=REPO,
                         env=env)
    assert res.returncode == 1, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("rlkit: error: search: the search broke") and f"--resume {run}" in last, last
    assert (run / "policy" / "model.safetensors").is_file() and (run / "FAILED.txt").is_file()
    assert not (run / "search").exists()
    res = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", "--resume", str(run)], capture_output=True,
                         text=True, timeout=600, cwd=REPO, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "search" / "results.json").read_text())["rows"][0]["method"] == "bon"
    assert not (run / "FAILED.txt").exists()


@pytest.mark.slow
def test_zero2_and_zero3_match(tiny_dirs, tmp_path):
    # the reward is an implicit PRM that learns before it scores each rollout, in its own ZeRO engine (PPO's
    # ZeRO test covers after_scoring and the resume)
    online = [f"reward={{name: implicit-prm, args: {{model: {tiny_dirs['policy']}, beta: 0.5, lr: 0.05, "
              "optimizer: sgd}}", "algorithm.reward_update=before_scoring"]
    results, prm_losses = {}, {}
    for stage in ("zero2", "zero3"):
        out = tmp_path / stage
        # with held-out evaluation on: it runs on rank 0 alone and must not join ZeRO-3's collectives
        res = run_recipe(tiny_dirs["policy"], out, f"distribution={stage}", "data.num_eval=2", *online)
        assert res.returncode == 0, res.stderr[-3000:]
        run = _only_run(out)
        assert json.loads((run / "deepspeed.json").read_text())["zero_optimization"]["stage"] == int(stage[-1])
        assert (run / "policy" / "model.safetensors").is_file()
        assert (run / "policy" / "online_reward" / "model.safetensors").is_file()
        results[stage] = _losses(run)
        hist = json.loads((run / "metrics.json").read_text())
        prm_losses[stage] = [h["online_reward/loss"] for h in hist if "online_reward/loss" in h]
    assert len(results["zero2"]) == 2 and len(prm_losses["zero2"]) == 2
    assert prm_losses["zero2"][0] == pytest.approx(math.log(2), abs=1e-6)  # pi_phi = pi_ref before the first step
    assert prm_losses["zero2"][1] != pytest.approx(math.log(2), abs=1e-4)   # ... and it learned
    assert all(math.isfinite(x) for x in results["zero2"] + results["zero3"])
    assert results["zero2"] == pytest.approx(results["zero3"], abs=1e-6)
    assert prm_losses["zero2"] == pytest.approx(prm_losses["zero3"], abs=1e-5)


@pytest.mark.slow
def test_ondare_survives_deepspeed_zero2(tiny_dirs, tmp_path):
    """DeepSpeed silently replaces a custom optimizer unless the trainer builds it in create_optimizer."""
    out = tmp_path / "runs"
    res = run_recipe(tiny_dirs["policy"], out, "distribution=zero2", "data.num_eval=0",
                     "optimizer={name: ondare, args: {p: 0.5, alpha: 0.0}}")
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((_only_run(out) / "run_info.json").read_text())
    assert info == {**info, "optimizer": "OnDAREAdamW", "deepspeed": True, "world_size": 2, "global_step": 2}


@pytest.mark.slow
def test_vllm_colocate_generation_on_cpu(tmp_path):
    pytest.importorskip("vllm")
    from rlkit import testing

    tok = testing.tiny_tokenizer()
    # vLLM's CPU attention wants a common head size (64 here)
    model = testing.tiny_causal_lm(tok, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                                   intermediate_size=256)
    path = testing.save_tiny(model, tok, tmp_path / "policy")
    out = tmp_path / "runs"
    res = run_recipe(path, out, "generation.backend=vllm", "data.num_eval=0")
    assert res.returncode == 0, res.stderr[-3000:]
    run = _only_run(out)
    info = json.loads((run / "run_info.json").read_text())
    assert info["use_vllm"] is True and info["global_step"] == 2
    hist = json.loads((run / "metrics.json").read_text())
    # vLLM samples in bf16, training is fp32: the logprob gap is small but present, which proves vLLM sampled
    gaps = [h["sampling/sampling_logp_difference/mean"] for h in hist if "sampling/sampling_logp_difference/mean" in h]
    assert gaps and all(0 < g < 0.05 for g in gaps)
