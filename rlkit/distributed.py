"""Processes and devices: the DeepSpeed config of a ``zero2``/``zero3`` recipe, the ``accelerate launch``
command that starts its workers, and the rank helpers the runners share (no trainer imports here).

Example:
    >>> from rlkit.config import load_recipe
    >>> r = load_recipe("grpo_prm_quickstart", ["distribution=zero3"])
    >>> deepspeed_config(r)["zero_optimization"]["stage"]
    3
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.distributed as dist
import yaml
from transformers.integrations import deepspeed as hf_ds

from reward.labeling.io import atomic_write_text
from rlkit.recipe import Recipe

RECIPE_FILE = "recipe.yaml"


def cuda_available() -> bool:
    return torch.cuda.is_available()


def deepspeed_config(recipe: Recipe) -> dict[str, Any]:
    """The DeepSpeed config for ``zero2``/``zero3``; "auto" values are filled by transformers from the trainer
    config. It has no "optimizer" block on purpose: that would replace rlkit's optimizer (OnDARE/OnTIES)."""
    stage = {"zero2": 2, "zero3": 3}[recipe.distribution]
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True})
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
    }
    if cuda_available():
        cfg["bf16"] = {"enabled": "auto"}
    return cfg


def write_run_files(recipe: Recipe, run_dir: Path) -> None:
    """``recipe.yaml`` (+ ``deepspeed.json``) in the run folder, each written atomically: on a shared folder
    every machine of a multi-machine run writes the same files, and none may read a half-written one."""
    atomic_write_text(run_dir / RECIPE_FILE, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    if recipe.distribution != "none":
        atomic_write_text(run_dir / "deepspeed.json", json.dumps(deepspeed_config(recipe), indent=2))


@dataclass
class MachineLaunch:
    """Where this machine stands in a multi-machine run (see ``rlkit.recipe.MachinesConfig``)."""

    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 29500


def machine_launch(recipe: Recipe, machine_rank: int | None = None, main_process_ip: str | None = None,
                   main_process_port: int | None = None) -> MachineLaunch:
    """This machine's launch settings: arguments first, then the environment the usual launchers set
    (``MACHINE_RANK``/``NODE_RANK``/``SLURM_NODEID``, ``MASTER_ADDR``, ``MASTER_PORT``), then the recipe.
    Raises ValueError (one line) for a rank out of range or a missing rank-0 address."""
    m = recipe.machines
    if machine_rank is None:
        env = next((os.environ[k] for k in ("MACHINE_RANK", "NODE_RANK", "SLURM_NODEID") if k in os.environ), "0")
        machine_rank = int(env)
    ip = main_process_ip or os.environ.get("MASTER_ADDR") or m.main_process_ip
    port = int(main_process_port or os.environ.get("MASTER_PORT") or m.main_process_port)
    if not 0 <= machine_rank < m.num_machines:
        raise ValueError(f"machine rank {machine_rank} is outside 0..{m.num_machines - 1} (machines.num_machines)")
    if m.num_machines > 1 and not ip:
        raise ValueError("machines.main_process_ip: a multi-machine run needs the rank-0 machine's address "
                         "(recipe, --main-process-ip or MASTER_ADDR)")
    return MachineLaunch(machine_rank, ip, port)


def accelerate_command(recipe: Recipe, run_dir: Path, machine: MachineLaunch | None = None) -> list[str]:
    """The ``accelerate launch`` command line that runs this machine's workers of a distributed recipe
    (``num_processes`` per machine; with ``machines.num_machines > 1`` the multi-node flags and DeepSpeed's
    standard launcher, which runs torchrun on every machine instead of pdsh/ssh from one)."""
    n_machines = recipe.machines.num_machines
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--num_processes", str(recipe.num_processes * n_machines), "--num_machines", str(n_machines),
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    if n_machines > 1:
        machine = machine or machine_launch(recipe)
        cmd += ["--machine_rank", str(machine.machine_rank), "--main_process_ip", str(machine.main_process_ip),
                "--main_process_port", str(machine.main_process_port)]
    if recipe.distribution != "none":
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(run_dir / "deepspeed.json")]
        if n_machines > 1:
            cmd += ["--deepspeed_multinode_launcher", "standard"]
    cmd += ["-m", "rlkit.launch", str(run_dir)]
    return cmd


def launch_workers(recipe: Recipe, run_dir: Path, machine: MachineLaunch | None = None) -> None:
    """Start ``recipe.num_processes`` workers on ``run_dir`` (which holds ``recipe.yaml`` and
    ``deepspeed.json``, see :func:`write_run_files`) through ``accelerate launch`` and wait for them.

    Raises RuntimeError when a worker fails (their errors are on this process's stderr), or with the one-line
    reason when the workers stopped cleanly after a signal (rank 0 leaves it in FAILED.txt). Used by
    :func:`train` and by runs with a distributed sub-run (the PRM pipeline's training stage)."""
    env = dict(os.environ)
    if not cuda_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "rlkit" / "torch_extensions"))
    failed = Path(run_dir) / "FAILED.txt"
    failed.unlink(missing_ok=True)  # what the workers leave there below is this launch's, not an older one's
    # its own session: a Ctrl-C in the terminal reaches this process only, which passes it on exactly once
    proc = subprocess.Popen(accelerate_command(recipe, run_dir, machine), env=env, start_new_session=True)
    code = wait_passing_signals(proc)
    text = failed.read_text().strip() if failed.is_file() else ""
    # the workers stopped cleanly (a signal) and rank 0 wrote why, after the checkpoint; the launcher's own exit
    # code is then 143 when the signal reached it too (a scheduler signals every process of the job)
    if text.startswith(STOPPED_PREFIX):
        raise RuntimeError(text[len(STOPPED_PREFIX):])
    if code != 0:
        raise RuntimeError(f"distributed run failed with exit code {code} (the workers' errors are "
                           f"printed above); run folder {run_dir}")


STOPPED_PREFIX = "TrainingStopped: "  # FAILED.txt of workers that stopped cleanly (rlkit.checkpoints.TrainingStopped)


def wait_passing_signals(launcher: subprocess.Popen) -> int:
    """Wait for the launcher; a SIGINT/SIGTERM this process gets goes to every worker under it (not to the
    launcher, which would pass it on again and, when its grace period ends, kill workers that are still saving).
    The workers save a checkpoint and stop after the same step (:class:`rlkit.checkpoints.RunGuard`); a second
    signal makes them exit at once. Returns the launcher's exit code."""
    def pass_on(signum, frame) -> None:
        try:
            workers = psutil.Process(launcher.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.send_signal(signum)

    if threading.current_thread() is not threading.main_thread():
        return launcher.wait()
    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def single_rank_hf():
    """Switch transformers' ZeRO-3 awareness off for models that live on one rank only (reward models,
    evaluation copies). Otherwise ``from_pretrained`` builds them inside ``deepspeed.zero.Init`` (sharded into
    (0,)-shaped placeholders no engine gathers) and ``generate`` syncs every decoding step across ranks
    (``synced_gpus``), collectives the other ranks never join, so the run hangs. transformers keeps the active
    config in a module-level weak reference; this clears it for the block and restores it after."""
    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def is_main_process() -> bool:
    """True on global rank 0, or when no process group is running (a plain single-process run)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def online_reward_engine(module: torch.nn.Module, optimizer: torch.optim.Optimizer, policy_config: dict[str, Any],
                         bf16_auto: bool = False) -> Any:
    """A DeepSpeed engine of its own for an online-trained reward model (``reward.base.EngineTrainable``),
    with the policy's ZeRO stage and precision: ZeRO-2 partitions its optimizer state and gradients over the
    ranks, ZeRO-3 its weights too. One micro-batch per step, no gradient accumulation, no clipping and no
    scheduler (the reward's own update rule is a plain optimizer step). ``policy_config`` is the policy's
    DeepSpeed config as the Trainer resolved it; its "auto" leftovers are dropped, and a bf16 "auto" becomes
    ``bf16_auto`` (the trainer's ``bf16``)."""
    import deepspeed  # here: only distributed runs need it, and importing it is slow

    bf16 = (policy_config.get("bf16") or {}).get("enabled", False)
    bf16 = bf16_auto if bf16 == "auto" else bool(bf16)
    zero = {k: v for k, v in policy_config.get("zero_optimization", {}).items() if v != "auto"}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
        "train_batch_size": dist.get_world_size() if dist.is_initialized() else 1,
        "gradient_clipping": 0.0, "zero_optimization": zero, "zero_allow_untested_optimizer": True,
        "steps_per_print": 2 ** 31 - 1, "bf16": {"enabled": bool(bf16)},
    }
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config, dist_init_required=False)
    return engine


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the ``.grad`` of ``params`` over every rank in place (one all-reduce of the flattened gradients;
    a missing gradient counts as zero). Nothing happens without a process group or on one rank. Every rank must
    call it with the same parameters (a replicated module, such as an online-trained reward model)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def wait_for_everyone() -> None:
    """Barrier across all ranks when a process group is running; nothing otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
