"""Every example runs as documented (with --tiny, so it takes seconds), so none of them rots."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GRPO_EXAMPLES = ["custom_reward.py", "custom_credit.py", "trainer_subclass.py", "ondare_grpo.py"]


def run_script(folder: str, name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    # PYTHONPATH: the scripts import this checkout's rlkit, not whichever one the environment has installed
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    return subprocess.run([sys.executable, str(REPO / folder / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    return run_script("examples", name, *args)


@pytest.mark.slow
@pytest.mark.parametrize("name", GRPO_EXAMPLES)
def test_grpo_examples(name, tmp_path):
    res = run_example(name, "--tiny", "--output-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1 and (runs[0] / "policy" / "config.json").is_file()
    info = json.loads((runs[0] / "run_info.json").read_text())
    assert info["global_step"] == 2
    if name == "ondare_grpo.py":
        assert info["optimizer"] == "OnDAREAdamW"
    if name == "trainer_subclass.py":
        assert info["trainer"] == "CappedStepsGRPOTrainer"
        assert any("prm/capped_share" in h for h in json.loads((runs[0] / "metrics.json").read_text()))
    if name == "custom_credit.py":
        assert info["trainer"] == "PRMGRPOTrainer"  # no subclass: the recipe names the function
        assert info["credit"] == "custom_credit:discounted_process_credit"


@pytest.mark.slow
def test_label_train_and_evaluate_prm_examples(tmp_path, shared_data):
    out = tmp_path / "runs"
    res = run_example("label_and_train_prm.py", "--tiny", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = [p for p in out.iterdir() if p.name.startswith("prm_pipeline_embedded")]
    prm = run / "prm" / "final"
    assert (prm / "model.safetensors").is_file() and (run / "data" / "consensus.jsonl").is_file()
    assert "[6/6] held-out:" in res.stdout and (run / "report" / "index.md").is_file()
    res = run_example("evaluate_prm_processbench.py", "--prm", str(prm), "--data",
                      str(shared_data / "processbench"), "--limit", "8", "--out", str(tmp_path / "eval"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((tmp_path / "eval").rglob("*.md")) and list((tmp_path / "eval").rglob("*.png"))


@pytest.mark.slow
def test_train_listwise_rm_example(tmp_path):
    res = run_example("train_listwise_rm.py", "--tiny", "--out", str(tmp_path / "orm"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rm@" in res.stdout


@pytest.mark.slow
def test_dense_vs_outcome_benchmark_runs_every_arm_and_seed_and_summarises_them(tmp_path):
    _run_benchmark("dense_vs_outcome.py", "--tiny", "--steps", "2", "--eval-every", "1", "--eval-size", "2",
                   "--seeds", "0,1", "--out", str(tmp_path), timeout=900)
    data = json.loads((tmp_path / "dense_vs_outcome.json").read_text())
    assert set(data["summary"]) == set(data["runs"]) == {"process_grpo", "min_form", "outcome"}
    for arm, runs in data["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        assert all([p[0] for p in r["heldout_accuracy"]] == [0, 1, 2] for r in runs)  # steps 0, 1, 2
        finals = [r["heldout_accuracy"][-1][1] for r in runs]
        step, mean, std = data["summary"][arm]["heldout_accuracy"][-1]
        assert step == 2 and mean == pytest.approx(sum(finals) / 2) and std == pytest.approx(abs(finals[0] - finals[1]) / 2)
        assert len(data["summary"][arm]["steps_per_response"]) == 2
    starts = {r["heldout_accuracy"][0][1] for runs in data["runs"].values() for r in runs}
    assert len(starts) == 1  # the start policy is measured once and shared by every run
    assert (tmp_path / "dense_vs_outcome.png").stat().st_size > 10_000


@pytest.mark.slow
def test_merging_retention_benchmark_runs_every_optimizer_and_summarises_changes(tmp_path):
    out = _run_benchmark("merging_retention.py", "--tiny", "--steps", "2", "--eval-size", "3", "--seeds", "0,1",
                         "--out", str(tmp_path), timeout=900)
    data = json.loads((tmp_path / "merging_retention.json").read_text())
    assert set(data["summary"]) == set(data["runs"]) == {"adamw", "ondare", "onties"}
    assert data["held_family"] == "share" and set(data["sft"]) == {"rewarded_accuracy", "held_accuracy",
                                                                    "rewarded_nll", "held_nll"}
    for opt, runs in data["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1] and all(len(r["reward"]) == 2 for r in runs)
        changes = [r["after"]["held_nll"] - data["sft"]["held_nll"] for r in runs]
        mean, std = data["summary"][opt]["held_nll"]
        assert mean == pytest.approx(sum(changes) / 2) and std == pytest.approx(abs(changes[0] - changes[1]) / 2)
        gains = [r["reward_last3"] - r["reward_first3"] for r in runs]
        assert data["summary"][opt]["reward_gain"][0] == pytest.approx(sum(gains) / 2)
    assert "onties: reward gain" in out and (tmp_path / "merging_retention.png").stat().st_size > 10_000


@pytest.mark.slow
def test_online_prm_benchmark_runs_both_arms_with_the_online_monitors(tmp_path):
    out = _run_benchmark("online_prm.py", "--tiny", "--steps", "2", "--eval-every", "2", "--eval-size", "2",
                         "--seeds", "0", "--out", str(tmp_path), timeout=900)
    data = json.loads((tmp_path / "online_prm.json").read_text())
    (fixed,), (online,) = data["runs"]["fixed"], data["runs"]["online"]
    assert [p[0] for p in online["heldout_accuracy"]] == [0, 2] and fixed["heldout_accuracy"][0] == \
        online["heldout_accuracy"][0]  # the same start, measured once
    assert len(online["online_reward/loss"]) == 2 and "online_reward/loss" not in fixed  # only it learns
    assert online["online_reward/loss"][0][1] == pytest.approx(0.6931, abs=1e-4)  # pi_phi = pi_ref at first
    assert "online seed 0: PRM-vs-verifier agreement" in out and (tmp_path / "online_prm.png").is_file()


def _run_benchmark(name, *args, timeout=600):
    res = run_script("benchmarks", name, *args, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_prm_scoring_benchmark_prints_a_ratio_with_equal_scores():
    out = _run_benchmark("prm_scoring.py", "--hidden", "32", "--layers", "1", "--responses", "4", "--repeats", "1")
    row = [ln.split() for ln in out.splitlines() if ln.strip().startswith("32x1")]
    assert len(row) == 1, out
    speedup = float(row[0][4].rstrip("x"))
    assert speedup > 0 and row[0][5].endswith("%")


@pytest.mark.slow
def test_grpo_overhead_and_online_merging_benchmarks_print_ratios():
    out = _run_benchmark("grpo_overhead.py", "--steps", "2", "--completion", "8", "--hidden", "32",
                         "--generations", "2", "--repeats", "1")
    m = re.search(r"ratio rlkit / TRL = ([0-9.]+)", out)
    assert m and float(m.group(1)) > 0, out
    out = _run_benchmark("online_merging.py", "--device", "cpu", "--hidden", "64", "--layers", "1", "--warmup", "1",
                         "--reps", "1")
    ratios = dict(re.findall(r"^(adamw-\w+|ondare|onties)\s+step\s+[0-9.]+ ms\s+ratio\s+([0-9.]+)x", out, re.M))
    assert set(ratios) == {"adamw-fused", "adamw-foreach", "adamw-loop", "ondare", "onties"}, out
    assert min(float(ratios[f"adamw-{f}"]) for f in ("fused", "foreach", "loop")) == 1.0, out  # the fastest form
    assert re.search(r"^fastest AdamW: adamw-(fused|foreach|loop) ", out, re.M), out


def test_token_alignment_benchmark_prints_equal_outputs_and_a_speedup():
    out = _run_benchmark("token_alignment.py", "--tokens", "256", "--tokenizer", "tiny", "--repeats", "1")
    m = re.search(r"speedup incremental vs prefix = ([0-9.]+)x", out)
    assert m and float(m.group(1)) > 0 and "(outputs equal)" in out, out
