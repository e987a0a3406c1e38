"""benchmarks/grpo_step.py --tiny, in-process: the step's parts are non-negative, add up (with "other") to the
measured step, generation and forward+backward are really timed, the matmul ceilings are measured, and the
--json file carries the same numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path


def test_tiny_grpo_step_parts_add_up(load_benchmark, tmp_path: Path) -> None:
    bench = load_benchmark("grpo_step")
    out = tmp_path / "step.json"
    rep = bench.run(["--tiny", "--steps", "2", "--json", str(out)])

    parts = rep["parts_s"]
    assert set(parts) == set(bench.PARTS) | {"other"}
    assert all(v >= 0 for v in parts.values()), parts
    assert math.isclose(sum(parts.values()), rep["step_s"], rel_tol=1e-6)
    assert parts["generation"] > 0 and parts["forward_backward"] > 0 and parts["reward_scoring"] > 0
    assert rep["weight_sync"] == "n/a" and parts["weight_sync"] == 0.0  # HF generate: nothing to sync
    assert len(rep["step_times_s"]) == 2 and rep["step_s"] in rep["step_times_s"]
    assert rep["tokens"] >= rep["real_tokens"] > 0 and rep["params"] > 0
    assert rep["matmul_flops_per_s"]["fp32"] > 0 and rep["matmul_flops_per_s"]["bf16"] > 0
    assert rep["fwd_bwd_flops_per_s"] > 0

    saved = json.loads(out.read_text())
    assert saved["parts_s"] == parts and saved["step_s"] == rep["step_s"]
    assert saved["matmul_flops_per_s"] == rep["matmul_flops_per_s"]
    assert saved["fwd_bwd_flops_per_s"] == rep["fwd_bwd_flops_per_s"]
