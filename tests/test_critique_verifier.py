"""Two-stage critique verifier: critique texts from labels / a file / a label-aware judge, and one recipe that
runs stage 1 (TRL SFT) then stage 2 (PRM or ORM) on tiny models, stage 2 starting from the stage-1 weights."""

from __future__ import annotations

import json
import random

import pytest
import torch

from reward.models.judge import LLMJudge
from reward.registry import build_reward
from rlkit.trainers.critique import (
    backbone_state,
    build_feedback,
    critique_request,
    judge_feedback_prompt,
    load_backbone,
    max_abs_diff,
    parse_judge_reasons,
    step_verdicts,
)


def labelled(n, seed):
    """Records like `rlkit label` writes: steps ending 'good'/'bad', labels up to the first bad one."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        bad = rng.random() < 0.5
        s = a + b + (1 if bad else 0)
        steps = [f"{a} + {b} = {s} {'bad' if bad else 'good'}", f"The answer is \\boxed{{{s}}}."]
        out.append({"id": f"r{seed}-{i}", "problem": f"What is {a} + {b}?", "steps": steps,
                    "labels": [0] if bad else [1, 1], "reference": str(a + b)})
    return out


def test_critique_text_and_verdicts():
    assert step_verdicts([1, 0.25, 0], 4) == [True, True, False]
    assert step_verdicts([1, 0, 1], 3) == [True, False]
    rec = {"problem": "What is 2 + 2?", "steps": ["2 + 2 = 5", "So \\boxed{5}."], "labels": [0], "reference": "4"}
    (ex,), st = build_feedback([rec], "template")
    assert ex["completion"][0]["content"] == "Step 1: incorrect.\nFinal answer: incorrect."
    assert ex["prompt"][0]["content"] == critique_request(rec["problem"], rec["steps"])
    assert "Step 2: So \\boxed{5}." in ex["prompt"][0]["content"]
    assert st == {"records": 1, "examples": 1, "skipped": 0, "judge_fallback_steps": 0, "judge_calls": 0}
    ok = dict(rec, steps=["2 + 2 = 4", "So \\boxed{4}."], labels=[1, 1])
    assert build_feedback([ok], "template")[0][0]["completion"][0]["content"] == \
        "Step 1: correct.\nStep 2: correct.\nFinal answer: correct."
    # the final verdict comes from the record / the verifier, not only from the step labels
    assert build_feedback([dict(ok, reference="5")], "template")[0][0]["completion"][0]["content"].endswith(
        "Final answer: incorrect.")
    # file: a whole critique, or per-step reasons; records without either are skipped
    recs = [dict(rec, critique="Step 1: incorrect. 2 + 2 is 4.\nFinal answer: incorrect."),
            dict(ok, feedback=["2 + 2 is 4.", "It states the sum."]), dict(ok)]
    exs, st = build_feedback(recs, "file")
    assert st["examples"] == 2 and st["skipped"] == 1
    assert exs[1]["completion"][0]["content"] == \
        "Step 1: correct. 2 + 2 is 4.\nStep 2: correct. It states the sum.\nFinal answer: correct."
    # unlabelled records (unparsable judge verdicts) are skipped
    assert build_feedback([dict(rec, labels=[])], "template")[1]["skipped"] == 1


def test_judge_feedback_is_label_aware_and_checked():
    recs = [{"id": "a", "problem": "What is 2 + 2?", "steps": ["2 + 2 = 4", "2 * 4 = 9", "So 9."], "labels": [1, 0],
             "reference": "4"},
            {"id": "b", "problem": "What is 1 + 1?", "steps": ["1 + 1 = 2"], "labels": [1], "reference": "2"}]
    seen = []

    def critic(prompts):
        seen.extend(prompts)
        return ["Step 1: correct. Adding 2 and 2 gives 4.\nStep 2: incorrect. 2 * 4 is 8, not 9.",
                "Step 1: incorrect. Nonsense."]  # contradicts the label: falls back to the bare verdict

    exs, st = build_feedback(recs, "judge", critic)
    assert "Known verdicts: Step 1 is correct; Step 2 is incorrect." in seen[0]
    assert "Step 3" not in seen[0]  # steps after the first error are not shown to the critic
    assert exs[0]["completion"][0]["content"] == ("Step 1: correct. Adding 2 and 2 gives 4.\n"
                                                  "Step 2: incorrect. 2 * 4 is 8, not 9.\nFinal answer: incorrect.")
    assert exs[1]["completion"][0]["content"] == "Step 1: correct.\nFinal answer: correct."
    assert st["judge_fallback_steps"] == 1 and st["judge_calls"] == 2
    # any line order, 'wrong'/'right' synonyms; a missing step counts as a fallback
    assert parse_judge_reasons("step 2: Correct - fine\nStep 1) wrong: no", [False, True]) == (["no", "- fine"], 0)
    assert parse_judge_reasons("Step 1: incorrect. bad", [False, True]) == (["bad", None], 1)
    # the llm-judge reward works as the critic (its chat template wraps the request)
    judge = LLMJudge(generate_fn=lambda ps: ["Step 1: correct. 1 + 1 = 2 holds."] * len(ps))
    exs, st = build_feedback(recs[1:], "judge", judge)
    assert exs[0]["completion"][0]["content"].startswith("Step 1: correct. 1 + 1 = 2 holds.")
    assert judge_feedback_prompt("p", ["x"], [True]).count("Step 1") == 2


def test_max_abs_diff():
    a = {"w": torch.zeros(3, 2), "e": torch.zeros(4, 2)}
    b = {"w": torch.ones(3, 2) * 0.5, "e": torch.cat([torch.zeros(4, 2), torch.ones(2, 2)])}  # grown embedding
    assert max_abs_diff(a, b) == 0.5 and max_abs_diff(a, a) == 0.0 and max_abs_diff(a, {}) == float("inf")


def _recipe(tmp_path, tiny_dirs, stage2, extra=None):
    from rlkit.config import recipe_from_dict

    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in labelled(24, seed=1)))
    training = {"feedback": "template", "sft_max_steps": 4, "sft_learning_rate": 5e-3,
                "sft_per_device_train_batch_size": 4, "sft_max_length": 256, "stage2": stage2,
                "max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 3e-3, "logging_steps": 1,
                "report_to": [], "stage2_max_length": 256}
    training.update(extra or {})
    return recipe_from_dict({"name": f"critique_{stage2}", "model": tiny_dirs["policy"],
                             "algorithm": {"name": "critique"}, "data": {"train": str(data), "num_eval": 0},
                             "training": training})


@pytest.mark.slow
def test_two_stage_recipe_prm_end_to_end(tmp_path, tiny_dirs):
    from rlkit.launch import train

    recipe = _recipe(tmp_path, tiny_dirs, "prm")
    run_dir = train(recipe, str(tmp_path / "runs"))  # the `rlkit train` path: recipe -> run_worker -> both stages
    summary = json.loads((run_dir / "critique_summary.json").read_text())
    assert summary["stage1"]["global_step"] == 4 and summary["stage1"]["feedback"]["examples"] == 24
    assert summary["stage2"]["global_step"] == 4 and summary["stage2_kind"] == "prm"
    # stage 2 starts exactly from the stage-1 weights, and stage 1 did move them away from the base model
    assert summary["stage2_init_max_diff_from_stage1"] == 0.0
    assert summary["stage1_max_change_from_base"] > 1e-4
    # independently: the stage-1 checkpoint differs from the base, the stage-2 PRM built from it equals it
    from rlkit.trainers.prm_trainer import prm_from_causal_lm

    s1 = load_backbone(str(run_dir / "stage1" / "final"))
    assert max_abs_diff(s1, load_backbone(tiny_dirs["policy"])) > 1e-4
    assert max_abs_diff(backbone_state(prm_from_causal_lm(str(run_dir / "stage1" / "final"))[0]), s1) == 0.0
    # stage-1 output is a critique-writing causal LM; stage 2 loads as the qwen-prm reward (classifier only)
    ex = json.loads((run_dir / "stage1" / "critiques.jsonl").read_text().splitlines()[0])
    assert ex["completion"][0]["content"].startswith("Step 1:")
    rm = build_reward("qwen-prm", model=summary["model_dir"])
    assert len(rm.score(["What is 1 + 1?"], ["1 + 1 = 2 good\n\nThe answer is \\boxed{2}."])[0].scores) == 2


@pytest.mark.slow
def test_two_stage_orm_starts_from_stage1(tmp_path, tiny_dirs):
    from test_orm_trainer import synthetic_groups

    from rlkit.trainers.critique import train_critique_verifier

    groups = tmp_path / "groups.jsonl"
    groups.write_text("".join(json.dumps(r) + "\n" for r in synthetic_groups(16, seed=5)))
    recipe = _recipe(tmp_path, tiny_dirs, "orm", {"stage2_data": str(groups), "feedback": "judge"})
    critic = lambda ps: ["Step 1: correct. The sum is right."] * len(ps)  # noqa: E731
    summary = train_critique_verifier(recipe, tmp_path / "run", judge=critic)
    assert summary["stage1"]["feedback"]["judge_calls"] == 24
    assert summary["stage2_init_max_diff_from_stage1"] == 0.0 and summary["stage1_max_change_from_base"] > 1e-4
    assert summary["stage2"]["train"]["problems"] == 16 and summary["stage2"]["global_step"] == 4
    rm = build_reward("orm", model=summary["model_dir"])
    assert "response_score" in rm.score(["q"], ["a"])[0].meta


def test_shipped_recipe_parses():
    from rlkit.config import load_recipe

    r = load_recipe("critique_verifier", check=False)
    assert r.algorithm.name == "critique" and r.training["stage2"] == "prm"
