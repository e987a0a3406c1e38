"""Runs that survive: checkpoints on by default and marked complete, `rlkit train --resume RUN_DIR` continues
in the same folder (and leaves a finished run alone instead of training past max_steps), a different recipe
is refused, a corrupt checkpoint is named, a non-finite loss stops the run in one line with the last good
checkpoint intact, SIGTERM saves and stops, and the kill test (SIGKILL at random moments) ends on the same
weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rlkit.checkpoints import COMPLETE_MARKER, CheckpointError, newest_complete_checkpoint, verify_checkpoint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from kill_resume import cli, env, main as kill_main, recipe_text  # noqa: E402


@pytest.fixture()
def grpo_recipe(tmp_path, tiny_dirs):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text("grpo", tiny_dirs["policy"], 4))
    return path


def _run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), env=env(), cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.slow
def test_resume_in_place_of_a_finished_or_cut_run_and_refused_changes(grpo_recipe, tmp_path):
    run = tmp_path / "run"
    assert _run(str(grpo_recipe), "--run-dir", str(run)).returncode == 0
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-3", "checkpoint-4"]  # default: every step for 4 steps, newest 2 kept
    assert all((run / "checkpoints" / c / COMPLETE_MARKER).is_file() for c in ckpts)
    res = _run("--resume", str(run))
    assert res.returncode == 0 and "finished already" in res.stdout
    # a run cut after its last checkpoint (policy/ not written yet) finishes from it without an extra step
    (run / "run_info.json").unlink()
    res = _run("--resume", str(run))
    assert res.returncode == 0 and "from checkpoint-4" in res.stdout, res.stderr[-2000:]
    assert json.loads((run / "run_info.json").read_text())["global_step"] == 4
    assert not (run / "checkpoints" / "checkpoint-5").exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["run"]  # no second run folder
    res = _run("--resume", str(run), "--set", "training.max_steps=6")
    assert res.returncode == 2 and "differs from the run's recipe.yaml in training.max_steps" in res.stderr
    # a corrupt checkpoint is named
    (run / "run_info.json").unlink()
    weights = run / "checkpoints" / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    res = _run("--resume", str(run))
    assert res.returncode == 1 and "model.safetensors: 100 bytes" in res.stderr.strip().splitlines()[-1]


def test_incomplete_checkpoints_are_never_chosen(tmp_path):
    ck = tmp_path / "checkpoints"
    for step, complete in ((2, True), (3, False)):
        d = ck / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (d / "model.safetensors").write_bytes(b"x" * 10)
        if complete:
            from rlkit.checkpoints import mark_complete

            mark_complete(d)
    assert newest_complete_checkpoint(tmp_path) == ck / "checkpoint-2"
    verify_checkpoint(ck / "checkpoint-2")
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        verify_checkpoint(ck / "checkpoint-3")


@pytest.mark.slow
def test_non_finite_loss_stops_in_one_line_with_the_last_checkpoint_intact(tmp_path, tiny_dirs):
    from rlkit.config import recipe_from_dict
    from rlkit.launch import train
    from rlkit.trainers.grpo_trainer import PRMGRPOTrainer

    class NanAtStep3(PRMGRPOTrainer):
        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            return loss * float("nan") if self.state.global_step == 2 else loss

    data = json.loads(json.dumps(nan_recipe(tiny_dirs["policy"])))
    with pytest.raises(RuntimeError, match=r"step 3: (loss|grad_norm) is nan; stopped before saving \(last good checkpoint: .*checkpoint-2\)"):
        train(recipe_from_dict(data), run_dir=tmp_path / "run", trainer_cls=NanAtStep3)
    assert (tmp_path / "run" / "FAILED.txt").is_file()
    assert newest_complete_checkpoint(tmp_path / "run").name == "checkpoint-2"
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint-3").exists()


def nan_recipe(policy: str) -> dict:
    return {"name": "nan", "model": policy, "data": {"train": "builtin:arithmetic", "num_train": 16, "num_eval": 0},
            "algorithm": {"name": "grpo"}, "training": {"max_steps": 4, "num_generations": 2,
                                                        "per_device_train_batch_size": 2, "max_completion_length": 8,
                                                        "report_to": [], "save_steps": 1}}


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, tiny_dirs):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text("grpo", tiny_dirs["policy"], 400).replace("save_steps: 1", "save_steps: 1000"))
    run = tmp_path / "run"
    code, err = _start_and_signal([str(path), "--run-dir", str(run)], tmp_path / "out.log", "parent", signal.SIGTERM)
    assert code == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlkit: error: SIGTERM at step ") and f"rlkit train --resume {run}" in last, last
    ckpt = newest_complete_checkpoint(run)
    assert ckpt is not None and 0 < int(ckpt.name.split("-")[1]) < 400  # saved where it stopped, not at 1000


def test_repeats_of_a_signal_within_a_second_count_once_a_later_one_exits_at_once(tmp_path, monkeypatch):
    import rlkit.checkpoints as ck

    calls = []
    clock = [100.0]
    monkeypatch.setattr(ck.time, "monotonic", lambda: clock[0])
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    guard = ck.RunGuard(tmp_path)
    try:
        guard.on_train_begin(None, None, None)
        for _ in range(3):  # directly, from rlkit, from the launcher: within the window, one stop
            os.kill(os.getpid(), signal.SIGTERM)
            clock[0] += 0.3
        assert guard.signum == signal.SIGTERM and calls == []
        clock[0] += 1.0
        os.kill(os.getpid(), signal.SIGTERM)  # a second stop, later: the handler that was there before runs
        assert calls == [signal.SIGTERM]
    finally:
        guard.on_train_end(None, None, None)
        signal.signal(signal.SIGTERM, previous)


def _start_and_signal(args: list[str], log: Path, target: str, sig: int) -> tuple[int, str]:
    """Start `rlkit train ARGS` in its own session (as a shell would; stdout to ``log``), wait until it has
    logged 3 training steps, send ``sig`` to ``target`` ("parent": the rlkit process, as Ctrl-C in its
    terminal; "rank1": rank 1's worker alone; "all": rlkit, the launcher and every worker at once, as a
    scheduler cancelling the job does) and return (exit code, stderr)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cli(*args), env=env(), cwd=REPO, stdout=out, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and log.read_text().count("'epoch'") < 3 and proc.poll() is None:
            time.sleep(0.2)
        if target == "parent":
            proc.send_signal(sig)
        elif target == "all":
            for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                p.send_signal(sig)
        else:
            workers = [w for w in psutil.Process(proc.pid).children(recursive=True)
                       if w.environ().get("LOCAL_RANK") == "1" and "rlkit.launch" in " ".join(w.cmdline())]
            assert len(workers) == 1, workers
            workers[0].send_signal(sig)
        try:
            _, err = proc.communicate(timeout=240)  # a rank left behind would hang in the next collective
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"the run did not stop within 240 s of {signal.Signals(sig).name} to {target}")
    return proc.returncode, err


@pytest.mark.slow
def test_a_signal_to_one_rank_to_all_or_to_rlkit_stops_every_rank_after_the_same_step_and_resumes(tmp_path,
                                                                                                   tiny_dirs):
    # ZeRO-2 on 2 processes, checkpoints only when stopped: the ranks must agree on the step that ends the run
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text("grpo", tiny_dirs["policy"], 150).replace("save_steps: 1", "save_steps: 1000")
                    + "distribution: zero2\n")
    run = tmp_path / "run"
    steps = []
    # then SIGTERM to every process at once (each worker gets it up to three times: directly, from rlkit and
    # from the launcher; repeats within a second count as one), then SIGINT to rlkit alone (Ctrl-C)
    for args, target, sig in (([str(path), "--run-dir", str(run)], "rank1", signal.SIGTERM),
                              (["--resume", str(run)], "all", signal.SIGTERM),
                              (["--resume", str(run)], "parent", signal.SIGINT)):
        code, err = _start_and_signal(args, tmp_path / "out.log", target, sig)
        last = err.strip().splitlines()[-1]
        name = {"rank1": "SIGTERM (on another rank)", "all": "SIGTERM", "parent": "SIGINT"}[target]
        assert code == 1 and last.startswith(f"rlkit: error: {name} at step "), err[-3000:]
        assert f"rlkit train --resume {run}" in last and "Traceback" not in err  # one line, no rank's traceback
        steps.append(int(last.split(" at step ")[1].split(":")[0]))
        ckpt = newest_complete_checkpoint(run)
        assert ckpt is not None and ckpt.name == f"checkpoint-{steps[-1]}"
        verify_checkpoint(ckpt)
    assert 0 < steps[0] < steps[1] < steps[2] < 150
    res = subprocess.run(cli("--resume", str(run)), env=env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "run_info.json").read_text())["global_step"] == 150


@pytest.mark.slow
@pytest.mark.parametrize("algo, kills, online", [("grpo", 2, False), ("ppo", 1, True)])
def test_kill_test_ends_on_the_uninterrupted_weights(algo, kills, online, tmp_path, capsys):
    # the suite runs a few kills; `python benchmarks/kill_resume.py --kills 20` is the count. The PPO
    # run's reward is an implicit PRM learning online: policy, critic and PRM must all survive the kills
    args = ["--algo", algo, "--kills", str(kills), "--steps", "4", "--workdir", str(tmp_path)]
    assert kill_main(args + (["--online-prm"] if online else [])) == 0
    out = capsys.readouterr().out
    if online:
        assert float(out.split("the online PRM by ")[1].split(")")[0]) > 1e-4
    assert "failed resumes 0, broken checkpoints 0, final step 4" in out and "max |param diff|" in out
    assert float(out.split("uninterrupted ")[1].split()[0]) <= 1e-5
    assert float(out.split("moved the policy by ")[1].split(")")[0].split(",")[0]) > 1e-4  # not trivially equal
    assert os.path.isdir(tmp_path / "killed" / "policy")
