"""``algorithm: sft`` on TRL's SFTTrainer: the targets are worked solutions, the loss is on the completion only,
training lowers it, ``policy/`` loads as the next stage's model, the report has held-out accuracy before and
after, and ZeRO-2 and ZeRO-3 on 2 CPU processes give the same losses."""

from __future__ import annotations

import json

import pytest

from rlkit.config import load_recipe, recipe_from_dict
from rlkit.data import load_prompts, worked_solution
from rlkit.launch import train
from rlkit.testing import train_ok
from rlkit.trainers.sft_runner import build_sft_trainer
from rlkit.trainers.sft_trainer import sft_dataset


def _recipe(policy: str, **training) -> dict:
    return {"name": "sft_test", "model": policy, "algorithm": {"name": "sft"},
            "data": {"train": "builtin:arithmetic", "num_train": 32, "num_eval": 4},
            "reward": {"name": "arithmetic", "args": {"verify_final": True}},
            "training": {"max_steps": 8, "per_device_train_batch_size": 8, "learning_rate": 3e-3,
                         "max_length": 256, "report_to": [], "logging_steps": 1, "lr_scheduler_type": "constant",
                         **training}}


def test_sft_rows_are_worked_solutions_with_the_prompt_untouched():
    prompts = load_prompts("builtin:arithmetic", n=3)
    rows = sft_dataset(prompts)
    for p, r in zip(prompts, rows):
        assert r["prompt"] == p["prompt"]
        assert r["completion"] == [{"role": "assistant", "content": worked_solution(p["answer"])}]
        assert r["completion"][0]["content"].endswith(f"The answer is {p['answer'].split('####')[-1].strip()}.")
    assert worked_solution("Half of 48 is 48/2=<<48/2=24>>24.\n#### 24") == "Half of 48 is 48/2=24.\n\nThe answer is 24."


def test_loss_is_on_the_completion_tokens_only(tmp_path, tiny_dirs):
    trainer = build_sft_trainer(recipe_from_dict(_recipe(tiny_dirs["policy"])), tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    tok = trainer.processing_class
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        kept = ids[labels != -100].tolist()
        text = tok.decode(kept, skip_special_tokens=True)
        assert "The answer is" in text and "Solve the problem" not in text  # the system prompt is not trained on
        full = tok.decode(ids, skip_special_tokens=True)
        assert full.index(text.strip()[:20]) > full.index("Solve the problem")


@pytest.mark.slow
def test_sft_run_lowers_the_loss_and_writes_policy_and_report(tmp_path, tiny_dirs):
    run = train(recipe_from_dict(_recipe(tiny_dirs["policy"])), str(tmp_path / "runs"))
    hist = json.loads((run / "metrics.json").read_text())
    losses = [h["loss"] for h in hist if "loss" in h]
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < 0.8 * losses[0], losses
    ev = json.loads((run / "report" / "eval.json").read_text())
    assert ev["before"]["n"] == ev["after"]["n"] == 4
    assert (run / "policy" / "config.json").is_file() and "held-out accuracy after training" in \
        (run / "report" / "index.md").read_text()
    # the next stage starts from it
    nxt = load_recipe("grpo_prm_quickstart", [f"model={run / 'policy'}"])
    assert nxt.model == str(run / "policy")
    assert json.loads((run / "run_info.json").read_text())["global_step"] == 8


@pytest.mark.slow
def test_sft_under_zero2_and_zero3_on_two_processes_gives_the_same_losses(tmp_path, tiny_dirs):
    losses = {}
    for dist in ("zero2", "zero3"):
        recipe = tmp_path / f"{dist}.json"
        recipe.write_text(json.dumps(_recipe(tiny_dirs["policy"], max_steps=2, per_device_train_batch_size=4)
                                     | {"distribution": dist, "num_processes": 2}))
        yaml_path = tmp_path / f"{dist}.yaml"
        yaml_path.write_text(recipe.read_text())  # JSON is YAML
        run = train_ok(str(yaml_path), tmp_path / dist, OMP_NUM_THREADS="1")
        info = json.loads((run / "run_info.json").read_text())
        assert info["world_size"] == 2 and info["deepspeed"] is True
        losses[dist] = [h["loss"] for h in json.loads((run / "metrics.json").read_text()) if "loss" in h]
        assert (run / "policy" / "config.json").is_file()
    assert len(losses["zero2"]) == 2 and losses["zero2"] == pytest.approx(losses["zero3"], abs=1e-4), losses
