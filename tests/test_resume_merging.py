"""A run with an online merging optimizer resumes exactly: tau, the Adam moments and the step (which keys the
DARE/TIES masks) come back from the checkpoint, so a run stopped after checkpoint-2 and resumed ends on the
same weights as the uninterrupted run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlkit.config import recipe_from_dict
from rlkit.launch import resume, train
from rlkit.trainers.grpo_trainer import PRMGRPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kill_resume import weights  # noqa: E402


class StopAtStep3(PRMGRPOTrainer):
    def training_step(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise RuntimeError("stopped for the test")
        return super().training_step(*args, **kwargs)


def _recipe(policy: str, optimizer: str, orm: str) -> dict:
    # a tiny random outcome RM: samples get different rewards, so the policy really trains
    return {"name": f"resume_{optimizer}", "model": policy, "algorithm": {"name": "grpo"},
            "reward": {"name": "orm", "args": {"model": orm}},
            "data": {"train": "builtin:arithmetic", "num_train": 16, "num_eval": 0},
            "optimizer": {"name": optimizer, "args": {"base_model": policy, "p": 0.5, "alpha": 1e-3}},
            "training": {"max_steps": 4, "num_generations": 2, "per_device_train_batch_size": 2,
                         "max_completion_length": 8, "learning_rate": 1e-3, "report_to": [], "save_steps": 1}}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["ondare", "onties"])
def test_a_resumed_merging_run_ends_on_the_uninterrupted_weights(optimizer, tmp_path, tiny_dirs):
    whole = train(recipe_from_dict(_recipe(tiny_dirs["policy"], optimizer, tiny_dirs["orm"])), run_dir=tmp_path / "whole")
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="stopped for the test"):
        train(recipe_from_dict(_recipe(tiny_dirs["policy"], optimizer, tiny_dirs["orm"])), run_dir=cut, trainer_cls=StopAtStep3)
    resume(cut)
    a, b = weights(whole), weights(cut)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-5, diff
    start = {f"policy/{k}": v for f in Path(tiny_dirs["policy"]).glob("*.safetensors") for k, v in load_file(f).items()}
    moved = max((a[k] - start[k]).abs().max().item() for k in a if k in start)
    assert moved > 1e-4, moved  # the runs trained: equal weights are not the starting weights
