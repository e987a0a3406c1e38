"""Every algorithm ``rlkit check`` accepts runs, and runs with ``optimizer: ondare``.

Before one function built the optimizer block (``rlkit.trainers.common.optimizer_block``), prm and orm recipes
handed ``{"name", "args": {...}}`` to ``build_optimizer``, which refused the key ``args`` at train time although
``rlkit check`` had passed; and ``algorithm: sft`` passed ``rlkit check`` and then raised NotImplementedError
(it now exists and is one of the cases).
Each run here reads ``run_info.json`` for the optimizer the Trainer (or DeepSpeed) really stepped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_critique_verifier import labelled
from test_orm_trainer import synthetic_groups
from test_prm_pipeline import ScriptedCompleter, _overrides, scripted_judge
from test_prm_trainer import synthetic_records

from rlkit.algorithms import algorithm_names
from rlkit.config import RecipeError, load_recipe, recipe_from_dict
from rlkit.data import arithmetic_problems
from rlkit.launch import train
from rlkit.trainers.prm_pipeline import run_prm_pipeline

REPO = Path(__file__).resolve().parents[1]
N_PROBLEMS = 12


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _recipe(algo: str, tmp_path: Path, policy: str) -> dict:
    """The smallest recipe of each algorithm: one or two optimizer steps on tiny models."""
    rl = {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2, "max_completion_length": 8,
          "report_to": []}
    classifier = {"max_steps": 2, "per_device_train_batch_size": 4, "report_to": []}
    data = {
        "grpo": {"train": "builtin:arithmetic", "num_train": 4, "num_eval": 0},
        "ppo": {"train": "builtin:arithmetic", "num_train": 4, "num_eval": 0},
        "prm": {"train": _jsonl(tmp_path / "prm.jsonl", synthetic_records(8, seed=1))},
        "orm": {"train": _jsonl(tmp_path / "orm.jsonl", synthetic_groups(4, seed=1)), "num_eval": 0},
        "critique": {"train": _jsonl(tmp_path / "crit.jsonl", labelled(8, seed=1)), "num_eval": 0},
        "sft": {"train": "builtin:arithmetic", "num_train": 4, "num_eval": 0},
    }[algo]
    training = {
        "grpo": rl, "ppo": rl, "prm": classifier, "orm": {**classifier, "max_length": 64},
        "critique": {**classifier, "feedback": "template", "sft_max_steps": 1, "sft_per_device_train_batch_size": 4,
                     "sft_max_length": 256, "stage2": "prm", "stage2_max_length": 256},
        "sft": {**classifier, "max_length": 256},
    }[algo]
    return {"name": f"every_{algo}", "model": policy, "algorithm": {"name": algo}, "data": data,
            "training": training, "optimizer": {"name": "ondare", "args": {"p": 0.5, "alpha": 1e-3,
                                                                            "base_model": policy}}}


RUN_INFO = {"grpo": "run_info.json", "ppo": "run_info.json", "prm": "run_info.json", "orm": "run_info.json",
            "critique": "stage2/run_info.json", "prm_pipeline": "prm/run_info.json", "sft": "run_info.json"}
# chain (SFT -> GRPO with ondare on the pre-SFT policy) runs in tests/test_chain.py, which reads the same fields
COVERED_ELSEWHERE = {"chain"}


def test_every_accepted_algorithm_has_a_case_here():
    assert set(algorithm_names()) == set(RUN_INFO) | COVERED_ELSEWHERE, "a new algorithm needs its one-step ondare case in this file"


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(RUN_INFO))
def test_algorithm_runs_one_step_with_ondare(algo, tmp_path, tiny_dirs):
    policy = tiny_dirs["policy"]
    if algo == "prm_pipeline":  # sampling and judging scripted (its test's helpers); the PRM stage trains
        recipe = load_recipe("prm_pipeline_embedded",
                             _overrides(policy, epochs=1) + ["optimizer.name=ondare", "optimizer.args.p=0.5",
                                                             "optimizer.args.alpha=0.001",
                                                             f"optimizer.args.base_model={policy}"])
        run_dir = tmp_path / "run"
        run_prm_pipeline(recipe, run_dir, completer=ScriptedCompleter(arithmetic_problems(N_PROBLEMS, seed=0)),
                         judge=scripted_judge)
    else:
        run_dir = train(recipe_from_dict(_recipe(algo, tmp_path, policy)), str(tmp_path / "runs"))
    info = json.loads((run_dir / RUN_INFO[algo]).read_text())
    assert info["policy_optimizer"] == "OnDAREAdamW", info
    assert info["global_step"] >= 1 and info["optimizer_steps"] == info["global_step"], info


def test_an_unknown_algorithm_is_refused_by_check():
    with pytest.raises(RecipeError, match="algorithm.name: unknown value 'dpo'"):
        recipe_from_dict({"algorithm": {"name": "dpo"}})


def test_a_bad_optimizer_block_fails_at_check_not_at_train_time(tiny_dirs):
    with pytest.raises(RecipeError, match=r"optimizer: .*unknown key\(s\) \['q'\]"):
        recipe_from_dict({"model": tiny_dirs["policy"], "optimizer": {"name": "ondare", "args": {"q": 0.1}}})
