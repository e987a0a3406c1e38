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

import copy
import datetime as _dt
import json
import os
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from reward.labeling.io import atomic_write_text
from rlkit.algorithms import get_algorithm
from rlkit.checkpoints import RESUME_FILE, TrainingStopped, newest_complete_checkpoint, verify_checkpoint
from rlkit.config import load_recipe, recipe_from_dict
from rlkit.distributed import (
    RECIPE_FILE,
    STOPPED_PREFIX,
    MachineLaunch,
    cuda_available,
    is_main_process,
    launch_workers,
    write_run_files,
)
from rlkit.recipe import Recipe, RecipeError, apply_overrides, yaml_load
from rlkit.recipe_glue import search_trained_policy


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
    else:
        if trainer_cls is not None:
            raise ValueError("trainer_cls works in-process only; launch your own script with accelerate for "
                             "distributed runs")
        try:
            launch_workers(recipe, run_dir, machine)
        except RuntimeError as e:
            mark_failed(run_dir, str(e))
            raise
    if recipe.search is not None and (machine is None or machine.machine_rank == 0):
        try:  # here, once every worker has ended: no rank waits for it, no trainer holds memory
            search_trained_policy(recipe, run_dir)
        except BaseException as e:
            mark_failed(run_dir, f"search: {type(e).__name__}: {e}")
            if not isinstance(e, Exception):  # Ctrl-C, SIGTERM: as they are
                raise
            raise RuntimeError(f"search: {str(e).splitlines()[0] if str(e) else type(e).__name__} (the trained "
                               f"policy is in {run_dir / 'policy'}; `rlkit train --resume {run_dir}` runs the "
                               f"search again)") from e
    return run_dir


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def resume(run_dir: str | Path, recipe_path: str | None = None, overrides: list[str] | None = None,
           allow_changes: bool = False, machine: MachineLaunch | None = None) -> Path:
    """Continue a run in its own folder from its newest complete checkpoint (``rlkit train --resume``).

    The recipe is the run's saved ``recipe.yaml``; a different ``recipe_path`` or any ``overrides`` are refused
    unless ``allow_changes``. Metrics and TensorBoard continue in the same folder (the Trainer restores its log
    history from the checkpoint). A run that finished is left as it is; a run with no complete checkpoint starts
    over in the same folder. Raises RecipeError / CheckpointError with one line."""
    run_dir = Path(run_dir)
    saved_file = run_dir / RECIPE_FILE
    if not saved_file.is_file():
        raise RecipeError(f"--resume {run_dir}: not a run folder (no {RECIPE_FILE})")
    saved = yaml_load(saved_file.read_text())
    if recipe_path is not None:
        wanted = load_recipe(recipe_path, overrides).to_dict()
    else:
        wanted = apply_overrides(copy.deepcopy(saved), list(overrides or []))
    changed = sorted(k for k in set(_flat(saved)) | set(_flat(wanted)) if _flat(saved).get(k) != _flat(wanted).get(k))
    if changed and not allow_changes:
        raise RecipeError(f"--resume {run_dir}: the recipe differs from the run's {RECIPE_FILE} in "
                          f"{', '.join(changed[:6])}; resume without changes, or pass --allow-changes")
    recipe = recipe_from_dict(wanted)
    if run_finished(run_dir):
        print(f"rlkit: {run_dir} finished already; nothing to resume")
        return run_dir
    ckpt = newest_complete_checkpoint(run_dir)
    if get_algorithm(recipe.algorithm.name).runs_stages:
        print(f"rlkit: resuming the chained run {run_dir} at its first unfinished stage")
    elif ckpt is not None:
        verify_checkpoint(ckpt)
        atomic_write_text(run_dir / RESUME_FILE, json.dumps({"checkpoint": str(ckpt)}))
        print(f"rlkit: resuming {run_dir} from {ckpt.name}")
    else:
        (run_dir / RESUME_FILE).unlink(missing_ok=True)
        print(f"rlkit: {run_dir} has no complete checkpoint; starting it over in the same folder")
    (run_dir / "FAILED.txt").unlink(missing_ok=True)
    return train(recipe, run_dir=run_dir, machine=machine)


def run_finished(run_dir: str | Path) -> bool:
    """Whether a run folder holds a finished run (``run_info.json`` and ``policy/``, no ``FAILED.txt``)."""
    run_dir = Path(run_dir)
    return (run_dir / "run_info.json").is_file() and (run_dir / "policy").is_dir() and \
        not (run_dir / "FAILED.txt").exists()


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
    try:
        run_worker(Path(args[0]))
    except TrainingStopped as e:
        # a clean stop (signal) on every rank after the same step: rank 0 leaves the reason for `rlkit train`,
        # which prints it in one line; no rank prints a traceback, and the launcher sees a clean exit
        if is_main_process():
            mark_failed(Path(args[0]), f"{STOPPED_PREFIX}{e}")
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
