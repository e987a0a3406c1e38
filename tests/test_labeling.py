"""MC labels with hand-computed answers, resumability, consensus disagreements, labelling I/O errors."""

from __future__ import annotations

import json

import pytest

from reward.labeling.consensus import consensus, format_report
from reward.labeling.io import (
    LabelDataError,
    ResumableWriter,
    labels_from_error,
    read_items,
    read_jsonl,
    read_records,
)
from reward.labeling.mc import HFCompleter, mc_label_item, run_mc, step_prefixes

RIGHT = "So the answer is \\boxed{72}."
WRONG = "So the answer is \\boxed{5}."


def always_right(prefixes, n):
    return [[RIGHT] * n for _ in prefixes]


def always_wrong(prefixes, n):
    return [[WRONG] * n for _ in prefixes]


def item(steps, ref="72", id_="a"):
    return {"id": id_, "problem": "Natalia sold 48 clips in April and half as many in May. Total?",
            "steps": steps, "reference": ref}


GOOD = item(["48 / 2 = 24 in May.", "48 + 24 = 72.", "The answer is \\boxed{72}."])
BAD_END = item(["48 / 2 = 24 in May.", "48 + 24 = 73.", "The answer is \\boxed{73}."])


def test_mc_always_right_completer():
    # every rolled-out step has a right completion; the last step is the response's own answer
    assert mc_label_item(GOOD, always_right, n=3)["labels"] == [1, 1, 1]
    rec = mc_label_item(BAD_END, always_right, n=3)
    assert rec["labels"] == [1, 1, 0] and rec["earliest_error"] == 2 and rec["mc_correct"] == [3, 3, 0]


def test_mc_always_wrong_completer_drops_later_steps():
    rec = mc_label_item(GOOD, always_wrong, n=4)
    assert rec["labels"] == [0] and rec["earliest_error"] == 0 and rec["mc_correct"] == [0]
    assert rec["steps"] == GOOD["steps"]  # all steps kept in the record; labels stop at the first negative


def test_mc_hard_vs_soft_and_prefix_dependence():
    # right from a prefix unless the prefix contains the bad step "73"; 1 of 4 completions right after step 0
    def completer(prefixes, n):
        out = []
        for p in prefixes:
            if "73" in p:
                out.append([WRONG] * n)
            else:
                out.append([RIGHT] + [WRONG] * (n - 1))
        return out

    hard = mc_label_item(BAD_END, completer, n=4)
    assert hard["labels"] == [1, 0] and hard["earliest_error"] == 1 and hard["mc_correct"] == [1, 0]
    soft = mc_label_item(BAD_END, completer, n=4, mode="soft")
    assert soft["labels"] == [0.25, 0.0] and soft["earliest_error"] == 1
    good = mc_label_item(GOOD, completer, n=4, mode="soft")
    assert good["labels"] == [0.25, 0.25, 1.0] and good["earliest_error"] == -1


def test_mc_prefixes_and_calls():
    calls = []

    def completer(prefixes, n):
        calls.append((list(prefixes), n))
        return always_right(prefixes, n)

    mc_label_item(GOOD, completer, n=2)
    (prefixes, n), = calls
    assert n == 2 and len(prefixes) == 2  # no rollout after the final step
    assert prefixes[0].endswith("48 / 2 = 24 in May.\n\n")
    assert prefixes[1].endswith("48 / 2 = 24 in May.\n\n48 + 24 = 72.\n\n")
    assert step_prefixes(completer, "q", ["only"]) == []
    assert mc_label_item(item(["\\boxed{72}"]), completer, n=2)["labels"] == [1]
    with pytest.raises(ValueError, match="completions"):
        mc_label_item(GOOD, lambda p, n: [["x"]] * len(p), n=2)
    with pytest.raises(ValueError, match="mode"):
        mc_label_item(GOOD, always_right, mode="median")


def test_mc_resumable_no_duplicates(tmp_path):
    items = [item(GOOD["steps"], id_=f"q{i}") for i in range(5)]
    out = tmp_path / "mc.jsonl"
    calls = []

    def completer(prefixes, n):
        calls.append(1)
        return always_right(prefixes, n)

    s1 = run_mc(items, completer, str(out), n=2, limit=2)  # "interrupted" after two items
    assert s1["labelled"] == 2 and len(read_jsonl(out)) == 2
    # a crash in the middle of a write leaves a torn last line: it is cut off and redone
    with out.open("a") as f:
        f.write('{"id": "q2", "labels": [1')
    s2 = run_mc(items, completer, str(out), n=2)
    assert s2 == {"total": 5, "skipped": 2, "labelled": 3, "with_error": 0}
    ids = [r["id"] for r in read_jsonl(out)]
    assert ids == ["q0", "q1", "q2", "q3", "q4"]
    assert len(calls) == 5
    s3 = run_mc(items, completer, str(out), n=2)
    assert s3["labelled"] == 0 and s3["skipped"] == 5 and len(calls) == 5
    assert len(read_records(out)) == 5


def test_mc_items_per_call_same_records_fewer_calls(tmp_path):
    def completer(prefixes, n):
        calls.append(len(prefixes))
        return [[WRONG if "73" in p else RIGHT] * n for p in prefixes]

    items = [dict(GOOD, id="g"), dict(BAD_END, id="b"), item(["\\boxed{72}"], id_="one"), dict(GOOD, id="g2")]
    calls: list[int] = []
    run_mc(items, completer, str(tmp_path / "one.jsonl"), n=2)
    assert calls == [2, 2, 2]  # one call per item with prefixes; a one-step item needs none
    calls.clear()
    run_mc(items, completer, str(tmp_path / "three.jsonl"), n=2, items_per_call=3)
    assert calls == [4, 2]  # items 1-3 share a call (2 + 2 + 0 prefixes), item 4 alone
    strip = lambda rs: [{k: v for k, v in r.items() if k != "_line"} for r in rs]  # noqa: E731
    one, three = strip(read_jsonl(tmp_path / "one.jsonl")), strip(read_jsonl(tmp_path / "three.jsonl"))
    assert one == three and [r["earliest_error"] for r in one] == [-1, 1, -1, -1]
    assert [r["labels"] for r in one] == [[1, 1, 1], [1, 0], [1], [1, 1, 1]]
    # newline-separated responses: prefixes joined as written
    calls.clear()
    got = []
    run_mc([dict(GOOD, id="n")], lambda p, n: (got.extend(p), always_right(p, n))[1],
           str(tmp_path / "nl.jsonl"), n=1, step_join="\n")
    assert got[1].endswith("48 / 2 = 24 in May.\n48 + 24 = 72.\n")
    with pytest.raises(ValueError, match="items_per_call"):
        run_mc(items, completer, str(tmp_path / "x.jsonl"), items_per_call=0)


def test_resumable_writer_refuses_foreign_file(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text("hello\n")
    with pytest.raises(LabelDataError, match="not JSONL"):
        ResumableWriter(p)


def test_hf_completer_shapes(tok, policy):
    comp = HFCompleter(policy, tok, max_new_tokens=4, batch_size=2)
    prefixes = step_prefixes(comp, "What is 2+2?", ["2+2=4", "So 4.", "\\boxed{4}"])
    assert prefixes[0].startswith("<|im_start|>system\nPlease reason step by step")
    out = comp(prefixes, 3)
    assert len(out) == 2 and all(len(o) == 3 and all(isinstance(t, str) for t in o) for o in out)
    rec = mc_label_item({"id": "z", "problem": "What is 2+2?", "steps": ["2+2=4", "\\boxed{4}"],
                         "reference": "4"}, comp, n=2)
    assert rec["labels"][-1] in (0, 1) and len(rec["mc_correct"]) == len(rec["labels"])


def test_read_items_errors(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps({"id": 1, "question": "q", "response": "a\n\nb", "answer": "#### 3"}) + "\n")
    (it,) = read_items(p)
    assert it == {"id": "1", "problem": "q", "steps": ["a", "b"], "reference": "#### 3"}
    p.write_text(json.dumps({"id": 1, "question": "q", "response": "a"}) + "\n")
    with pytest.raises(LabelDataError, match="reference"):
        read_items(p)
    p.write_text(json.dumps({"id": 1, "response": "a", "answer": "1"}) + "\n")
    with pytest.raises(LabelDataError, match="problem"):
        read_items(p)
    p.write_text("{bad json\n")
    with pytest.raises(LabelDataError, match=":1: not valid JSON"):
        read_items(p)
    rows = [{"id": 1, "problem": "q", "steps": ["a"], "reference": "1"}] * 2
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LabelDataError, match="duplicate id"):
        read_items(p)
    with pytest.raises(LabelDataError, match="no such file"):
        read_items(tmp_path / "missing.jsonl")


def rec(id_, e, n=4, labels=None):
    return {"id": id_, "problem": "p", "steps": [f"s{i}" for i in range(n)],
            "labels": labels if labels is not None else labels_from_error(n, e), "earliest_error": e}


def test_consensus_hand_built_disagreements():
    mc = [rec("agree-none", -1), rec("agree-2", 2), rec("judge-earlier", 3), rec("mc-earlier", 1),
          rec("mc-none", -1), rec("judge-none", 0), rec("unparsable", 2), rec("only-mc", 1),
          rec("soft", 1, labels=[0.5, 0.0])]
    judge = [rec("agree-none", -1), rec("agree-2", 2), rec("judge-earlier", 1), rec("mc-earlier", 2),
             rec("mc-none", 0), rec("judge-none", -1), rec("unparsable", None), rec("only-judge", 0),
             rec("soft", 1)]
    kept, r = consensus(mc, judge)
    assert [k["id"] for k in kept] == ["agree-none", "agree-2", "soft"]
    assert kept[0]["labels"] == [1, 1, 1, 1] and kept[1]["labels"] == [1, 1, 0]
    assert kept[2]["labels"] == [1, 0] and kept[2]["mc_labels"] == [0.5, 0.0]  # hard labels after filtering
    assert all(k["method"] == "consensus" for k in kept)
    assert r["total"] == 8 and r["kept"] == 3 and r["missing_judge"] == 1 and r["missing_mc"] == 1
    assert r["disagreements"] == {("step 3", "step 1"): 1, ("step 1", "step 2"): 1, ("none", "step 0"): 1,
                                  ("step 0", "none"): 1, ("step 2", "unparsable"): 1}
    assert r["outcomes"] == {"agree_none": 1, "agree_error": 2, "judge_earlier": 1, "mc_earlier": 1,
                             "mc_none_judge_error": 1, "mc_error_judge_none": 1, "judge_unparsable": 1}
    text = format_report(r)
    assert "kept 3/8 (37.5%)" in text
    assert "| MC \\ judge | none | step 0 | step 1 | step 2 | unparsable |" in text
    assert "| step 3 |  |  | 1 |  |  |" in text


def test_consensus_rejects_mismatched_steps():
    a = rec("x", 1)
    b = dict(rec("x", 1), steps=["other"])
    with pytest.raises(LabelDataError, match="different steps"):
        consensus([a], [b])


def test_judge_labels_from_llm_judge_and_resume(tmp_path):
    from reward.labeling.judge import judge_label_items, run_judge
    from reward.models.judge import LLMJudge

    replies = {"a": "Step 2 is wrong. \\boxed{2}", "b": "All steps are correct. \\boxed{-1}", "c": "hmm, not sure"}

    def gen(prompts):
        return [next(v for k, v in replies.items() if f"QQ{k}QQ" in p) for p in prompts]

    judge = LLMJudge(generate_fn=gen)
    items = [{"id": k, "problem": f"QQ{k}QQ", "steps": ["s1", "s2", "s3"], "reference": "1"} for k in "abc"]
    recs = judge_label_items(items, judge)
    assert [r["earliest_error"] for r in recs] == [1, -1, None]
    assert [r["labels"] for r in recs] == [[1, 0], [1, 1, 1], []]
    assert recs[2]["unparsable"] and recs[0]["critique"].startswith("Step 2")
    out = tmp_path / "judge.jsonl"
    s1 = run_judge(items, judge, str(out), batch_size=2, limit=2)
    assert s1["labelled"] == 2
    s2 = run_judge(items, judge, str(out), batch_size=2)
    assert s2 == {"total": 3, "skipped": 2, "labelled": 1, "with_error": 0, "unparsable": 1}
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "c"]
    # plain callables: ints, out-of-range -> no verdict
    recs = judge_label_items(items, lambda p, s, r: [0, 5, -1])
    assert [r["earliest_error"] for r in recs] == [0, None, -1]
