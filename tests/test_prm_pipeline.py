"""The one-recipe PRM loop (algorithm prm_pipeline): sample -> MC + judge labels -> consensus -> PRM -> evaluation.

A scripted completer writes responses with known errors (a wrong step says "bad", a right one "good") and rolls
out MC completions that reach the answer exactly when the prefix has no wrong step; a scripted judge agrees
with the truth except on errors at step 1, which it places at step 0. So every count of the run is known in
advance, and a tiny PRM can learn the task ("bad" marks a wrong step).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from rlkit.config import RecipeError, load_recipe
from rlkit.data import arithmetic_problems
from rlkit.testing import rlkit_train
from rlkit.trainers.prm_pipeline import as_processbench, bon_groups, run_prm_pipeline, split_problems

REPO = Path(__file__).resolve().parents[1]
N_PROBLEMS, SAMPLES = 12, 4


def _answer(ref: str) -> str:
    return ref.split("####")[-1].strip()


def _response(problem: dict, j: int) -> str:
    """Sample j: even -> right; 1 -> wrong at step 0; 3 -> wrong at step 1 (wrong answer either way)."""
    lines = [ln for ln in problem["answer"].split("\n") if not ln.startswith("####")]
    steps = [f"good {ln}" for ln in lines] + [f"The answer is {_answer(problem['answer'])}."]
    if j % 2:
        k = 0 if j == 1 else 1
        steps[k] = steps[k].replace("good", "bad")
        steps[-1] = "The answer is 0." if k < len(steps) - 1 else "bad The answer is 0."
    return "\n".join(steps)


class ScriptedCompleter:
    def __init__(self, problems):
        self.by_q = {p["question"]: p for p in problems}
        self.calls = 0

    def prompt(self, q: str) -> str:
        return f"Q: {q}\nA:\n"

    def __call__(self, prefixes, n):
        self.calls += 1
        out = []
        for pre in prefixes:
            q = re.match(r"Q: (.*)\nA:\n", pre, re.S).group(1)
            p = self.by_q[q]
            if pre.endswith("A:\n"):  # sampling
                out.append([_response(p, j) for j in range(n)])
            else:  # MC rollout from a step prefix
                ans = "0" if "bad" in pre[pre.index("A:\n"):] else _answer(p["answer"])
                out.append([f"The answer is {ans}."] * n)
        return out


def scripted_judge(problems, steps, refs):
    out = []
    for st in steps:
        truth = next((i for i, s in enumerate(st) if "bad" in s), -1)
        out.append(0 if truth == 1 else truth)
    return out


def _expected():
    problems = arithmetic_problems(N_PROBLEMS, seed=0)
    train_idx, held_idx = split_problems(N_PROBLEMS, 0.25, 42)
    kept_train = 0
    for i in train_idx:
        kept_train += sum(1 for j in range(SAMPLES) if j != 3)  # errors at step 1 are judged at step 0: dropped
    steps = sum(len(_response(p, j).split("\n")) for p in problems for j in range(SAMPLES))
    return problems, train_idx, held_idx, kept_train, steps


def _overrides(policy: str, epochs: int = 12) -> list[str]:
    return [f"model={policy}", f"data.num_train={N_PROBLEMS}", f"training.samples_per_problem={SAMPLES}",
            "training.mc_rollouts=2", "training.min_kept=4", f"training.num_train_epochs={epochs}",
            "training.learning_rate=3e-3", "training.per_device_train_batch_size=8", "training.report_to=[]"]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_dirs):
    problems, *_ = _expected()
    recipe = load_recipe(REPO / "rlkit" / "recipes" / "prm_pipeline_embedded.yaml", _overrides(tiny_dirs["policy"]))
    run_dir = tmp_path_factory.mktemp("pipeline")
    summary = run_prm_pipeline(recipe, run_dir, completer=ScriptedCompleter(problems), judge=scripted_judge)
    return run_dir, summary


def test_every_stage_count_is_the_hand_computed_one(pipeline_run):
    run_dir, s = pipeline_run
    _, train_idx, held_idx, kept_train, steps = _expected()
    n = N_PROBLEMS * SAMPLES
    assert s["responses"] == {"problems": N_PROBLEMS, "sampled": n, "kept": n, "no_steps": 0, "steps": steps,
                              "train_problems": len(train_idx), "heldout_problems": len(held_idx)}
    assert s["mc"] == {"total": n, "skipped": 0, "labelled": n, "with_error": n // 2}
    assert s["judge"]["labelled"] == n and s["judge"]["unparsable"] == 0 and s["judge"]["with_error"] == n // 2
    # kept: right responses and errors at step 0 (3 of 4 samples); dropped: errors at step 1
    assert s["consensus"] == {"kept": 3 * N_PROBLEMS, "total": n}
    assert s["label_source"] == "consensus"
    assert s["consensus_kept_train"] == kept_train == s["prm_train_records"]
    assert s["prm_heldout_records"] == 3 * len(held_idx)
    kept = [json.loads(x) for x in (run_dir / "data" / "consensus.jsonl").read_text().splitlines()]
    assert all(r["earliest_error"] in (-1, 0) for r in kept)
    assert "judge_earlier" in (run_dir / "report" / "consensus.md").read_text()


def test_trained_prm_beats_its_initialisation_on_heldout_problems(pipeline_run):
    run_dir, s = pipeline_run
    acc = s["heldout_step_accuracy"]
    print(json.dumps({k: s["evaluation"][k]["earliest_error"] for k in s["evaluation"]}), acc)
    assert acc["trained"] >= 0.9 and acc["trained"] > acc["init"], acc
    ee = {k: v["earliest_error"] for k, v in s["evaluation"].items()}
    assert ee["trained"]["f1"] > ee["init"]["f1"], ee
    assert ee["trained"]["n"] == s["prm_heldout_records"]
    bon = s["evaluation"]["trained"]["best_of_n"]
    assert bon["n_problems"] == len(_expected()[2]) and bon["N"] == SAMPLES
    assert bon["pass@n"] == 1.0 and bon["bon"]["min"] == 1.0  # a right response exists; min picks it
    for f in ("index.md", "trained/earliest_error/report.md", "trained/best_of_n/report.md",
              "init/best_of_n/bon.png"):
        assert (run_dir / "report" / f).is_file(), f
    assert not (run_dir / "prm" / "init").exists()  # the untrained baseline is evaluated in memory, not saved
    from reward.registry import build_reward

    prm = build_reward("qwen-prm", model=s["model_dir"], splitter={"mode": "newline"})
    held = [json.loads(x) for x in (run_dir / "data" / "prm_heldout.jsonl").read_text().splitlines()]
    right = next(r for r in held if r["earliest_error"] == -1)
    wrong = next(r for r in held if r["earliest_error"] == 0 and r["problem"] == right["problem"])
    a, b = prm.score([right["problem"]] * 2, ["\n".join(right["steps"]), "\n".join(wrong["steps"])], None)
    assert len(a.scores) == len(right["steps"]) and b.scores[0] < 0.5 < a.scores[0], (a.scores, b.scores)


@pytest.mark.slow
def test_prm_stage_trains_on_two_processes_under_zero3(pipeline_run, tmp_path, tiny_dirs):
    from reward.registry import build_reward

    problems, *_ = _expected()
    recipe = load_recipe(REPO / "rlkit" / "recipes" / "prm_pipeline_embedded.yaml",
                         _overrides(tiny_dirs["policy"], epochs=2) + ["distribution=zero3"])
    s = run_prm_pipeline(recipe, tmp_path, completer=ScriptedCompleter(problems), judge=scripted_judge)
    _, ref = pipeline_run
    for key in ("responses", "mc", "judge", "consensus", "prm_train_records", "prm_heldout_records"):
        assert s[key] == ref[key], key  # sampling and labelling ran once, in this process, as without ZeRO
    assert s["prm"]["world_size"] == 2 and s["prm"]["deepspeed"] and s["prm"]["global_step"] == 4  # 27 / 16 x 2
    sub = yaml.safe_load((tmp_path / "prm" / "recipe.yaml").read_text())
    assert sub["algorithm"]["name"] == "prm" and sub["training"]["max_length"] == 512
    assert json.loads((tmp_path / "prm" / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 3
    # the saved PRM is whole (not ZeRO-3 placeholders) and the held-out evaluation used it
    prm = build_reward("qwen-prm", model=s["model_dir"], splitter={"mode": "newline"})
    out = prm.score(["What is 2 + 3?"], ["good 2 + 3 = 5\nThe answer is 5."])[0]
    assert len(out.scores) == 2 and all(0.0 < v < 1.0 for v in out.scores)
    assert s["evaluation"]["trained"]["earliest_error"]["n"] == s["prm_heldout_records"]


def test_pipeline_helpers():
    assert split_problems(8, 0.25, 0)[1] == sorted(split_problems(8, 0.25, 0)[1]) and \
        len(split_problems(8, 0.25, 0)[1]) == 2
    assert split_problems(2, 0.9, 0)[0] and split_problems(2, 0.9, 0)[1]
    recs = [{"id": "p0-s0", "problem": "q", "steps": ["a", "b"], "earliest_error": 1},
            {"id": "p0-s1", "problem": "q", "steps": ["a"], "earliest_error": None}]
    assert as_processbench(recs) == [{"id": "p0-s0", "problem": "q", "steps": ["a", "b"], "label": 1}]
    groups = bon_groups([{"id": "p3-s0", "problem": "q", "reference": "1", "response": "x"},
                         {"id": "p3-s1", "problem": "q", "reference": "1", "response": "y"}])
    assert groups == [{"problem": "q", "reference": "1", "responses": ["x", "y"]}]


@pytest.mark.parametrize("override, needle", [
    ("training.label_mode=fuzzy", "training.label_mode: unknown value 'fuzzy'"),
    ("training.heldout_fraction=1.5", "training.heldout_fraction: must be in (0, 1)"),
    ("training.prm_max_length=0", "training.prm_max_length: must be >= 1, got 0"),
    ("training.mc_rollout=3", "unknown key 'training.mc_rollout'"),
])
def test_bad_pipeline_settings_fail_before_anything_loads(override, needle, tmp_path):
    with pytest.raises(RecipeError, match=re.escape(needle)):
        load_recipe("prm_pipeline_embedded", [override])
    if override != "training.label_mode=fuzzy":  # the command line path once is enough
        return
    r = rlkit_train("prm_pipeline_embedded", tmp_path / "runs", override, cwd=REPO)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_stage_with_nothing_left_stops_with_one_line(tmp_path, tiny_dirs):
    from rlkit.trainers.prm_pipeline_config import PipelineError

    class Silent(ScriptedCompleter):
        def __call__(self, prefixes, n):
            return [["  \n "] * n for _ in prefixes]

    recipe = load_recipe("prm_pipeline_embedded", [f"model={tiny_dirs['policy']}", "data.num_train=2"])
    with pytest.raises(PipelineError, match=r"^no sampled response has a step \(8 sampled\)$"):
        run_prm_pipeline(recipe, tmp_path, completer=Silent(arithmetic_problems(2, seed=0)), judge=scripted_judge)
    assert not (tmp_path / "data" / "responses.jsonl").exists()
    assert issubclass(PipelineError, RuntimeError)  # rlkit.cli prints RuntimeErrors as one 'rlkit: error:' line
