"""llm-judge: verdict parsing, labels, prompting, HF generation plumbing on a tiny model."""

from __future__ import annotations

import pytest

from reward.base import RewardError
from reward.models.judge import (
    LLMJudge,
    Verdict,
    build_judge_prompt,
    earliest_errors,
    labels_from_verdict,
    parse_verdict,
)
from reward.registry import build_reward


@pytest.mark.parametrize("reply, n, first, expected, how", [
    ("Step 2 divides by 3 instead of 2.\n\n\\boxed{2}", 4, 1, 1, "boxed"),
    ("\\boxed{-1}", 4, 1, -1, "boxed"),
    ("All good. \\boxed{ -1 }", 4, 1, -1, "boxed"),
    ("\\boxed{\\text{Step 3}}", 4, 1, 2, "boxed"),
    ("first \\boxed{1} then reconsidered: \\boxed{3}", 4, 1, 2, "boxed"),    # the last box counts
    ("$\\boxed{0}$", 4, 0, 0, "boxed"),                                        # ProcessBench numbering
    ("\\boxed{none}", 4, 1, -1, "boxed"),
    ("\\boxed{No error}", 4, 1, -1, "boxed"),
    ("\\boxed{x = 3}", 4, 1, None, "boxed-unreadable"),                         # never guessed
    ("\\boxed{9}", 4, 1, None, "out-of-range"),
    ("\\boxed{0}", 4, 1, None, "out-of-range"),                                 # 0 is not a step when 1-based
    ("<think>step 2 looks wrong, so \\boxed{2}", 4, 1, None, "unfinished-thinking"),
    ("<think>maybe \\boxed{1}</think>Final: \\boxed{3}", 4, 1, 2, "boxed"),
    ("The earliest error is in Step 3, where 7*8 is taken as 54.", 4, 1, 2, "phrase"),
    ("The first mistake occurs at step 2.", 4, 1, 1, "phrase"),
    ("Final answer: 4", 4, 1, 3, "phrase"),
    ("Verdict: -1", 4, 1, -1, "phrase"),
    ("Step 1 is correct. Step 3 is incorrect. Step 2 is wrong too.", 4, 1, 1, "step-is-wrong"),
    ("I checked everything and there are no errors.", 4, 1, -1, "no-error-phrase"),
    ("All steps are correct.", 4, 1, -1, "no-error-phrase"),
    ("Computing 12 * 5 = 60 and 60 + 3 = 63 ...\n3", 4, 1, 2, "last-line"),
    ("Computing 12 * 5 = 60 and 60 + 3 = 63.", 4, 1, None, "unparsable"),      # numbers in prose: no guess
    ("", 4, 1, None, "unparsable"),
    ("I am not sure.", 4, 1, None, "unparsable"),
])
def test_parse_verdict(reply, n, first, expected, how):
    v = parse_verdict(reply, n, first)
    assert (v.index, v.how) == (expected, how)
    assert v.unparsable == (expected is None) and v.raw == reply


def test_labels_from_verdict():
    assert labels_from_verdict(0, 3) == [0, None, None]
    assert labels_from_verdict(2, 3) == [1, 1, 0]
    assert labels_from_verdict(-1, 3) == [1, 1, 1]
    assert labels_from_verdict(None, 2) == [None, None]


def test_prompt_numbering_reference_and_hint():
    p = build_judge_prompt("What is 2+2?", ["2+2=5", "So 5."], first_index=0, reference="4",
                           hint="The final answer is wrong.")
    assert "Step 0: 2+2=5" in p and "Step 1: So 5." in p and "Step 2" not in p
    assert "correct final answer is: 4" in p and "The final answer is wrong." in p and "\\boxed{-1}" in p
    assert "correct final answer" not in build_judge_prompt("q", ["a"])


def canned(replies):
    seen = []

    def gen(prompts):
        seen.extend(prompts)
        return [replies[k % len(replies)] for k in range(len(prompts))]

    return gen, seen


def test_scores_labels_meta_and_unparsable_counting():
    gen, seen = canned(["Step 2 is wrong. \\boxed{2}", "\\boxed{-1}", "no idea"])
    judge = LLMJudge(generate_fn=gen)
    out = judge.score(["q1", "q2", "q3", "q4"], ["a\n\nb\n\nc", "a\n\nb", "a\n\nb", ""])
    assert len(seen) == 3                                # the empty response needs no call
    assert out[0].labels == [1, 0, None] and out[0].scores == [1.0, 0.0, 0.0] and out[0].first_error() == 1
    assert out[1].labels == [1, 1] and out[1].scores == [1.0, 1.0] and out[1].first_error() == -1
    assert out[2].labels == [None, None] and out[2].scores == [0.5, 0.5]
    assert out[2].meta["unparsable"] is True and out[2].meta["verdict"] is None and out[2].meta["critique"] == "no idea"
    assert out[3].scores == [] and out[3].meta["verdict"] == -1
    assert judge.stats == {"calls": 3, "unparsable": 1}
    assert "Step 1: a" in seen[0] and seen[0].startswith("<|im_start|>user\n")


def test_earliest_errors_for_labelling_with_reference():
    gen, seen = canned(["\\boxed{1}"])
    judge = LLMJudge(generate_fn=gen, use_reference=True, first_index=0)
    got = earliest_errors(judge, ["p1", "p2"], [["s0", "s1"], []], references=["42", "7"],
                          hints=["The final answer is wrong.", None])
    assert got == [Verdict(1, "boxed", "\\boxed{1}"), Verdict(-1, "no-steps")]
    assert "correct final answer is: 42" in seen[0] and "The final answer is wrong." in seen[0]
    with pytest.raises(RewardError, match="references"):
        judge.earliest_errors(["p"], [["a"]], references=["1", "2"])


def test_hf_generate_on_tiny_model(tok, policy):
    judge = build_reward("llm-judge", model=policy, tokenizer=tok, max_new_tokens=6, token_budget=400)
    out = judge.score(["1+1?", "q", "a longer question about clips"], ["1+1=2\n\nSo 2.", "a", "x\n\ny\n\nz"])
    assert [len(o.scores) for o in out] == [2, 1, 3]
    # a random tiny model writes nonsense: counted as unparsable, never turned into a verdict
    for o in out:
        assert o.meta["unparsable"] == (o.meta["verdict"] is None)
        if o.meta["unparsable"]:
            assert o.labels == [None] * len(o.scores)
    assert judge.stats["calls"] == 3
    # greedy generation is deterministic and independent of batching
    single = LLMJudge(policy, tokenizer=tok, max_new_tokens=6, max_batch_size=1)
    prompts = [judge.chat_prompt(build_judge_prompt("q", ["a", "b"])), judge.chat_prompt("short")]
    assert judge.generate(prompts) == single.generate(prompts)


def test_bad_configuration():
    with pytest.raises(ValueError, match="backend"):
        LLMJudge(generate_fn=lambda p: p, backend="openai")
    with pytest.raises(ValueError, match="needs a model"):
        LLMJudge()
    with pytest.raises(RewardError, match="replies"):
        LLMJudge(generate_fn=lambda p: []).score(["q"], ["a"])
