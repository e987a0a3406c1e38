"""Data selection: rejection sampling picks the reward's best (and/or a verifier-correct) sample and writes
SFT data TRL's SFTTrainer reads; prompt filtering keeps an accuracy band; both resume with no duplicates;
the `rlkit select` subcommand fails with one line and exit 2 on bad input."""

from __future__ import annotations

import json
import re

import pytest

from reward.base import StepRewardModel
from reward.selection import (
    SelectionError,
    filter_prompts,
    pick_best,
    progress_path,
    read_prompts,
    rejection_sample,
)
from rlkit import select_cmd


class Canned:
    """Completer whose i-th sample for a prompt 'What is a + b? #k' answers a + b + (i mod 3 == 0 ? 0 : i);
    ``right`` (per problem) controls how many samples are correct: the first ``right[problem]`` are."""

    system_prompt = "SYS"

    def __init__(self, right: dict[str, int], fail_after: int | None = None):
        self.right, self.fail_after, self.calls = right, fail_after, []

    def prompt(self, problem):
        return f"<<{problem}>>"

    def __call__(self, prefixes, n):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append(list(prefixes))
        out = []
        for pre in prefixes:
            problem = pre[2:-2]
            a, b = map(int, re.findall(r"\d+", problem)[:2])
            k = self.right[problem]
            out.append([f"{a} + {b}\n\nscore {i}\n\n\\boxed{{{a + b if i < k else a + b + 1 + i}}}"
                        for i in range(n)])
        return out


class ScoreInText(StepRewardModel):
    """Outcome score = the number after 'score' in the response (deterministic, hand-checkable)."""

    def score_steps(self, prompts, steps, references=None):
        out = []
        for st in steps:
            m = re.search(r"score (\d+)", " ".join(s.text for s in st))
            out.append([float(m.group(1)) if m else -1.0] * len(st))
        return out


def write_prompts(path, right):
    rows = [{"id": f"p{i}", "question": q, "answer": str(sum(map(int, re.findall(r"\d+", q)[:2]))), "extra": i}
            for i, q in enumerate(right)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


RIGHT = {"What is 1 + 2?": 0, "What is 3 + 4?": 2, "What is 5 + 1?": 5, "What is 2 + 2?": 8, "What is 7 + 1?": 3}


def lines(path):
    return [json.loads(x) for x in open(path) if x.strip()]


def test_pick_best():
    assert pick_best(["a", "b", "c"], [0.2, 0.9, 0.9], [True, False, True]) == 1  # first of equal best
    assert pick_best(["a", "b", "c"], [0.2, 0.9, 0.9], [True, False, True], require_correct=True) == 2
    assert pick_best(["a", "b"], None, [False, True], require_correct=True) == 1
    assert pick_best(["a", "b"], [1.0, 2.0], [False, False], require_correct=True) is None


def test_rejection_best_under_reward_and_correct(tmp_path):
    write_prompts(tmp_path / "p.jsonl", RIGHT)
    items = read_prompts(tmp_path / "p.jsonl")
    out, samples = tmp_path / "sft.jsonl", tmp_path / "groups.jsonl"
    # reward only: the highest 'score i' is the last sample (i = 7), correct only when all 8 are right
    st = rejection_sample(items, Canned(RIGHT), out, n=8, reward=ScoreInText(), samples_output=samples)
    assert st == {"total": 5, "skipped": 0, "processed": 5, "kept": 5, "no_candidate": 0, "samples": 40,
                  "correct_samples": 18}
    rows = lines(out)
    assert [r["score"] for r in rows] == [7.0] * 5
    assert [r["correct"] for r in rows] == [False, False, False, True, False]
    assert rows[0]["messages"][0] == {"role": "system", "content": "SYS"}
    assert rows[0]["messages"][1] == {"role": "user", "content": "What is 1 + 2?"}
    assert rows[0]["messages"][2]["role"] == "assistant" and "score 7" in rows[0]["messages"][2]["content"]
    g = lines(samples)
    assert len(g) == 5 and [sum(r["correct"] for r in x["responses"]) for x in g] == [0, 2, 5, 8, 3]
    # reward + require_correct: the best-scored correct sample is the last correct one (i = k - 1)
    out2 = tmp_path / "sft2.jsonl"
    st = rejection_sample(items, Canned(RIGHT), out2, n=8, reward=ScoreInText(), require_correct=True)
    assert st["kept"] == 4 and st["no_candidate"] == 1
    assert [(r["id"], r["score"], r["correct"]) for r in lines(out2)] == \
        [("p1", 1.0, True), ("p2", 4.0, True), ("p3", 7.0, True), ("p4", 2.0, True)]
    # progress file lists every prompt, kept or not
    assert [(p["id"], p["kept"]) for p in lines(progress_path(out2))][0] == ("p0", False)
    with pytest.raises(SelectionError):
        rejection_sample(items, Canned(RIGHT), tmp_path / "x.jsonl", n=8)


def test_rejection_resumes_without_duplicates(tmp_path):
    write_prompts(tmp_path / "p.jsonl", RIGHT)
    items = read_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "sft.jsonl"
    comp = Canned(RIGHT, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        rejection_sample(items, comp, out, n=4, reward=ScoreInText(), batch_size=2)
    assert [r["id"] for r in lines(out)] == ["p0", "p1", "p2", "p3"]
    # a crash between the output line and the progress line: p3 is in the output, not in the progress file
    prog = lines(progress_path(out))
    progress_path(out).write_text("".join(json.dumps(p) + "\n" for p in prog[:3]))
    comp = Canned(RIGHT)
    st = rejection_sample(items, comp, out, n=4, reward=ScoreInText(), batch_size=2)
    assert st["skipped"] == 3 and st["processed"] == 2
    assert comp.calls == [["<<What is 2 + 2?>>", "<<What is 7 + 1?>>"]]  # finished prompts are not re-sampled
    ids = [r["id"] for r in lines(out)]
    assert ids == ["p0", "p1", "p2", "p3", "p4"]
    st = rejection_sample(items, Canned(RIGHT), out, n=4, reward=ScoreInText())
    assert st["skipped"] == 5 and st["processed"] == 0 and len(lines(out)) == 5


def test_filter_band_and_resume(tmp_path):
    rows = write_prompts(tmp_path / "p.jsonl", RIGHT)
    items = read_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "kept.jsonl"
    with pytest.raises(KeyboardInterrupt):
        filter_prompts(items, Canned(RIGHT, fail_after=1), out, n=8, batch_size=2, limit=None)
    st = filter_prompts(items, Canned(RIGHT), out, n=8, batch_size=2)
    assert st["skipped"] == 2 and st["processed"] == 3
    kept = lines(out)
    # correct counts 0, 2, 5, 8, 3 -> band 2..5 keeps p1, p2, p4; the input fields are kept as they were
    assert [r["id"] for r in kept] == ["p1", "p2", "p4"]
    assert [r["n_correct"] for r in kept] == [2, 5, 3]
    assert kept[0]["question"] == rows[1]["question"] and kept[0]["answer"] == rows[1]["answer"] and kept[0]["extra"] == 1
    st = filter_prompts(items, Canned(RIGHT), tmp_path / "all.jsonl", n=8)
    assert st["histogram"] == [1, 0, 1, 1, 0, 1, 0, 0, 1] and st["too_hard"] == 1 and st["too_easy"] == 1
    # the kept rows are recipe data (question/answer fields)
    from rlkit.data import load_prompts

    ds = load_prompts(str(out))
    assert len(ds) == 3 and ds[0]["answer"] == "7"
    with pytest.raises(SelectionError):
        filter_prompts(items, Canned(RIGHT), tmp_path / "y.jsonl", n=8, min_correct=6, max_correct=5)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    write_prompts(tmp_path / "p.jsonl", RIGHT)
    base = ["--input", str(tmp_path / "p.jsonl"), "--output", str(tmp_path / "o.jsonl"), "--policy", "x"]
    cases = [
        (["rejection", *base], "needs --reward"),
        (["rejection", *base, "--reward", "nope"], "unknown reward 'nope'"),
        (["rejection", *base, "--reward", "verifier", "--reward-arg", "bogus=1"], "unknown argument 'bogus'"),
        (["filter", *base, "--min-correct", "6"], "--min-correct"),
        (["filter", *base[:1], str(tmp_path / "missing.jsonl"), *base[2:]], "no such file"),
        (["filter", *base, "--n", "0"], "--n must be"),
    ]
    for argv, want in cases:
        assert select_cmd.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("rlkit select: error:") and want in err, err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_cli_rejection_with_tiny_policy_feeds_sft_trainer(tmp_path, tiny_dirs, capsys):
    """End to end with a real (tiny, random) policy through HF generate and the `orm` reward, then TRL's
    SFTTrainer trains on the written file."""
    write_prompts(tmp_path / "p.jsonl", dict(list(RIGHT.items())[:3]))
    out, samples = tmp_path / "sft.jsonl", tmp_path / "groups.jsonl"
    argv = ["rejection", "--input", str(tmp_path / "p.jsonl"), "--output", str(out), "--policy", tiny_dirs["policy"],
            "--backend", "hf", "--n", "3", "--max-new-tokens", "8", "--reward", "orm",
            "--reward-arg", f"model={tiny_dirs['orm']}", "--samples-output", str(samples)]
    assert select_cmd.main(argv) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["kept"] == 3 and stats["samples"] == 9
    assert select_cmd.main(argv) == 0  # resumed: nothing new
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 3
    assert len(lines(out)) == 3 and len(lines(samples)) == 3

    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    ds = load_dataset("json", data_files=str(out), split="train")
    tok = AutoTokenizer.from_pretrained(tiny_dirs["policy"])
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["policy"])
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True, bf16=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    assert trainer.state.global_step == 2
