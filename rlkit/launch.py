"""From a validated recipe to a running trainer: run folder, DeepSpeed config, `accelerate launch`, workers.

``rlkit train`` calls :func:`train`. With ``distribution: none`` the trainer runs in this process; with
``zero2``/``zero3`` a DeepSpeed config is generated into the run folder and ``accelerate launch`` starts
``num_processes`` workers (``python -m rlkit.launch RUN_DIR``), each of which rebuilds the same trainer.

Example:
    >>> from rlkit.config import load_recipe
    >>> recipe = load_recipe("recipes/grpo_prm_quickstart.yaml", ["training.max_steps=2"])
    >>> run_dir = train(recipe)          # runs/grpo_prm_quickstart-<time>/ with policy/, report/, tensorboard/
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from rlkit.config import Recipe, recipe_from_dict, yaml_load

RECIPE_FILE = "recipe.yaml"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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
    (run_dir / RECIPE_FILE).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    if recipe.distribution != "none":
        (run_dir / "deepspeed.json").write_text(json.dumps(deepspeed_config(recipe), indent=2))


def accelerate_command(recipe: Recipe, run_dir: Path) -> list[str]:
    """The ``accelerate launch`` command line that runs the workers of a distributed recipe."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(recipe.num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if recipe.distribution != "none":
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(run_dir / "deepspeed.json")]
    cmd += ["-m", "rlkit.launch", str(run_dir)]
    return cmd


def train(recipe: Recipe, output_dir: str | None = None, trainer_cls: type | None = None) -> Path:
    """Run a recipe end to end; returns the run folder. Raises on failure (the folder keeps the logs).

    ``trainer_cls``: a subclass of the algorithm's trainer to use instead (in-process runs; for multi-process
    runs put the subclass in your own script and start it with ``accelerate launch``).
    """
    run_dir = new_run_dir(recipe, output_dir)
    write_run_files(recipe, run_dir)
    # the PRM pipeline samples and labels in this process and starts workers for its training stage only
    if recipe.distribution == "none" or recipe.algorithm.name == "prm_pipeline":
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
        launch_workers(recipe, run_dir)
    except RuntimeError as e:
        mark_failed(run_dir, str(e))
        raise
    return run_dir


def launch_workers(recipe: Recipe, run_dir: Path) -> None:
    """Start ``recipe.num_processes`` workers on ``run_dir`` (which holds ``recipe.yaml`` and
    ``deepspeed.json``, see :func:`write_run_files`) through ``accelerate launch`` and wait for them.

    Raises RuntimeError when a worker fails (their errors are on this process's stderr). Used by
    :func:`train` and by runs with a distributed sub-run (the PRM pipeline's training stage)."""
    env = dict(os.environ)
    if not cuda_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "rlkit" / "torch_extensions"))
    proc = subprocess.run(accelerate_command(recipe, run_dir), env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"distributed run failed with exit code {proc.returncode} (the workers' errors are "
                           f"printed above); run folder {run_dir}")


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
        # fails.
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if cuda_available() else "gloo")
    algo = recipe.algorithm.name
    if algo == "grpo":
        from rlkit.trainers.recipe_grpo import run_grpo

        run_grpo(recipe, run_dir, trainer_cls)
    elif algo == "ppo":
        from rlkit.trainers.ppo import run_ppo

        run_ppo(recipe, run_dir, **({"trainer_cls": trainer_cls} if trainer_cls else {}))
    elif algo == "prm":
        from rlkit.trainers.prm import train_prm

        train_prm(recipe, run_dir)
    elif algo == "orm":
        from rlkit.trainers.orm import train_orm

        train_orm(recipe, run_dir)
    elif algo == "critique":
        from rlkit.trainers.critique import train_critique_verifier

        train_critique_verifier(recipe, run_dir)
    elif algo == "prm_pipeline":
        from rlkit.trainers.prm_pipeline import run_prm_pipeline

        run_prm_pipeline(recipe, run_dir)
    else:
        raise NotImplementedError(f"algorithm {algo!r} has no runner yet")


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
        import torch.distributed as dist

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
