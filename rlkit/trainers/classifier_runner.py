"""The one runner the classifier trainers share (the PRM and the listwise outcome RM): seed, build, evaluate
before on rank 0, train, save ``final/`` atomically, evaluate the saved folder on rank 0, write
``<kind>_summary.json`` and ``run_info.json``. Each trainer module supplies a :class:`ClassifierRun`.

Example (what ``train_prm`` does)::

    def build(run_dir: Path) -> ClassifierRun:
        ...  # data, model, trainer
        return ClassifierRun("prm", trainer, tok, train_stats, before=lambda: ..., after=lambda final: ...)

    summary = train_classifier(recipe, run_dir, build)

Distributed (ZeRO-2/3, every rank runs it): the model is loaded whole on each rank by ``build`` (outside
ZeRO-3's ``zero.Init``), evaluation runs on rank 0 alone, and rank 0 writes the summaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from transformers import set_seed

from rlkit.checkpoints import RunGuard
from rlkit.distributed import is_main_process
from rlkit.recipe import Recipe
from rlkit.trainers.common import save_final, write_run_info, write_summary


@dataclass
class ClassifierRun:
    """A built classifier-training run.

    ``before()``: held-out metrics of the in-memory model before training (called on rank 0 only; None = no
    held-out data); ``after(final_dir)``: the same metrics of the saved folder. ``summary`` holds extra summary
    fields (e.g. the held-out data's stats)."""

    kind: str
    trainer: Any
    tokenizer: Any
    train_stats: dict[str, Any]
    before: Callable[[], dict | None] = lambda: None
    after: Callable[[Path], dict | None] = lambda final: None
    summary: dict[str, Any] = field(default_factory=dict)


def train_classifier(recipe: Recipe, run_dir: str | Path, build: Callable[[Path], ClassifierRun]) -> dict[str, Any]:
    """Run ``build(run_dir)``'s trainer from ``recipe`` into ``run_dir``; returns the summary (every rank; the
    evaluation fields are None on ranks other than 0)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(recipe.seed)
    run = build(run_dir)
    trainer, main = run.trainer, is_main_process()
    guard = RunGuard(run_dir)
    trainer.add_callback(guard)
    before = run.before() if main else None
    result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint or None)
    guard.raise_if_stopped()
    final = save_final(trainer, run.tokenizer, run_dir)
    after = run.after(final) if main else None
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"model_dir": str(final), "train": run.train_stats, **run.summary, "train_loss": result.training_loss,
               "first_logged_loss": losses[0] if losses else None,
               "last_logged_loss": losses[-1] if losses else None, "losses": losses,
               "eval_before": before, "eval_after": after, "global_step": trainer.state.global_step,
               "world_size": trainer.accelerator.num_processes, "deepspeed": trainer.is_deepspeed_enabled}
    write_summary(run_dir / f"{run.kind}_summary.json", summary)
    write_run_info(trainer, run_dir)
    trainer.accelerator.wait_for_everyone()
    return summary
