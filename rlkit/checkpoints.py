"""Runs that survive: complete-checkpoint markers, the newest complete checkpoint of a run, a clean stop on
SIGINT/SIGTERM, and a stop on non-finite losses.

transformers writes ``checkpoint-N/`` in place (model, optimizer, RNG states, ``trainer_state.json``) and
calls ``on_save`` once all of it is written. :class:`RunGuard` then writes ``rlkit_complete.json`` into the
folder (atomically, fsync'd, with every file's size): a checkpoint without it was cut off mid-save and is never
resumed from; one whose files no longer have the recorded sizes is reported as corrupt, naming the file.

Example:
    >>> trainer.add_callback(RunGuard(run_dir))          # every runner does this (rlkit.trainers.common)
    >>> newest_complete_checkpoint(run_dir)               # -> Path(".../checkpoints/checkpoint-40") or None
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from reward.labeling.io import atomic_write_text
from rlkit.distributed import is_main_process, wait_for_everyone

COMPLETE_MARKER = "rlkit_complete.json"
CHECKPOINTS_DIR = "checkpoints"
REPEAT_WINDOW_S = 1.0  # a signal this soon after the first is the same stop delivered again (RunGuard)
ONLINE_REWARD_DIR = "online_reward"  # in checkpoints and policy/: the model of a reward that learns online
RESUME_FILE = "resume.json"  # written by `rlkit train --resume`: the checkpoint the workers resume from


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the one-line message names the file."""


class TrainingStopped(RuntimeError):
    """Training stopped early on purpose (a signal, a non-finite loss); the message says why and how to go on."""


def checkpoint_step(path: str | Path) -> int:
    """The global step a checkpoint folder was saved at (from its ``trainer_state.json``)."""
    state = Path(path) / "trainer_state.json"
    try:
        return int(json.loads(state.read_text())["global_step"])
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{state}: unreadable trainer state ({e})") from None


def mark_complete(path: str | Path) -> None:
    """Write the completion marker of a fully written checkpoint folder (file sizes, step)."""
    path = Path(path)
    sizes = {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))
             if p.is_file() and p.name != COMPLETE_MARKER}
    atomic_write_text(path / COMPLETE_MARKER, json.dumps({"step": checkpoint_step(path), "files": sizes}, indent=1))


def verify_checkpoint(path: str | Path) -> None:
    """Raise CheckpointError naming the first file that is missing or changed size since the save."""
    path = Path(path)
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {COMPLETE_MARKER}: the save was cut off)")
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{marker}: unreadable ({e})") from None
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing from the checkpoint")
        if f.stat().st_size != size:
            raise CheckpointError(f"{f}: {f.stat().st_size} bytes, {size} when saved: the checkpoint is corrupt")


def newest_complete_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``checkpoints/checkpoint-N`` of a run that has its completion marker (None when none has)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    found = []
    for p in root.glob("checkpoint-*") if root.is_dir() else []:
        suffix = p.name.rpartition("-")[2]
        if suffix.isdigit() and (p / COMPLETE_MARKER).is_file():
            found.append((int(suffix), p))
    return max(found)[1] if found else None


class RunGuard(TrainerCallback):
    """Marks complete checkpoints; on SIGINT/SIGTERM saves a checkpoint at the end of the current step and
    stops (a second signal exits at once; repeats within ``REPEAT_WINDOW_S`` of the first count as the same
    one, since a scheduler that signals every process of a job also reaches the launcher, which passes the
    signal on); stops before saving when a logged loss is NaN/inf.

    After ``trainer.train()`` returns, :meth:`raise_if_stopped` raises :class:`TrainingStopped` with the one-line
    reason (the runner leaves FAILED.txt and the message says how to resume)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.signum = 0  # the signal this process received (0: none)
        self._first_signal_at = 0.0
        self.stop_reason: str | None = None
        self._previous: dict[int, Any] = {}

    # -- signals ------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self._first_signal_at = signum, now
            return
        if now - self._first_signal_at < REPEAT_WINDOW_S:
            return  # the same stop delivered again: a scheduler signals every process and the launcher passes it on
        previous = self._previous.get(signum, signal.SIG_DFL)  # a later signal: the usual behaviour, at once
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            os.kill(os.getpid(), signum)

    def on_train_begin(self, args, state, control, **kwargs):
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_reason is not None:
            return control
        # every rank must stop after the same step (the save and the next step are collective): the ranks agree
        # on whether any of them was signalled (a signal may reach one rank only, or reach them a step apart)
        signum = agree_on_signal(self.signum)
        if signum:
            where = "" if self.signum else " (on another rank)"
            self.stop_reason = (f"{signal.Signals(signum).name}{where} at step {state.global_step}: checkpoint "
                                f"saved; continue with `rlkit train --resume {self.run_dir}`")
            control.should_save = True
            control.should_training_stop = True
        return control

    # -- non-finite losses ----------------------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "value_loss", "grad_norm"):
            v = (logs or {}).get(key)
            if isinstance(v, (int, float)) and not math.isfinite(v):
                last = newest_complete_checkpoint(self.run_dir)
                raise TrainingStopped(f"step {state.global_step}: {key} is {v}; stopped before saving "
                                      f"(last good checkpoint: {last or 'none'})")
        return control

    # -- completion markers -----------------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        wait_for_everyone()  # every rank's shards are on disk
        if is_main_process():
            mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        wait_for_everyone()
        return control

    def raise_if_stopped(self) -> None:
        if self.stop_reason is not None:
            raise TrainingStopped(self.stop_reason)


def agree_on_signal(signum: int) -> int:
    """The largest signal number any rank has received (0: none); ``signum`` on a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return signum
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([signum], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread() and os.name == "posix"


def resume_checkpoint(run_dir: str | Path) -> str | None:
    """The checkpoint ``rlkit train --resume`` chose for this run folder (None for a fresh run)."""
    f = Path(run_dir) / RESUME_FILE
    return json.loads(f.read_text())["checkpoint"] if f.is_file() else None


def default_save_steps(max_steps: int) -> int:
    """Checkpoint interval when a recipe sets none: about 5 checkpoints a run (every step for runs of <= 5)."""
    return max(1, -(-max_steps // 5)) if max_steps and max_steps > 0 else 500
