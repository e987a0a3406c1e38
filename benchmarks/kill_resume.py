"""Kill test: a tiny run with a checkpoint every step is killed with SIGKILL at random moments and resumed
with ``rlkit train --resume`` each time; at the end the final policy must equal an uninterrupted run's.

    python benchmarks/kill_resume.py --algo grpo --kills 20      # the issue's count (~5 min on 2 cores)
    python benchmarks/kill_resume.py --algo ppo --kills 20
    python benchmarks/kill_resume.py --algo grpo --kills 20 --online-prm   # + an implicit PRM learning online

Prints one line per kill (when it landed, the newest complete checkpoint then), then: resumes that failed,
checkpoints that did not verify, the final step count, and the largest parameter difference from the
uninterrupted run (CPU, same seed; equality to 1e-5 is expected: the checkpoints hold the RNG states and the
data position), and how far training moved the policy from its start (it must move: the reward is a tiny
random outcome RM, so samples get different rewards). Exit code 1 when any of these is off.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlkit import testing
from rlkit.checkpoints import CheckpointError, newest_complete_checkpoint, verify_checkpoint

REPO = Path(__file__).resolve().parents[1]


def recipe_text(algo: str, policy: str, steps: int, reward_model: str | None = None,
                online_prm: str | None = None) -> str:
    """The tiny kill-test recipe. ``reward_model``: a tiny outcome RM folder, so that rewards differ between
    samples and GRPO's advantages are not all zero (with the rule-based checker a random policy scores 0
    everywhere and its weights never move, which would make "equal to the uninterrupted run" trivially true).
    ``online_prm``: instead, a tiny causal LM as an implicit PRM that learns from every rollout
    (``reward_update: before_scoring``), so its weights and optimizer state must survive the kills too."""
    extra = "kl_coef: 0.05, critic_learning_rate: 1.0e-3, " if algo == "ppo" else ""
    reward = f"{{name: orm, args: {{model: {reward_model}}}}}" if reward_model else "{name: arithmetic}"
    update = ""
    if online_prm:
        reward = f"{{name: implicit-prm, args: {{model: {online_prm}, beta: 0.5, lr: 0.05, optimizer: sgd}}}}"
        update = ", reward_update: before_scoring"
    return (f"name: kill_{algo}\nmodel: {policy}\ndata: {{train: 'builtin:arithmetic', num_train: 32, num_eval: 0}}\n"
            f"algorithm: {{name: {algo}{update}}}\nreward: {reward}\n"
            f"training: {{max_steps: {steps}, num_generations: 2, per_device_train_batch_size: 2, "
            f"max_completion_length: 8, learning_rate: 1.0e-3, {extra}report_to: [], logging_steps: 1, "
            f"save_steps: 1, save_total_limit: 2}}\n")


def env() -> dict[str, str]:
    return dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlkit.cli", "train", *args]


def weights(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run / "policy").rglob("*.safetensors")):
        out.update({f"{f.parent.name}/{k}": v for k, v in load_file(str(f)).items()})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", choices=("grpo", "ppo"), default="grpo")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--online-prm", action="store_true", help="reward: an implicit PRM learning from every rollout "
                    "(its weights are compared too)")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="rlkit-kill-"))
    tok = testing.tiny_tokenizer()
    policy = testing.save_tiny(testing.tiny_causal_lm(tok), tok, work / "policy0")
    orm = testing.save_tiny(testing.tiny_sequence_classifier(tok), tok, work / "orm0")
    recipe = work / "recipe.yaml"
    prm = testing.save_tiny(testing.tiny_causal_lm(tok, seed=5), tok, work / "prm0") if a.online_prm else None
    recipe.write_text(recipe_text(a.algo, policy, a.steps, reward_model=orm, online_prm=prm))
    ref, run = work / "reference", work / "killed"
    t0 = time.perf_counter()
    subprocess.run(cli(str(recipe), "--run-dir", str(ref)), env=env(), cwd=REPO, check=True, capture_output=True)
    full_time = time.perf_counter() - t0
    kills = failed_resumes = broken = 0
    first = True
    while kills < a.kills:
        # a kill before the run folder had its recipe.yaml leaves nothing to resume: start it again
        fresh = first or not (run / "recipe.yaml").is_file()
        args = cli(str(recipe), "--run-dir", str(run)) if fresh else cli("--resume", str(run))
        log = work / "attempt.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(args, env=env(), cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True)
        first = False
        delay = rng.uniform(0.3 * full_time, 1.0 * full_time)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            newest = newest_complete_checkpoint(run)
            try:
                if newest is not None:
                    verify_checkpoint(newest)
            except CheckpointError as e:
                broken += 1
                print(f"kill {kills}: BROKEN {e}")
            print(f"kill {kills:2d} after {delay:5.1f} s: newest complete checkpoint {newest.name if newest else None}")
            continue
        if proc.returncode != 0:
            failed_resumes += 1
            tail = log.read_text().strip().splitlines()[-1:]
            print(f"run/resume failed (exit {proc.returncode}): {tail}")
        if (run / "run_info.json").is_file():  # finished before the kill: start a fresh kill round from scratch
            subprocess.run(["rm", "-rf", str(run)], check=True)
            first = True
    fresh = first or not (run / "recipe.yaml").is_file()
    final = subprocess.run(cli(str(recipe), "--run-dir", str(run)) if fresh else cli("--resume", str(run)),
                           env=env(), cwd=REPO, capture_output=True, text=True)
    if final.returncode != 0:
        failed_resumes += 1
        print("final resume failed:", final.stderr[-2000:])
        return 1
    step = json.loads((run / "run_info.json").read_text())["global_step"]
    a_w, b_w = weights(ref), weights(run)
    diff = max((a_w[k] - b_w[k]).abs().max().item() for k in a_w) if a_w.keys() == b_w.keys() else float("inf")
    start = {f"policy/{k}": v for f in sorted(Path(policy).glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    moved = max(((a_w[k] - start[k]).abs().max().item() for k in a_w if k in start), default=0.0)
    prm_note, prm_moved = "", 1.0
    if prm:
        prm_start = {f"online_reward/{k}": v for k, v in load_file(str(Path(prm) / "model.safetensors")).items()}
        prm_moved = max(((a_w[k] - prm_start[k]).abs().max().item() for k in a_w if k in prm_start), default=0.0)
        prm_note = f", the online PRM by {prm_moved:.2e}"
    print(f"{a.algo}: kills {kills}, failed resumes {failed_resumes}, broken checkpoints {broken}, final step "
          f"{step} (want {a.steps}), max |param diff| vs uninterrupted {diff:.2e} (training moved the policy by "
          f"{moved:.2e}{prm_note})")
    ok = failed_resumes == 0 and broken == 0 and step == a.steps and diff <= 1e-5 and moved > 1e-4 \
        and prm_moved > 1e-4
    print("kill test:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
