"""The classifier trainers (PRM, listwise ORM, two-stage critique verifier) under DeepSpeed ZeRO-2 and ZeRO-3
on 2 CPU processes, through `rlkit train <recipe> --set distribution=zero2|zero3` on tiny models.

Four runs (each ~1 minute on 2 shared CPU cores, most of it imports): `prm_train` at ZeRO-2 and ZeRO-3,
and `critique_verifier` with judge feedback and an ORM stage 2 (two-layer head) at ZeRO-2 and ZeRO-3 (the
judge runs on rank 0 only; stage 1 is TRL's
SFTTrainer, stage 2 is `train_orm`, so the SFT, PRM and ORM trainers all run under both stages). Checked: the
runs finish and leave their summary; ZeRO-2 and ZeRO-3 give the same losses, the same saved weights and the
same held-out metrics; the saved folders hold full tensors (no (0,)-shaped ZeRO-3 placeholders) that moved
away from the start and load back through the reward registry, whose scores agree with the rank-0 evaluation
in the summary.
DeepSpeed compiles its shm_comm_op extension on first use (~40 s, cached in TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlkit.testing import train_ok

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# measured: ZeRO-2 vs ZeRO-3 logged losses and held-out metrics differ by <= 1e-6 on these runs (weights: see
# _assert_same_weights)
TOL = 1e-5


def _run(out: Path, recipe: str, sets: list[str], timeout: int = 400) -> Path:
    run = train_ok(recipe, out, *sets, timeout=timeout, cwd=REPO, OMP_NUM_THREADS="1")
    assert not (run / "FAILED.txt").exists() and not list(run.rglob(".final.tmp"))
    return run


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_critique_verifier import labelled
    from test_orm_trainer import synthetic_groups
    from test_prm_trainer import synthetic_records

    root = tmp_path_factory.mktemp("zero_data")
    return {"prm": _write_jsonl(root / "prm.jsonl", synthetic_records(32, seed=3)),
            "prm_eval": _write_jsonl(root / "prm_eval.jsonl", synthetic_records(8, seed=4)),
            "labels": _write_jsonl(root / "labels.jsonl", labelled(16, seed=1)),
            "groups": _write_jsonl(root / "groups.jsonl", synthetic_groups(16, seed=3)),
            "groups_eval": _write_jsonl(root / "groups_eval.jsonl", synthetic_groups(8, seed=4))}


@pytest.fixture(scope="module")
def prm_runs(tmp_path_factory, tiny_dirs, data):
    root = tmp_path_factory.mktemp("prm_zero")
    sets = [f"model={tiny_dirs['policy']}", f"data.train={data['prm']}", f"data.eval={data['prm_eval']}",
            "data.num_eval=8", "training.max_steps=3", "training.per_device_train_batch_size=4",
            "training.learning_rate=1e-3", "training.warmup_steps=0", "training.logging_steps=1",
            "training.report_to=[]"]
    return {z: _run(root / z, "prm_train", sets + [f"distribution={z}"]) for z in ("zero2", "zero3")}


@pytest.fixture(scope="module")
def critique_runs(tmp_path_factory, tiny_dirs, data):
    root = tmp_path_factory.mktemp("critique_zero")
    sets = [f"model={tiny_dirs['policy']}", f"data.train={data['labels']}",
            f"data.eval={data['groups_eval']}", "data.num_eval=8", "training.sft_max_steps=2",
            "training.sft_per_device_train_batch_size=2",
            "training.sft_max_length=256", "training.sft_learning_rate=5e-3", "training.stage2=orm",
            f"training.stage2_data={data['groups']}", "training.stage2_max_length=96", "training.max_steps=2",
            "training.per_device_train_batch_size=2", "training.learning_rate=1e-3",
            "training.warmup_steps=0", "training.logging_steps=1", "training.report_to=[]",
            # stage-1 critiques from an llm-judge (greedy, so both runs get the same examples)
            "training.feedback=judge", f"training.judge_model={tiny_dirs['policy']}",
            "training.judge_max_new_tokens=8"]
    return {z: _run(root / z, "critique_verifier", sets + [f"distribution={z}"]) for z in ("zero2", "zero3")}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _assert_full_and_trained(saved: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> None:
    """Every tensor of the freshly built model is saved with its full shape; training moved the weights."""
    assert set(saved) == set(start), set(saved) ^ set(start)
    for k, v in start.items():
        assert saved[k].shape == v.shape and saved[k].numel() > 0, (k, saved[k].shape, v.shape)
    assert max(float((saved[k] - start[k]).abs().max()) for k in start) > 1e-4


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], max_move: float) -> None:
    """ZeRO-2 and ZeRO-3 weights after training agree. Not bit for bit: the two stages sum gradients in a
    different order, and Adam's first steps turn a last-bit difference of a near-zero gradient (|g| ~ eps)
    into an update difference of up to ~lr. Measured: PRM max 6e-7; critique stage 1 12 and stage 2 60 of
    ~100k entries above 1e-6 (max 1.7e-5 at lr 5e-3, 1.3e-4 at lr 1e-3), mean |diff| 9e-9 and 1.5e-8. A real
    mismatch (a gradient not reduced, a shard not saved) moves most entries by ~lr: mean |diff| ~1e-4."""
    assert set(a) == set(b), set(a) ^ set(b)
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in sorted(a)])
    assert float(diffs.mean()) < 1e-6, float(diffs.mean())
    assert float((diffs > 1e-6).float().mean()) < 2e-3
    assert float(diffs.max()) < max_move


def test_prm_zero2_and_zero3(prm_runs, tiny_dirs, data):
    from reward.registry import build_reward
    from rlkit.trainers.prm_trainer import prm_from_causal_lm

    sums = {z: json.loads((run / "prm_summary.json").read_text()) for z, run in prm_runs.items()}
    for z, s in sums.items():
        assert s["world_size"] == 2 and s["deepspeed"] and s["global_step"] == 3, (z, s)
        assert len(s["losses"]) == 3 and all(math.isfinite(x) and 0.0 < x < 2.0 for x in s["losses"])
        # rank-0 evaluation before (in memory) and after (from final/) ran and saw every labelled step
        assert s["eval_before"]["n"] == s["eval_after"]["n"] > 8
    assert sums["zero2"]["losses"] == pytest.approx(sums["zero3"]["losses"], abs=TOL)
    for key in ("accuracy", "cross_entropy"):
        assert sums["zero2"]["eval_after"][key] == pytest.approx(sums["zero3"]["eval_after"][key], abs=TOL)
    assert sums["zero2"]["eval_before"] == pytest.approx(sums["zero3"]["eval_before"], abs=TOL)

    start = prm_from_causal_lm(tiny_dirs["policy"])[0].state_dict()
    saved = {z: _weights(run / "final") for z, run in prm_runs.items()}
    for z in saved:
        _assert_full_and_trained(saved[z], start)
    assert saved["zero3"]["score.weight"].shape == (2, 64)
    _assert_same_weights(saved["zero2"], saved["zero3"], max_move=3e-3)  # 3 steps at lr 1e-3

    # the saved folders load as qwen-prm; their scores agree with each other
    q, a = ["What is 2 + 3?"], ["2 + 3 = 5 good\n\n5 + 1 = 7 bad"]
    scores = {z: build_reward("qwen-prm", model=str(run / "final")).score(q, a)[0].scores
              for z, run in prm_runs.items()}
    assert len(scores["zero2"]) == 2 and all(0.0 < v < 1.0 for v in scores["zero2"])
    assert scores["zero2"] == pytest.approx(scores["zero3"], abs=TOL)


def test_critique_with_orm_stage2_zero2_and_zero3(critique_runs, tiny_dirs, data):
    from reward.registry import build_reward
    from reward.evaluation.ranking import evaluate_outcome_rm
    from rlkit.trainers.orm_trainer import label_groups, orm_from_causal_lm, read_group_rows

    sums = {z: json.loads((run / "critique_summary.json").read_text()) for z, run in critique_runs.items()}
    for z, s in sums.items():
        assert s["stage2_kind"] == "orm"
        assert s["stage1"]["global_step"] == 2 and s["stage2"]["global_step"] == 2
        assert s["stage2"]["world_size"] == 2 and s["stage2"]["deepspeed"]
        # rank 0's weight checks: stage 2 started from the stage-1 weights, which stage 1 moved
        assert s["stage2_init_max_diff_from_stage1"] == 0.0 and s["stage1_max_change_from_base"] > 1e-4
        assert json.loads((critique_runs[z] / "stage2" / "orm_summary.json").read_text())["global_step"] == 2
        # the judge ran on rank 0 only; rank 1 trained on the examples rank 0 shared
        shared = json.loads((critique_runs[z] / "stage1" / "judge_feedback.json").read_text())
        assert shared["stats"] == s["stage1"]["feedback"]
        assert shared["stats"]["judge_calls"] == shared["stats"]["examples"] == len(shared["examples"]) > 0
    for stage in ("stage1", "stage2"):
        assert sums["zero2"][stage]["losses"] == pytest.approx(sums["zero3"][stage]["losses"], abs=TOL)
        assert all(math.isfinite(x) for x in sums["zero3"][stage]["losses"])
    change = [sums[z]["stage1_max_change_from_base"] for z in ("zero2", "zero3")]
    assert change[0] == pytest.approx(change[1], abs=TOL)

    # stage 1: a full causal LM; stage 2: a full ORM (backbone + head), both trained
    s1 = {z: _weights(run / "stage1" / "final") for z, run in critique_runs.items()}
    lm = _weights(Path(tiny_dirs["policy"]))
    for z in s1:
        s1[z].pop("lm_head.weight", None)  # tied to the embedding; ZeRO-2 saves it as well
        _assert_full_and_trained(s1[z], lm)
    _assert_same_weights(s1["zero2"], s1["zero3"], max_move=1e-2)  # 2 steps at lr 5e-3
    start = orm_from_causal_lm(str(critique_runs["zero2"] / "stage1" / "final"))[0].state_dict()
    s2 = {z: _weights(run / "stage2" / "final") for z, run in critique_runs.items()}
    for z in s2:
        _assert_full_and_trained(s2[z], start)
        # the two-layer scalar head, gathered whole under ZeRO-3
        head = {k: tuple(v.shape) for k, v in s2[z].items() if k.startswith("score.")}
        assert head == {"score.0.weight": (64, 64), "score.0.bias": (64,), "score.2.weight": (1, 64),
                        "score.2.bias": (1,)}
    _assert_same_weights(s2["zero2"], s2["zero3"], max_move=2e-3)  # 2 steps at lr 1e-3

    # the stage-2 folder loads as `orm`; its ranking metrics equal the rank-0 evaluation in the summary
    groups, _ = label_groups(read_group_rows(data["groups_eval"]))
    for z, run in critique_runs.items():
        rm = build_reward("orm", model=str(run / "stage2" / "final"), max_length=96)
        ev = evaluate_outcome_rm(rm, groups)
        after = sums[z]["stage2"]["eval_after"]
        assert after["n_problems"] == ev["n_problems"] == len(groups) > 0
        assert ev["pairwise_accuracy"] == pytest.approx(after["pairwise_accuracy"], abs=1e-9)
        assert ev["listwise_loss"] == pytest.approx(after["listwise_loss"], abs=1e-5)
