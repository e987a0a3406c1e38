"""Failures during a training run end cleanly: a full disk while saving a checkpoint leaves the previous one
complete and resumable; a reward server that is down (or dies) fails the run after the client's retries with
its one-line error and FAILED.txt, the last checkpoint is intact, and the run resumes once the server is back."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from test_reward_server import free_port, start_cli
from transformers import TrainerCallback

from reward.base import RewardError
from rlkit.checkpoints import COMPLETE_MARKER, newest_complete_checkpoint, verify_checkpoint
from rlkit.config import recipe_from_dict
from rlkit.launch import resume, train
from rlkit.trainers.grpo_trainer import PRMGRPOTrainer


def _recipe(policy: str, **reward) -> dict:
    return {"name": "fail", "model": policy, "data": {"train": "builtin:arithmetic", "num_train": 16, "num_eval": 0},
            "algorithm": {"name": "grpo"}, "reward": reward or {"name": "arithmetic"},
            "training": {"max_steps": 4, "num_generations": 2, "per_device_train_batch_size": 2,
                         "max_completion_length": 8, "report_to": [], "save_steps": 1}}


class DiskFullAtStep3(PRMGRPOTrainer):
    """Saving checkpoint-3 writes part of a file, then the disk is full."""

    def _save_checkpoint(self, model, trial):
        if self.state.global_step == 3:
            partial = Path(self.args.output_dir) / "checkpoint-3"
            partial.mkdir(parents=True, exist_ok=True)
            (partial / "model.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return super()._save_checkpoint(model, trial)


@pytest.mark.slow
def test_a_full_disk_during_a_save_leaves_the_previous_checkpoint_to_resume_from(tmp_path, tiny_dirs):
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left on device"):
        train(recipe_from_dict(_recipe(tiny_dirs["policy"])), run_dir=run, trainer_cls=DiskFullAtStep3)
    assert (run / "FAILED.txt").is_file()
    assert not (run / "checkpoints" / "checkpoint-3" / COMPLETE_MARKER).exists()
    newest = newest_complete_checkpoint(run)
    assert newest.name == "checkpoint-2"
    verify_checkpoint(newest)
    resume(run)  # space is back: continues from checkpoint-2 to the end
    assert json.loads((run / "run_info.json").read_text())["global_step"] == 4
    assert not (run / "FAILED.txt").exists()


class KillServerAfterStep2(TrainerCallback):
    def __init__(self, proc):
        self.proc = proc

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.slow
def test_a_reward_server_that_dies_fails_the_run_in_one_line_and_the_run_resumes_when_it_is_back(tmp_path,
                                                                                                 tiny_dirs):
    port = free_port()
    url = f"http://127.0.0.1:{port}/score"
    run = tmp_path / "run"
    proc = start_cli(port, "--reward", "arithmetic")
    try:
        class Trainer(PRMGRPOTrainer):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self.add_callback(KillServerAfterStep2(proc))

        with pytest.raises(RewardError) as e:
            train(recipe_from_dict(_recipe(tiny_dirs["policy"], name="remote",
                                           args={"url": url, "retries": 2, "backoff": 0.01})),
                  run_dir=run, trainer_cls=Trainer)
        assert str(e.value) == (f"remote reward {url}: connection failed (ConnectionRefusedError) "
                                "(server down or unreachable? 3 attempts)")
        assert (run / "FAILED.txt").read_text().strip().endswith("3 attempts)")
        newest = newest_complete_checkpoint(run)
        assert newest.name == "checkpoint-2" and not (run / "policy").exists()
        verify_checkpoint(newest)
        proc = start_cli(port, "--reward", "arithmetic")  # the server is back: the run continues from step 2
        resume(run)
        assert json.loads((run / "run_info.json").read_text())["global_step"] == 4
    finally:
        proc.kill()
        proc.wait(10)
