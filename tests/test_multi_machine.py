"""Runs over several machines, tried on one box: two `rlkit train` machine processes on 127.0.0.1 (1 worker
each, gloo on CPU, DeepSpeed's standard multi-node launcher) under ZeRO-2 and ZeRO-3 give the losses of the
same recipe on 1 machine x 2 processes, and save the policy once into the shared run folder; the per-machine
commands print without running anything; bad machine settings fail in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.config import RecipeError, load_recipe
from rlkit.testing import train_ok

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "rlkit" / "recipes" / "ppo_prm_quickstart.yaml"
COMMON = ["training.max_completion_length=8", "data.num_train=8", "data.num_eval=0", "training.learning_rate=1e-3",
          "training.critic_learning_rate=1e-3", "training.per_device_train_batch_size=2", "training.max_steps=2",
          "training.kl_coef=0.05"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run: Path) -> dict[str, list[float]]:
    hist = json.loads((run / "metrics.json").read_text())
    return {k: [h[k] for h in hist if k in h] for k in ("loss", "value_loss")}


def _two_machines(tmp_path: Path, policy: str, stage: int) -> Path:
    run_dir = tmp_path / f"shared-zero{stage}"
    sets = [f"model={policy}", *COMMON, f"distribution=zero{stage}", "num_processes=1",
            "machines.num_machines=2", "machines.main_process_ip=127.0.0.1",
            f"machines.main_process_port={_free_port()}"]
    env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MASTER_ADDR", None), env.pop("MASTER_PORT", None)
    procs = []
    for rank in (1, 0):
        cmd = [sys.executable, "-m", "rlkit.cli", "train", str(RECIPE), "--run-dir", str(run_dir),
               "--machine-rank", str(rank)] + [a for s in sets for a in ("--set", s)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=420)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    return run_dir


@pytest.mark.slow
def test_two_machines_match_one_machine_with_two_processes(tmp_path, tiny_dirs):
    one = train_ok(RECIPE, tmp_path / "one", f"model={tiny_dirs['policy']}", *COMMON, "distribution=zero2",
                   "num_processes=2", cwd=REPO, OMP_NUM_THREADS="1")
    base = _losses(one)
    assert len(base["loss"]) == 2
    for stage in (2, 3):
        run = _two_machines(tmp_path, tiny_dirs["policy"], stage)
        info = json.loads((run / "run_info.json").read_text())
        assert info["world_size"] == 2 and info["deepspeed"] is True
        got = _losses(run)
        for key in ("loss", "value_loss"):
            assert got[key] == pytest.approx(base[key], abs=1e-4), (stage, key, got, base)
        # saved once: one policy (+ critic) folder, no per-machine copies
        assert (run / "policy" / "config.json").is_file() and (run / "policy" / "critic" / "config.json").is_file()
        assert sorted(p.name for p in run.iterdir() if p.name.startswith("policy")) == ["policy"]


def test_print_launch_shows_every_machines_command(tmp_path):
    res = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", "ppo_qwen_math_prm_8gpu", "--print-launch",
                          "--run-dir", str(tmp_path / "shared"), "--set", "machines.num_machines=2",
                          "--set", "machines.main_process_ip=127.0.0.1"],
                         capture_output=True, text=True, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert [ln.startswith("# machine ") for ln in lines] == [True, False, True, False]
    for rank, cmd in ((0, lines[1]), (1, lines[3])):
        assert f"--machine-rank {rank}" in lines[2 * rank]
        assert "--num_processes 16 --num_machines 2" in cmd and f"--machine_rank {rank}" in cmd
        assert "--main_process_ip 127.0.0.1" in cmd and "--deepspeed_multinode_launcher standard" in cmd
    assert not (tmp_path / "shared").exists()  # nothing was run or created


def test_bad_machine_settings_fail_in_one_line():
    with pytest.raises(RecipeError, match="machines.num_machines: 2 machines need distribution: zero2 or zero3"):
        load_recipe("grpo_prm_quickstart", ["machines.num_machines=2"])
    with pytest.raises(RecipeError, match="machines.main_process_port: not a port number"):
        load_recipe("ppo_qwen_math_prm_8gpu", ["machines.main_process_port=70000"])
    res = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", "ppo_qwen_math_prm_8gpu", "--set",
                          "machines.num_machines=2", "--machine-rank", "0"], capture_output=True, text=True, cwd=REPO,
                         env={k: v for k, v in os.environ.items() if k != "MASTER_ADDR"})
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith(
        "rlkit: error: machines.main_process_ip: a multi-machine run needs"), res.stderr
