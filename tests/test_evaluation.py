"""ProcessBench metrics against the published formula, threshold rules, Best-of-N hand cases, reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reward.base import StepRewardModel, StepScores
from reward.evaluation.bon import best_of_n, majority_correct, min_on_last
from reward.evaluation.processbench import (
    DataError,
    choose_threshold,
    evaluate_processbench,
    item_steps,
    load_processbench,
    predict,
    processbench_metrics,
    summarize,
)


def official_f1(items, preds):
    """ProcessBench's published formula (percent): acc on erroneous items, acc on correct items, harmonic mean."""
    err = [it for it, p in zip(items, preds) if it["label"] != -1]
    perr = [p for it, p in zip(items, preds) if it["label"] != -1]
    pcor = [p for it, p in zip(items, preds) if it["label"] == -1]
    acc1 = np.mean([p == it["label"] for it, p in zip(err, perr)]) * 100
    acc2 = np.mean([p == -1 for p in pcor]) * 100
    return acc1, acc2, 2 * acc1 * acc2 / (acc1 + acc2)


def fixed_predictions(items):
    # deterministic mix: right on every 3rd item, "no error" on every 3rd+1, step 1 otherwise
    return [it["label"] if i % 3 == 0 else (-1 if i % 3 == 1 else 1) for i, it in enumerate(items)]


@pytest.mark.data
def test_processbench_matches_published_formula(shared_data):
    data = load_processbench(shared_data / "processbench")
    assert {k: len(v) for k, v in data.items()} == {"gsm8k": 400, "math": 1000, "olympiadbench": 1000,
                                                    "omnimath": 1000}
    per = {}
    for name, items in data.items():
        preds = fixed_predictions(items)
        m = processbench_metrics(items, preds)
        a, b, f = official_f1(items, preds)
        assert m["error_acc"] * 100 == pytest.approx(a) and m["correct_acc"] * 100 == pytest.approx(b)
        assert m["f1"] * 100 == pytest.approx(f)
        per[name] = m
    mean = summarize(per)
    assert mean["f1"] == pytest.approx(np.mean([m["f1"] for m in per.values()]))
    # hand check on gsm8k: 400 items, 193 all-correct, 207 with an error
    g = data["gsm8k"]
    assert g[0]["id"] == "gsm8k-0" and g[0]["label"] == 1 and len(g[0]["steps"]) == 4
    m = processbench_metrics(g, [-1] * len(g))
    assert (m["error_acc"], m["correct_acc"], m["f1"], m["n_error"], m["n_correct"]) == (0.0, 1.0, 0.0, 207, 193)
    m = processbench_metrics(g, [1] * len(g))  # 61 items have their first error at step 1
    assert m["error_acc"] == pytest.approx(61 / 207) and m["correct_acc"] == 0.0 and m["f1"] == 0.0
    m = processbench_metrics(g, [it["label"] for it in g])
    assert (m["error_acc"], m["correct_acc"], m["f1"]) == (1.0, 1.0, 1.0)
    # first four items by hand: labels 1, 1, 1, 2 (all erroneous)
    four = g[:4]
    assert [it["label"] for it in four] == [1, 1, 1, 2]
    assert processbench_metrics(four, [1, 0, None, 2])["error_acc"] == 0.5


def test_metrics_small_hand_case():
    items = [{"label": 2}, {"label": 0}, {"label": -1}, {"label": -1}, {"label": -1}]
    m = processbench_metrics(items, [2, 1, -1, -1, 0])
    assert m["error_acc"] == 0.5 and m["correct_acc"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 4/7
    assert processbench_metrics([{"label": -1}], [-1])["f1"] is None  # no erroneous items: no F1
    assert summarize({"a": {"error_acc": 1.0, "correct_acc": 0.5, "f1": 0.5, "n": 2},
                      "b": {"error_acc": 0.0, "correct_acc": 1.0, "f1": 0.0, "n": 3}})["f1"] == 0.25


def write_items(path: Path, items):
    path.write_text(json.dumps(items))
    return path


def make_items(prefix, n=6):
    out = []
    for i in range(n):
        k = 3 + i % 2
        out.append({"id": f"{prefix}-{i}", "problem": f"problem {i}", "steps": [f"step {j}" for j in range(k)],
                    "label": (i % 3) - 1 if i % 3 else -1})
    return out


class FakePRM(StepRewardModel):
    """Scores 0.3 at the labelled error step (looked up by problem), 0.9 elsewhere."""

    def __init__(self, items, low=0.3):
        super().__init__()
        self.labels = {it["problem"]: it["label"] for it in items}
        self.low = low

    def score_steps(self, prompts, steps, references=None):
        return [[self.low if i == self.labels[p] else 0.9 for i in range(len(st))] for p, st in zip(prompts, steps)]


class FakeCritic(StepRewardModel):
    probabilistic = False

    def score_steps(self, prompts, steps, references=None):
        out = []
        for p, st in zip(prompts, steps):
            if p.endswith("0"):
                out.append(StepScores(list(st), [0.0] * len(st), labels=[None] * len(st),
                                      meta={"unparsable": True}))
            else:
                out.append(StepScores(list(st), [1.0, 0.0] + [0.0] * (len(st) - 2), labels=[1, 0] + [None] * (len(st) - 2)))
        return out


def test_evaluate_prm_threshold_rules(tmp_path):
    test = make_items("t")
    cal = make_items("c")
    for it in cal:
        it["problem"] = "cal " + it["problem"]
    model = FakePRM(test + cal, low=0.3)
    data = {"test": test}
    r = evaluate_processbench(model, data, threshold=0.5)
    assert r["splits"]["test"]["f1"] == 1.0 and r["threshold"] == 0.5 and r["kind"] == "prm"
    r = evaluate_processbench(model, data, threshold=0.2)  # nothing below 0.2: always "no error"
    assert r["splits"]["test"]["error_acc"] == 0.0 and r["splits"]["test"]["correct_acc"] == 1.0
    r = evaluate_processbench(model, data, threshold_split="cal", threshold_data=cal, grid=[0.1, 0.2, 0.5, 0.95])
    assert r["threshold"] == 0.5 and r["threshold_split"] == "cal" and len(r["sweep"]) == 4
    assert r["splits"]["test"]["f1"] == 1.0
    with pytest.raises(ValueError, match="also a test split"):
        evaluate_processbench(model, {"test": test, "cal": cal}, threshold_split="cal", threshold_data=cal)
    t, sweep = choose_threshold(test, model.score_split([i["problem"] for i in test], [item_steps(i) for i in test]),
                                grid=[0.1, 0.2])
    assert t == 0.1 and sweep == [(0.1, 0.0), (0.2, 0.0)]  # ties: first threshold


def test_evaluate_critic_verdicts():
    items = [{"id": "a", "problem": "x0", "steps": ["s", "t"], "label": 1},
             {"id": "b", "problem": "x1", "steps": ["s", "t"], "label": 1},
             {"id": "c", "problem": "x2", "steps": ["s", "t", "u"], "label": -1}]
    r = evaluate_processbench(FakeCritic(), {"s": items}, threshold=0.5)
    assert r["kind"] == "critic" and r["threshold"] is None
    assert r["predictions"]["s"] == [None, 1, 1]
    assert r["splits"]["s"]["error_acc"] == 0.5 and r["splits"]["s"]["correct_acc"] == 0.0
    assert r["splits"]["s"]["n_unparsable"] == 1
    assert predict(StepScores(item_steps(items[0]), [1.0, 1.0], labels=[1, 1]), None) == -1


def test_load_processbench_files_and_errors(tmp_path):
    d = tmp_path / "pb"
    d.mkdir()
    write_items(d / "alpha.json", make_items("a"))
    (d / "beta.jsonl").write_text("".join(json.dumps(i) + "\n" for i in make_items("b", 3)))
    data = load_processbench(d)
    assert list(data) == ["alpha", "beta"] and len(data["beta"]) == 3
    assert list(load_processbench(d, splits=["beta"], limit=2)) == ["beta"]
    assert len(load_processbench(d / "alpha.json")["alpha"]) == 6
    with pytest.raises(DataError, match="no split 'gamma'"):
        load_processbench(d, splits=["gamma"])
    with pytest.raises(DataError, match="no such file"):
        load_processbench(tmp_path / "nope.json")
    bad = make_items("x", 2)
    del bad[1]["steps"]
    with pytest.raises(DataError, match="item 1: missing field 'steps'"):
        load_processbench(write_items(tmp_path / "bad.json", bad))
    bad = make_items("x", 2)
    bad[0]["label"] = 7
    with pytest.raises(DataError, match="'label' must be an int"):
        load_processbench(write_items(tmp_path / "bad.json", bad))


# ----------------------------------------------------------------------------------------------- Best-of-N
def cand(correct, answer, scores):
    return {"correct": correct, "answer": answer, "scores": scores}


def test_best_of_n_hand_built():
    p1 = [cand(False, "5", [0.9, 0.9, 0.1]),   # min 0.1, last 0.1, prod .081, mean .633
          cand(True, "7", [0.6, 0.6, 0.6]),    # min 0.6, last 0.6, prod .216, mean .6
          cand(False, "5", [0.95, 0.3, 0.99])]  # min 0.3, last .99, prod .282, mean .747
    p2 = [cand(True, "3", [0.8]), cand(False, "4", [0.2]), cand(False, "4", [0.5])]
    p3 = [cand(False, "1", [0.5, 0.4]), cand(False, "2", [0.5, 0.4])]  # no correct response
    r = best_of_n([p1, p2, p3])
    assert r["bon"] == {"min": pytest.approx(2 / 3), "last": pytest.approx(1 / 3),
                        "product": pytest.approx(1 / 3), "mean": pytest.approx(1 / 3)}
    assert r["pass@n"] == pytest.approx(2 / 3)
    assert r["maj@n"] == 0.0  # '5' wins p1, '4' wins p2, p3 has no right answer
    # min on the final step, over responses with >= 2 steps: p1 [yes, tie->first (no), no], p3 [yes, yes]
    assert r["min_on_last"] == pytest.approx(3 / 5) and r["n_min_on_last"] == 5
    assert r["N"] == [2, 3] and r["n_problems"] == 3
    assert best_of_n([p1], min_steps=1)["n_min_on_last"] == 3


def test_bon_ties_and_majority_equivalence():
    tie = [cand(False, "1", [0.5]), cand(True, "2", [0.5])]
    assert best_of_n([tie])["bon"]["min"] == 0.0  # first candidate wins ties
    # 0.5 and 1/2 are one answer under the verifier's equivalence
    assert majority_correct([cand(True, "0.5", []), cand(True, "\\frac{1}{2}", []), cand(False, "3", [])])
    assert not majority_correct([cand(False, None, []), cand(False, "", [])])
    assert min_on_last([0.3, 0.2]) and not min_on_last([0.2, 0.2]) and not min_on_last([])
    with pytest.raises(ValueError, match="aggregation"):
        best_of_n([tie], aggregations=["max"])


# ----------------------------------------------------------------------------------------------- CLI + reports
def cli(*argv):
    import argparse

    from rlkit import eval_cmd, label_cmd

    p = argparse.ArgumentParser(prog="rlkit")
    sub = p.add_subparsers(dest="command", required=True)
    label_cmd.add_parser(sub)
    eval_cmd.add_parser(sub)
    args = p.parse_args([str(a) for a in argv])
    return args.func(args)


def test_eval_processbench_cli_and_report(tmp_path, tiny_dirs, capsys):
    d = tmp_path / "pb"
    d.mkdir()
    write_items(d / "cal.json", make_items("c", 4))
    write_items(d / "test.json", make_items("t", 5))
    out = tmp_path / "report"
    rc = cli("eval", "processbench", "--data", d, "--threshold-split", "cal", "--reward", "qwen-prm",
             "--reward-arg", f"model={tiny_dirs['prm']}", "--out", out)
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["splits"]) == ["test"] and m["threshold_split"] == "cal" and len(m["sweep"]) == 19
    assert (out / "processbench.png").stat().st_size > 1000 and (out / "threshold_sweep.png").is_file()
    assert "| test | 5 |" in (out / "report.md").read_text()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 5
    # the same split as threshold split and test split is refused; so are bad inputs, all with exit code 2
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert cli("eval", "processbench", "--data", d, "--splits", "test,cal", "--threshold-split", "cal",
               "--reward", "qwen-prm", "--reward-arg", f"model={tiny_dirs['prm']}", "--out", bad) == 2
    assert cli("eval", "processbench", "--data", tmp_path / "nope", "--reward", "qwen-prm", "--out", bad) == 2
    assert cli("eval", "processbench", "--data", d, "--reward", "no-such-reward", "--out", bad) == 2
    assert cli("eval", "processbench", "--data", d, "--reward", "qwen-prm", "--reward-arg", "colour=red",
               "--out", bad) == 2
    broken = make_items("b", 2)
    broken[0]["label"] = "two"
    assert cli("eval", "processbench", "--data", write_items(tmp_path / "broken.json", broken), "--reward",
               "qwen-prm", "--reward-arg", f"model={tiny_dirs['prm']}", "--out", bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(e.startswith("rlkit eval: error: ") for e in err)
    assert "also in --splits" in err[0] and "no such file" in err[1] and "no-such-reward" in err[2]
    assert "colour" in err[3] and "'label' must be an int" in err[4]
    assert not bad.exists() and not any(p.name.startswith(".bad") for p in tmp_path.iterdir())


def test_eval_bon_cli(tmp_path, tiny_dirs):
    rows = [{"problem": "What is 2+2?", "reference": "4",
             "responses": ["2+2=4\n\nThe answer is \\boxed{4}.", "2+2=5\n\nThe answer is \\boxed{5}.",
                           {"text": "So \\boxed{4}.", "correct": True}]},
            {"problem": "What is 3+3?", "reference": "#### 6",
             "responses": ["3+3=7\n\n\\boxed{7}", "3+3=6\n\n\\boxed{6}", "\\boxed{7}"]}]
    data = tmp_path / "bon.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "bon-report"
    assert cli("eval", "bon", "--data", data, "--reward", "qwen-prm", "--reward-arg",
               f"model={tiny_dirs['prm']}", "--out", out) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["pass@n"] == 1.0 and m["maj@n"] == 0.5 and m["n_responses"] == 6 and m["N"] == 3
    assert set(m["bon"]) == {"min", "last", "product", "mean"} and (out / "bon.png").is_file()
    data.write_text(json.dumps({"problem": "q", "responses": ["a"]}) + "\n")
    assert cli("eval", "bon", "--data", data, "--reward", "qwen-prm", "--out", tmp_path / "x") == 2
    assert not (tmp_path / "x").exists()


def test_label_cli_mc_judge_consensus(tmp_path, tiny_dirs, capsys):
    rows = [{"id": f"r{i}", "problem": "What is 2+2?", "response": "2+2=4\n\nThe answer is \\boxed{4}.",
             "reference": "4"} for i in range(3)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc = tmp_path / "mc.jsonl"
    assert cli("label", "--method", "mc", "--input", inp, "--output", mc, "--completer", tiny_dirs["policy"],
               "--n", 2, "--max-new-tokens", 4, "--limit", 2) == 0
    assert len(mc.read_text().splitlines()) == 2
    assert cli("label", "--method", "mc", "--input", inp, "--output", mc, "--completer", tiny_dirs["policy"],
               "--n", 2, "--max-new-tokens", 4) == 0
    recs = [json.loads(x) for x in mc.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["r0", "r1", "r2"] and all(r["labels"][-1] in (0, 1) for r in recs)
    jd = tmp_path / "judge.jsonl"
    assert cli("label", "--method", "judge", "--input", inp, "--output", jd, "--judge", tiny_dirs["policy"],
               "--judge-arg", "max_new_tokens=4") == 0
    assert len(jd.read_text().splitlines()) == 3  # a random critic: verdicts mostly unparsable
    kept, rep = tmp_path / "kept.jsonl", tmp_path / "consensus.md"
    assert cli("label", "--method", "consensus", "--mc", mc, "--judge-labels", jd, "--output", kept,
               "--report", rep) == 0
    assert kept.exists() and rep.read_text().startswith("# Consensus filtering")
    capsys.readouterr()
    # bad input: exit 2, one line, nothing written
    out = tmp_path / "never.jsonl"
    assert cli("label", "--method", "mc", "--input", tmp_path / "missing.jsonl", "--output", out,
               "--completer", tiny_dirs["policy"]) == 2
    inp.write_text(json.dumps({"id": 1, "problem": "q", "response": "a"}) + "\n")
    assert cli("label", "--method", "mc", "--input", inp, "--output", out, "--completer", tiny_dirs["policy"]) == 2
    inp.write_text(json.dumps(rows[0]) + "\n")
    assert cli("label", "--method", "mc", "--input", inp, "--output", out, "--completer", tmp_path / "nomodel") == 2
    assert cli("label", "--method", "consensus", "--mc", mc, "--output", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(e.startswith("rlkit label: error: ") for e in err)
    assert not out.exists()
