"""benchmarks/merging_retention.py's pieces, in-process: the held-out family split keeps the families apart and
draws the same problems every time, and the SFT-data loss equals transformers' own masked loss."""

from __future__ import annotations

import pytest
import torch

from rlkit import testing
from rlkit.data import ARITHMETIC_FAMILIES, arithmetic_problems, load_prompts, worked_solution


def test_every_generated_problem_names_its_family_and_the_families_differ_in_their_steps():
    rows = arithmetic_problems(300, seed=3)
    assert {r["family"] for r in rows} == set(ARITHMETIC_FAMILIES)
    for r in rows:
        steps = r["answer"].split("####")[0].strip().splitlines()
        want = {"find_more": 1, "rows": 1, "buy_packs": 2, "cost": 2, "share": 2, "give_away": 3}[r["family"]]
        assert len(steps) == want
        assert (" / " in steps[0]) == (r["family"] == "share")
        assert ("dollars" in r["question"]) == (r["family"] == "cost")


def test_family_split_holds_one_family_out_and_is_reproducible(load_benchmark):
    bench = load_benchmark("merging_retention")
    rewarded, held = bench.family_split(20, 10_000, "share")
    assert len(rewarded) == len(held) == 20
    assert {r["family"] for r in held} == {"share"} and "share" not in {r["family"] for r in rewarded}
    assert bench.family_split(20, 10_000, "share") == (rewarded, held)
    with pytest.raises(SystemExit, match="held family 'nope'"):
        bench.family_split(5, 0, "nope")


def test_completion_loss_equals_transformers_loss_with_the_prompt_masked(load_benchmark, tmp_path):
    bench = load_benchmark("merging_retention")
    tok = testing.tiny_tokenizer()
    model = testing.tiny_causal_lm(tok).eval()
    path = bench.write_jsonl(arithmetic_problems(3, seed=1), tmp_path / "rows.jsonl")
    ds = load_prompts(path, n=3)
    total, count = 0.0, 0
    for r in ds:  # the reference: HF's mean cross-entropy with prompt labels set to -100, one row at a time
        prompt = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(r["prompt"] + [{"role": "assistant", "content": worked_solution(r["answer"])}],
                                       tokenize=False)
        ids = tok(full, add_special_tokens=False, return_tensors="pt").input_ids
        n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
        labels = ids.clone()
        labels[0, :n_prompt] = -100
        with torch.no_grad():
            loss = model(ids, labels=labels).loss
        n = ids.shape[1] - n_prompt
        total, count = total + float(loss) * n, count + n
    assert count > 30
    assert bench.completion_nll(model, tok, ds) == pytest.approx(total / count, rel=1e-5)
