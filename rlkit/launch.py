"""From a validated recipe to a running trainer: run folder, DeepSpeed config, `accelerate launch`, workers.

``rlkit train`` calls :func:`train`. With ``distribution: none`` the trainer runs in this process; with
``zero2``/``zero3`` a DeepSpeed config is generated into the run folder and ``accelerate launch`` starts
``num_processes`` workers (``python -m rlkit.launch RUN_DIR``), each of which rebuilds the same trainer.

Example:
    >>> from rlkit.config import load_recipe
    >>> recipe = load_recipe("grpo_prm_quickstart", ["training.max_steps=2"])
    >>> run_dir = train(recipe)          # runs/grpo_prm_quickstart-<time>/ with policy/, report/, tensorboard/
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from rlkit.algorithms import get_algorithm
from rlkit.config import recipe_from_dict
from rlkit.distributed import RECIPE_FILE, MachineLaunch, cuda_available, launch_workers, write_run_files
from rlkit.recipe import Recipe, yaml_load


def new_run_dir(recipe: Recipe, output_dir: str | None = None) -> Path:
    """A fresh run folder ``<output_dir>/<name>-<UTC time>`` (created only after validation passed)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir or recipe.output_dir)
    run_dir = base / f"{recipe.name}-{stamp}"
    i = 1
    while run_dir.exists():
        i += 1
        run_dir = base / f"{recipe.name}-{stamp}-{i}"
    run_dir.mkdir(parents=True)
    return run_dir


def train(recipe: Recipe, output_dir: str | None = None, trainer_cls: type | None = None,
          run_dir: str | Path | None = None, machine: MachineLaunch | None = None) -> Path:
    """Run a recipe end to end; returns the run folder. Raises on failure (the folder keeps the logs).

    ``trainer_cls``: a subclass of the algorithm's trainer to use instead (in-process runs; for multi-process
    runs put the subclass in your own script and start it with ``accelerate launch``).
    ``run_dir``: use this folder (created if needed) instead of a new ``<output_dir>/<name>-<time>``; a
    multi-machine run needs it, the same shared path on every machine, with ``machine`` this machine's rank.
    """
    if recipe.machines.num_machines > 1 and run_dir is None:
        raise ValueError("a multi-machine run needs --run-dir: the same shared folder on every machine")
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = new_run_dir(recipe, output_dir)
    write_run_files(recipe, run_dir)
    # the PRM pipeline samples and labels in this process and starts workers for its training stage only
    if recipe.distribution == "none" or get_algorithm(recipe.algorithm.name).own_workers:
        try:
            run_worker(run_dir, trainer_cls)
        except BaseException as e:
            mark_failed(run_dir, f"{type(e).__name__}: {e}")
            raise
        return run_dir
    if trainer_cls is not None:
        raise ValueError("trainer_cls works in-process only; launch your own script with accelerate for "
                         "distributed runs")
    try:
        launch_workers(recipe, run_dir, machine)
    except RuntimeError as e:
        mark_failed(run_dir, str(e))
        raise
    return run_dir


def mark_failed(run_dir: Path, message: str) -> None:
    """Leave ``FAILED.txt`` in a run folder whose run did not finish, so its partial contents (checkpoints,
    logs) are never mistaken for a finished run's."""
    (Path(run_dir) / "FAILED.txt").write_text(message.strip() + "\n")


def run_worker(run_dir: Path, trainer_cls: type | None = None) -> None:
    """Build and run the trainer for ``run_dir/recipe.yaml`` (in-process, or as one accelerate worker)."""
    run_dir = Path(run_dir)
    recipe = recipe_from_dict(yaml_load((run_dir / RECIPE_FILE).read_text()), check=False)
    if recipe.distribution != "none" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # ZeRO-3 loads models inside deepspeed.zero.Init, which reads the world size from deepspeed.comm before
        # the Trainer would initialise it; without this every rank sees world size 1 and DeepSpeed's batch check
        # fails. (deepspeed is imported here: only distributed runs need it, and importing it logs and is slow.)
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if cuda_available() else "gloo")
    algorithm = get_algorithm(recipe.algorithm.name)
    if trainer_cls is not None and not algorithm.accepts_trainer_cls:
        raise ValueError(f"algorithm {algorithm.name!r} does not take a trainer class")
    kwargs = {"trainer_cls": trainer_cls} if trainer_cls is not None else {}
    algorithm.runner()(recipe, run_dir, **kwargs)


def remove_run_dir(run_dir: Path) -> None:
    """Delete a run folder that holds nothing but the files written before training started."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {RECIPE_FILE, "deepspeed.json"}:
        shutil.rmtree(run_dir)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m rlkit.launch RUN_DIR", file=sys.stderr)
        return 2
    run_worker(Path(args[0]))
    try:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except Exception:  # pragma: no cover - best effort clean exit
        pass
    return 0


if __name__ == "__main__":
    code = main()
    # A worker skips interpreter teardown: now and then a gloo/DeepSpeed C++ thread is still joinable when
    # Python finalises and the rank dies with SIGABRT ("terminate called without an active exception") after
    # all its work is saved, failing a finished run. Outputs are written and the process group is destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
