"""What the trainers' runners share after the recipe glue (``rlkit.recipe_glue``): saving the final model
atomically, run summaries and ``run_info.json``, evaluation on one rank, and the RL runners' train-and-report.

Example:
    >>> trainer = build_grpo_trainer(recipe, run_dir)     # rlkit.trainers.grpo_runner
    >>> train_and_report(trainer, recipe, run_dir)        # evaluate, train, save policy/, report/, run_info.json
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, TrainerState

from reward.labeling.io import atomic_write_text
from reward.models.implicit_prm import ENGINE_TAG, ONLINE_STATE_FILE
from rlkit import report
from rlkit.checkpoints import COMPLETE_MARKER, ONLINE_REWARD_DIR, RunGuard, checkpoint_step
from rlkit.distributed import is_main_process, single_rank_hf
from rlkit.models import resolve_model
from rlkit.recipe import Recipe
from rlkit.recipe_glue import load_datasets


def fill_classifier_trainer_kwargs(args: tuple, kwargs: dict, collator_cls: type) -> None:
    """Shared by the PRM and listwise-RM trainers: default ``data_collator`` to ``collator_cls(pad id)`` (pad
    from the tokenizer, else the model config, else 0) and keep every dataset column (labels live in extra
    columns)."""
    if kwargs.get("data_collator") is None:
        tok = kwargs.get("processing_class")
        model = kwargs.get("model") if "model" in kwargs else (args[0] if args else None)
        pad = getattr(tok, "pad_token_id", None)
        if pad is None:
            pad = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
        kwargs["data_collator"] = collator_cls(pad)
    if kwargs.get("args") is not None:
        kwargs["args"].remove_unused_columns = False


def load_backbone_tokenizer(name: str, tokenizer: Any = None) -> tuple[str, Any]:
    """(local path or hub id, tokenizer) for a model to build a classifier or SFT model from.

    ``embedded:...`` names resolve through rlkit.models. The tokenizer is ``tokenizer`` when given, else the
    model's own; it gets the eos token as pad token when it has none (batches are padded).
    """
    path = resolve_model(name) if isinstance(name, str) else name
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return path, tok


def save_final(trainer: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Save the trained model and ``tokenizer`` to ``out_dir/final`` atomically; returns that folder.

    Every rank calls it (under ZeRO-3 ``save_model`` gathers the shards, so all ranks must join). The model
    goes to ``out_dir/.final.tmp`` first; rank 0 adds the tokenizer and renames the folder to ``final`` (an
    older ``final`` is replaced), so ``final`` is never half-written. All ranks wait until the rename is done:
    a rank that reads ``final`` next finds it complete.
    """
    out_dir = Path(out_dir)
    final, tmp = out_dir / "final", out_dir / ".final.tmp"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if main:
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    trainer.accelerator.wait_for_everyone()
    return final


def write_summary(path: str | Path, summary: dict[str, Any]) -> None:
    """Write a run summary as JSON atomically (temp file + rename; NaN written as null), on rank 0 only."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    if is_main_process():
        atomic_write_text(path, json.dumps(clean(summary), indent=2, default=str))


def one_rank_reward(trainer, model_path) -> Any:
    """The trainer's step reward for work on this rank alone (evaluation, search); one that is sharded over the
    ranks is replaced by its copy saved with the policy at ``model_path``."""
    pick = getattr(trainer, "reward_for_one_rank", None)
    return pick(model_path) if pick is not None else trainer.step_reward


def evaluate_on_one_rank(model_path, trainer, eval_ds, label: str) -> dict:
    """Held-out evaluation of a saved policy by this rank alone (see :func:`single_rank_hf`)."""
    step_reward = one_rank_reward(trainer, model_path)
    with single_rank_hf():
        return report.evaluate_policy(str(model_path), trainer.processing_class, eval_ds, step_reward,
                                      max_new_tokens=eval_max_new_tokens(trainer), label=label)


HELDOUT_EVAL_FILE = "heldout_eval.json"


def heldout_key(recipe: Recipe, max_new_tokens: int | None) -> dict:
    """What a held-out evaluation depends on (problems, prompt, token limit, step reward): a policy folder's
    saved evaluation is reused "before training" by a later run only when this key is equal."""
    d = recipe.data
    return {"eval": d.eval or d.train, "split": d.eval_split, "num_eval": d.num_eval, "fields": [d.prompt_field,
            d.answer_field], "system_prompt": d.system_prompt, "seed": recipe.seed, "data_seed": d.seed,
            "max_new_tokens": max_new_tokens, "reward": [recipe.reward.name, recipe.reward.args]}


def saved_evaluation(model_dir: str | Path, key: dict) -> dict | None:
    """The held-out evaluation saved in a policy folder by the run that trained it, when its key matches."""
    path = Path(model_dir) / HELDOUT_EVAL_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if json.loads(json.dumps(key, default=str)) != saved.get("key"):
        return None
    return saved.get("result")


def evaluate_before(model_path: str, trainer, eval_ds, recipe: Recipe) -> dict:
    """Held-out evaluation of the starting policy: the one its own run saved (an earlier stage's ``policy/``,
    same key) relabelled, else a fresh one."""
    key = heldout_key(recipe, eval_max_new_tokens(trainer))
    saved = saved_evaluation(model_path, key)
    if saved is not None:
        print(f"rlkit: held-out evaluation of {model_path} reused from its {HELDOUT_EVAL_FILE}")
        return {**saved, "label": "before training"}
    return evaluate_on_one_rank(model_path, trainer, eval_ds, "before training")


def eval_max_new_tokens(trainer) -> int | None:
    return getattr(trainer, "eval_max_new_tokens", None) or getattr(trainer.args, "max_completion_length", None)


def run_info(trainer) -> dict:
    """What actually ran: the optimizer class DeepSpeed/accelerate step (wrappers unwrapped), world size..."""
    opt = trainer.optimizer
    while opt is not None and hasattr(opt, "optimizer") and opt.optimizer is not opt:
        opt = opt.optimizer
    policy_opt = getattr(opt, "actor", opt)  # PPO's ActorCriticOptimizer: the policy's own optimizer
    credit = getattr(trainer, "credit", None)
    if callable(credit):
        credit = f"{credit.__module__}:{credit.__qualname__}"
    return {"optimizer": type(opt).__name__, "credit": credit, "policy_optimizer": type(policy_opt).__name__,
            "optimizer_steps": optimizer_steps(policy_opt), "world_size": trainer.accelerator.num_processes,
            "deepspeed": trainer.is_deepspeed_enabled, "trainer": type(trainer).__name__,
            "use_vllm": bool(getattr(trainer.args, "use_vllm", False)), "global_step": trainer.state.global_step}


def optimizer_steps(opt) -> int | None:
    """How many steps ``opt`` has taken, read from its state (AdamW-style ``step`` entries), None if unknown."""
    if not hasattr(opt, "state"):
        return None
    steps = [v["step"] for v in opt.state.values() if isinstance(v, dict) and "step" in v]
    if not steps:
        return 0
    s = steps[0]
    return int(s.item() if isinstance(s, torch.Tensor) else s)


def write_run_info(trainer, run_dir: Path) -> None:
    """``run_dir/run_info.json`` (rank 0): what really ran, see :func:`run_info`."""
    if trainer.is_world_process_zero():
        atomic_write_text(Path(run_dir) / "run_info.json", json.dumps(run_info(trainer), indent=1))


TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin",
                        "latest", "zero_to_fp32.py", "zero_to_torch.py", COMPLETE_MARKER,
                        ONLINE_STATE_FILE, ENGINE_TAG)  # the last two: an online reward's optimizer state


def policy_from_checkpoint(checkpoint: str | Path, policy_dir: Path) -> None:
    """``policy/`` from a checkpoint's model files (the same files ``save_model`` writes: weights or adapter,
    config, ``critic/``), leaving out optimizer, scheduler, RNG and DeepSpeed engine state; written to a temp
    folder and renamed, so ``policy/`` is never half-written."""
    src, tmp = Path(checkpoint), policy_dir.with_name(f".{policy_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=lambda d, names: [n for n in names if n in TRAINING_STATE_FILES
                                                       or n.startswith(("rng_state", "global_step"))])
    shutil.rmtree(policy_dir, ignore_errors=True)
    tmp.rename(policy_dir)


def train_and_report(trainer, recipe: Recipe, run_dir: Path) -> None:
    """The policy run every RL/SFT recipe runner shares: held-out evaluation before, train (resuming from
    ``training.resume_from_checkpoint`` when set), save ``policy/``, evaluate after, write the report,
    ``metrics.json`` and ``run_info.json`` (main process only). (A recipe's ``search:`` block runs after this,
    in the ``rlkit train`` process: :func:`rlkit.launch.train`.)

    A run resumed from a checkpoint that is already at ``max_steps`` trains no further (transformers would
    train one step past it): ``policy/`` comes from the checkpoint's model files. A signal or a non-finite loss
    stops training with :class:`rlkit.checkpoints.TrainingStopped` (see :class:`rlkit.checkpoints.RunGuard`)."""
    _, eval_ds = load_datasets(recipe)
    is_main = trainer.accelerator.is_main_process
    guard = RunGuard(run_dir)
    trainer.add_callback(guard)
    resume = trainer.args.resume_from_checkpoint or None
    finished = resume is not None and 0 < trainer.args.max_steps <= checkpoint_step(resume)
    before = None
    if is_main and eval_ds is not None:
        # evaluation loads its own copy (a sharded ZeRO-3 model cannot generate on one rank alone)
        before = evaluate_before(resolve_model(recipe.model), trainer, eval_ds, recipe)
    policy_dir = run_dir / "policy"
    if finished:
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
        if getattr(trainer, "reward_update", "none") != "none":  # the reward as it learned, for the evaluation
            with single_rank_hf():
                trainer.step_reward.load_online(Path(resume) / ONLINE_REWARD_DIR)
        if is_main:
            policy_from_checkpoint(resume, policy_dir)
    else:
        trainer.train(resume_from_checkpoint=resume)
        guard.raise_if_stopped()
        trainer.save_model(str(policy_dir))
    if is_main:
        trainer.processing_class.save_pretrained(str(policy_dir))
        after = None
        if eval_ds is not None:
            after = evaluate_on_one_rank(policy_dir, trainer, eval_ds, "after training")
            key = heldout_key(recipe, eval_max_new_tokens(trainer))
            atomic_write_text(policy_dir / HELDOUT_EVAL_FILE, json.dumps({"key": key, "result": after}, default=str))
        report.write_report(run_dir, recipe, trainer.state.log_history, before, after)
        atomic_write_text(run_dir / "metrics.json", json.dumps(trainer.state.log_history, indent=1))
        write_run_info(trainer, run_dir)
    trainer.accelerator.wait_for_everyone()
