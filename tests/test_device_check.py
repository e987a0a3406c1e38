"""The prepared GPU check (benchmarks/device_check.sh) runs on the CPU at tiny sizes, so it cannot rot before a
GPU is lent: every section is in its JSON and every number is positive; its memory estimates are those of
rlkit.memory and equal the optimizers' exact tensor bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def numbers(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def test_device_check_runs_on_cpu_and_writes_positive_numbers(tmp_path):
    out = tmp_path / "device_check.json"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--cpu", "--tiny", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"device", "torch", "transformers", "matmul", "prm_scoring", "grpo_step", "ppo_step", "online_merging",
            "memory", "run_s"} <= set(data)
    for step in ("grpo_step", "ppo_step"):
        s = data[step]
        assert s["total_s"] == s["generation_s"] + s["scoring_s"] + s["training_s"]
        assert {"generation_tokens_per_s", "train_tokens_per_s", "train_mfu", "estimate_bytes"} <= set(s)
        assert s["peak_bytes"] is None and s["estimate_complete"]           # CPU: no allocator statistics
    assert data["ppo_step"]["estimate_bytes"] > data["grpo_step"]["estimate_bytes"]   # + critic and reference
    for path, value in numbers(data):
        assert value > 0 or path.endswith("max_diff"), (path, value)
    om = data["online_merging"]
    assert om["ondare"]["estimate_params"] == om["params"]
    for kind in ("ondare", "onties"):   # exact: fp32 weights + grads + moments + tau
        assert om[kind]["measured_model_bytes"] == om[kind]["estimate_model_bytes"] == 20 * om["params"]
