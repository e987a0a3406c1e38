"""`rlkit search` end to end on a tiny random policy with the `arithmetic` reward, and its bad-input errors."""

from __future__ import annotations

import json

import pytest

from reward.base import StepRewardModel
from reward.registry import register
from rlkit.cli import main


@register("test-search-extra-score")
class ExtraScore(StepRewardModel):
    """Returns one score more than there are steps."""

    def score_steps(self, prompts, steps, references=None):
        return [[0.5] * (len(st) + 1) for st in steps]


def search(policy, out, *extra):
    return main(["search", "--policy", str(policy), "--reward", "arithmetic", "--num-problems", "2",
                 "--max-steps", "2", "--max-step-tokens", "6", "--max-tokens", "12", "--out", str(out),
                 "--backend", "hf", *[str(e) for e in extra]])


def test_search_cli_writes_the_report(tmp_path, tiny_dirs, capsys):
    out = tmp_path / "report"
    assert search(tiny_dirs["policy"], out, "--method", "beam,dvts,bon", "--budget", "2,4", "--beam-width", "2",
                  "--seeds", "0,1") == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n_problems"] == 2 and res["config"]["methods"] == ["beam", "dvts", "bon"]
    rows = {(r["method"], r["budget"]): r for r in res["rows"]}
    assert set(rows) == {(m, n) for m in ("beam", "dvts", "bon") for n in (2, 4)}
    for (method, n), r in rows.items():
        assert [p["seed"] for p in r["per_seed"]] == [0, 1]
        assert 0.0 <= r["accuracy"] <= r["pass"] <= 1.0 and r["seconds_per_problem"] > 0
        if method == "bon":  # N whole solutions of at most 12 tokens
            assert r["samples_per_problem"] == n and 0 < r["tokens_per_problem"] <= 12 * n
        else:  # N first steps, then at most N per round; at most 6 tokens a step
            assert n <= r["samples_per_problem"] <= 2 * n
            assert 0 < r["tokens_per_problem"] <= 6 * r["samples_per_problem"]
    assert (out / "accuracy.png").stat().st_size > 5000
    sols = [json.loads(x) for x in (out / "solutions.jsonl").read_text().splitlines()]
    assert len(sols) == 3 * 2 * 2 * 2  # methods x budgets x seeds x problems
    for (method, n), r in rows.items():
        mine = [x for x in sols if (x["method"], x["budget"]) == (method, n)]
        assert sum(x["tokens"] for x in mine) / 4 == pytest.approx(r["tokens_per_problem"])
        assert sum(x["correct"] for x in mine) / 4 == pytest.approx(r["accuracy"])
        if method == "bon":
            assert all(len(x["ends"]) == n for x in mine)
        else:  # every solution that ended (at most the samples drawn), or the beams kept at the step cap
            assert all(1 <= len(x["ends"]) <= x["samples"] for x in mine)
    page = (out / "index.html").read_text()
    assert "beam search, N = 4, seed 0" in page and "DVTS, N = 4" in page and "Best-of-N, N = 4" in page
    assert page.count("class='q'") == 3 * 2 and "<img src='accuracy.png'" in page
    assert "rlkit: report:" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--method", "beam", "--budget", "6"], "--budget: budget 6 is not divisible by beam width 4"),
    (["--method", "beam,mcts"], "--method: unknown search method 'mcts' (allowed: beam, dvts, bon)"),
    (["--budget", "4,x"], "--budget: expected comma-separated integers"),
    (["--reward-args", "{bad"], "--reward-args: not valid JSON"),
    (["--reward-args", '{"colour": 1}'], "unknown argument 'colour' for reward 'arithmetic'"),
    (["--data", "builtin:nope"], "--data: unknown builtin dataset 'builtin:nope'"),
    (["--num-problems", "0"], "--num-problems must be >= 1"),
    (["--max-steps", "0"], "--max-steps: max_steps must be an integer >= 1"),
    (["--reward-args", '{"splitter": {"mode": "regex", "pattern": "Step"}}'],
     "reward 'arithmetic' splits steps by a regex pattern; step-level search needs a literal step separator"),
])
def test_search_cli_bad_input_one_line_exit_2(tmp_path, tiny_dirs, capsys, extra, message):
    out = tmp_path / "report"
    assert search(tiny_dirs["policy"], out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlkit: error: ") and message in err[0], err
    assert list(tmp_path.iterdir()) == []  # no report folder, no temporary folder


def test_search_cli_reward_with_wrong_lengths_fails_in_one_line(tmp_path, tiny_dirs, capsys):
    out = tmp_path / "report"
    rc = main(["search", "--policy", tiny_dirs["policy"], "--reward", "test-search-extra-score", "--method",
               "beam", "--budget", "2", "--beam-width", "2", "--num-problems", "1", "--max-step-tokens", "4",
               "--backend", "hf", "--out", str(out)])
    # the policy loaded (transformers' progress bar) and generated before the first scoring failed
    err = [x for x in capsys.readouterr().err.strip().splitlines() if "error" in x]
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("rlkit: error: reward model 'test-search-extra-score' on response 0: ") and \
        "scores for" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, message", [
    (["search={budgets: [6]}"], "search: budget 6 is not divisible by beam width 4"),
    (["search={methods: [beam, mcts]}"], "search: unknown search method 'mcts' (allowed: beam, dvts, bon)"),
    (["search={max_steps: 0}"], "search: max_steps must be an integer >= 1, got 0"),
    (["search={num_problems: 0}"], "search.num_problems: must be >= 1, got 0"),
    (["search={backend: tgi}"], "search.backend: unknown value 'tgi' (allowed: auto, hf, vllm)"),
    (["search={seeds: []}"], "search.seeds: need at least one seed"),
    (["search={beams: 4}"], "unknown key 'search.beams'"),
    (["search={}", "algorithm.name=prm"], "search: runs after grpo, ppo, sft recipes only, not 'prm'"),
    (["search={}", "data.train=x.jsonl"], "search: needs held-out problems: set data.eval"),
    (["search={}", "reward.args={splitter: {mode: regex, pattern: 'Step'}}"],
     "search: beam and dvts stop generating at a literal step separator"),
])
def test_bad_search_blocks_raise_one_line(overrides, message):
    from rlkit.config import load_recipe
    from rlkit.recipe import RecipeError

    with pytest.raises(RecipeError) as e:
        load_recipe("grpo_prm_quickstart", overrides)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_backend_auto_is_hf_generate_where_vllm_cannot_run(tmp_path, tiny_dirs, monkeypatch):
    import rlkit.search_cmd as search_cmd

    monkeypatch.setattr(search_cmd, "vllm_problem", lambda *a: "vLLM is not installed")
    out = tmp_path / "report"
    assert main(["search", "--policy", tiny_dirs["policy"], "--reward", "arithmetic", "--method", "bon",
                 "--budget", "2", "--num-problems", "1", "--max-tokens", "8", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["backend"] == "hf"
