"""Chained runs (``algorithm.name: chain``): stages resolve to validated recipes (model = the previous stage's
policy, ``{model}`` = the policy before the first stage, one seed), a chain runs SFT -> GRPO with OnDARE whose
base is the pre-SFT policy, its report lists every stage, and a chain stopped between or inside stages resumes
at the stage that did not finish."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from rlkit.cli import main as cli_main
from rlkit.config import RecipeError, load_recipe, recipe_from_dict, stage_recipes
from rlkit.launch import resume, train


def _stage_files(tmp_path: Path, policy: str) -> tuple[str, str]:
    """A tiny SFT recipe and a tiny GRPO recipe (one optimizer step each, 4 held-out problems)."""
    data = {"train": "builtin:arithmetic", "num_train": 8, "num_eval": 4}
    reward = {"name": "arithmetic", "args": {"verify_final": True, "splitter": {"mode": "double_newline"}}}
    sft = {"name": "s", "model": policy, "algorithm": {"name": "sft"}, "data": data, "reward": reward,
           "training": {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 256, "report_to": [],
                        "learning_rate": 1e-3, "save_steps": 1}}
    grpo = {"name": "g", "model": policy, "algorithm": {"name": "grpo"}, "data": data, "reward": reward,
            "training": {"max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 2,
                         "max_completion_length": 128, "report_to": [], "save_steps": 1}}
    paths = []
    for name, body in (("sft", sft), ("grpo", grpo)):
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(body))
        paths.append(str(p))
    return paths[0], paths[1]


def _chain(tmp_path: Path, policy: str, **grpo_set) -> dict:
    sft, grpo = _stage_files(tmp_path, policy)
    return {"name": "ch", "model": policy, "algorithm": {"name": "chain"}, "seed": 7, "stages": [
        {"name": "sft", "recipe": sft},
        {"name": "grpo", "recipe": grpo, "set": {"optimizer.name": "ondare", "optimizer.args":
                                                  {"base_model": "{model}", "p": 0.5, "alpha": 1e-3},
                                                  **grpo_set}}]}


def test_stages_start_from_the_previous_policy_with_the_chain_seed(tmp_path, tiny_dirs):
    chain = recipe_from_dict(_chain(tmp_path, tiny_dirs["policy"], **{"training.learning_rate": 3e-6}))
    sft, grpo = stage_recipes(chain, run_dir=tmp_path / "run")
    assert sft.model == tiny_dirs["policy"] and sft.algorithm.name == "sft" and sft.name == "ch-sft"
    assert grpo.model == str(tmp_path / "run" / "stages" / "sft" / "policy")
    assert grpo.optimizer.args["base_model"] == tiny_dirs["policy"]  # {model}: the policy before SFT
    assert grpo.training["learning_rate"] == 3e-6 and sft.seed == grpo.seed == 7


def test_the_shipped_quickstart_is_sft_then_grpo_with_ondare_on_the_pre_sft_policy(tmp_path):
    chain = load_recipe("quickstart")
    sft, grpo = stage_recipes(chain, run_dir=tmp_path)
    assert (sft.algorithm.name, grpo.algorithm.name, grpo.optimizer.name) == ("sft", "grpo", "ondare")
    assert grpo.optimizer.args["base_model"] == chain.model == sft.model
    assert sft.data.num_eval == grpo.data.num_eval >= 64 and sft.reward == grpo.reward


@pytest.mark.parametrize("change, message", [
    ({"stages": []}, "stages: a chained run needs at least one stage"),
    ({"stages": [{"name": "a", "recipe": "sft_embedded"}, {"name": "a", "recipe": "sft_embedded"}]},
     r"stages\[1\].name: stage name 'a' is used twice"),
    ({"stages": [{"name": "a", "recipe": "sft_embedded", "set": {"model": "{b.policy}"}}]},
     r"stages\[0\].set: unknown reference \{b.policy\}"),
    ({"stages": [{"name": "a", "recipe": "no_such_recipe"}]}, r"stages\[0\].recipe: recipe file not found"),
    ({"stages": [{"name": "a", "recipe": "sft_embedded", "set": {"training.max_step": 3}}]},
     r"stages\[0\] \(a\): unknown key 'training.max_step'"),
    ({"stages": [{"name": "a", "recipe": "quickstart"}]}, "a stage cannot itself be a chained run"),
])
def test_bad_stages_are_refused_with_one_line(change, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"algorithm": {"name": "chain"}, **change})


def test_stages_on_a_single_algorithm_recipe_are_refused():
    with pytest.raises(RecipeError, match="only a chained run"):
        recipe_from_dict({"algorithm": {"name": "sft"}, "stages": [{"name": "a", "recipe": "sft_embedded"}]})


@pytest.mark.slow
def test_chain_runs_both_stages_reports_them_and_resumes_at_the_unfinished_stage(tmp_path, tiny_dirs, capsys):
    run = train(recipe_from_dict(_chain(tmp_path, tiny_dirs["policy"])), run_dir=tmp_path / "run")
    sft_dir, grpo_dir = run / "stages" / "sft", run / "stages" / "grpo"
    info = json.loads((grpo_dir / "run_info.json").read_text())
    assert info["policy_optimizer"] == "OnDAREAdamW" and info["optimizer_steps"] == info["global_step"] == 2
    assert os.path.realpath(run / "policy") == str((grpo_dir / "policy").resolve())
    sft_eval = json.loads((sft_dir / "report" / "eval.json").read_text())
    grpo_eval = json.loads((grpo_dir / "report" / "eval.json").read_text())
    # the GRPO stage's "before" is the SFT stage's "after", not a second evaluation
    assert grpo_eval["before"]["samples"] == sft_eval["after"]["samples"]
    assert grpo_eval["before"]["label"] == "before training"
    stages = json.loads((run / "report" / "stages.json").read_text())
    assert [s["stage"] for s in stages] == ["sft", "grpo"] and [s["steps"] for s in stages] == [2, 2]
    assert stages[1]["accuracy_before"] == sft_eval["after"]["accuracy"] and stages[0]["n_after"] == 4
    index = (run / "report" / "index.md").read_text()
    assert "| [sft](../stages/sft/report/index.md) | sft | adamw | 2 |" in index and "| ondare | 2 |" in index

    # stopped inside the GRPO stage after its first checkpoint: resume trains that stage only, from step 1
    sft_mtime = (sft_dir / "policy" / "model.safetensors").stat().st_mtime
    (grpo_dir / "run_info.json").unlink()
    (grpo_dir / "FAILED.txt").write_text("killed\n")
    (run / "run_info.json").unlink()
    shutil.rmtree(grpo_dir / "checkpoints" / "checkpoint-2")
    capsys.readouterr()
    resume(run)
    out = capsys.readouterr().out
    assert "stage 1/2 sft (sft) finished already" in out and "resuming " + str(grpo_dir) in out
    assert "from checkpoint-1" in out
    assert (sft_dir / "policy" / "model.safetensors").stat().st_mtime == sft_mtime
    assert json.loads((grpo_dir / "run_info.json").read_text())["global_step"] == 2
    # stopped between the stages (the GRPO stage never started): it runs from the SFT policy
    shutil.rmtree(grpo_dir)
    (run / "run_info.json").unlink()
    resume(run)
    assert json.loads((grpo_dir / "run_info.json").read_text())["global_step"] == 2
    assert yaml.safe_load((grpo_dir / "recipe.yaml").read_text())["model"] == str(sft_dir / "policy")
    capsys.readouterr()
    resume(run)
    assert "finished already; nothing to resume" in capsys.readouterr().out


def test_check_lists_each_stage_with_where_it_starts_and_its_memory_plan(capsys):
    assert cli_main(["check", "quickstart"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "quickstart: ok (chain of 2 stages)"
    assert "stage sft: sft, reward arithmetic, optimizer adamw, distribution none, starts from " \
           "embedded:smollm2-135m-instruct" in out
    assert "stage grpo: grpo, reward arithmetic, credit process_grpo, optimizer ondare, distribution none, " \
           "starts from RUN/stages/sft/policy" in out
    assert "ondare tau" in out  # the GRPO stage's plan, on the model the SFT stage starts from
