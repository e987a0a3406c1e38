"""Recipe -> the pieces every trainer needs: datasets, the step reward model, shared trainer-config fields."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from rlkit.config import Recipe


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


def optimizer_block(recipe: Recipe) -> dict[str, Any] | None:
    """The recipe's ``optimizer:`` block in the one shape ``rlkit.optim.build_optimizer`` takes:
    ``{"name": "ondare", "p": ..., "alpha": ..., "base_model": ...}`` (the ``args`` mapping flattened, ``embedded:``
    base models resolved to their folder), or None for plain AdamW without arguments (the Trainer's own AdamW).
    Every algorithm's runner gets its optimizer from here.

    Example:
        >>> from rlkit.config import recipe_from_dict
        >>> optimizer_block(recipe_from_dict({"optimizer": {"name": "ondare", "args": {"p": 0.1, "alpha": 0}}}))
        {'name': 'ondare', 'p': 0.1, 'alpha': 0}
    """
    opt = recipe.optimizer
    if opt.name == "adamw" and not opt.args:
        return None
    block = {"name": opt.name, **opt.args}
    base = block.get("base_model")
    if isinstance(base, str) and base.startswith("embedded:"):
        from rlkit.models import resolve_model

        block["base_model"] = str(resolve_model(base))
    return block


def trainer_args(recipe: Recipe, run_dir: Path, defaults: dict[str, Any],
                 deepspeed_file: str | Path | None = None) -> dict[str, Any]:
    """Keyword arguments for a TRL/transformers config: rlkit's defaults < the recipe's ``training:`` block <
    the fields rlkit manages (output folder, DeepSpeed, CPU, seed, vLLM).

    ``deepspeed_file``: the DeepSpeed config of a distributed recipe (default ``run_dir/deepspeed.json``,
    written by rlkit.launch; a sub-run such as the critique verifier's stage 2 passes its parent's file)."""
    from rlkit.launch import cuda_available

    # always this run's folder: an earlier run in the same process must not capture its logs
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    kw = {"report_to": ["tensorboard"], "logging_steps": 1, "save_strategy": "no", "bf16": False,
          "gradient_checkpointing": False}
    kw.update(defaults)
    kw.update(recipe.training)
    cuda = cuda_available()
    kw.update(output_dir=str(run_dir / "checkpoints"), seed=recipe.seed, use_cpu=not cuda)
    if not cuda:
        kw["bf16"] = False
    if recipe.distribution != "none":
        kw["deepspeed"] = str(deepspeed_file or run_dir / "deepspeed.json")
    return kw


@contextlib.contextmanager
def single_rank_hf():
    """Switch transformers' ZeRO-3 awareness off for models that live on one rank only (reward models,
    evaluation copies). Otherwise ``from_pretrained`` builds them inside ``deepspeed.zero.Init`` (sharded into
    (0,)-shaped placeholders no engine gathers) and ``generate`` syncs every decoding step across ranks
    (``synced_gpus``), collectives the other ranks never join, so the run hangs. transformers keeps the active
    config in a module-level weak reference; this clears it for the block and restores it after."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def is_main_process() -> bool:
    """True on global rank 0, or when no process group is running (a plain single-process run)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def wait_for_everyone() -> None:
    """Barrier across all ranks when a process group is running; nothing otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def load_backbone_tokenizer(name: str, tokenizer: Any = None) -> tuple[str, Any]:
    """(local path or hub id, tokenizer) for a model to build a classifier or SFT model from.

    ``embedded:...`` names resolve through rlkit.models. The tokenizer is ``tokenizer`` when given, else the
    model's own; it gets the eos token as pad token when it has none (batches are padded).
    """
    from transformers import AutoTokenizer

    path = name
    if isinstance(name, str) and name.startswith("embedded:"):
        from rlkit.models import resolve_model

        path = str(resolve_model(name))
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
    import json
    import math

    from reward.labeling.io import atomic_write_text

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


def evaluate_on_one_rank(model_path, trainer, eval_ds, label: str) -> dict:
    """Held-out evaluation of a saved policy by this rank alone (see :func:`single_rank_hf`)."""
    from rlkit import report

    with single_rank_hf():
        return report.evaluate_policy(str(model_path), trainer.processing_class, eval_ds, trainer.step_reward,
                                      max_new_tokens=trainer.args.max_completion_length, label=label)


def build_step_reward(recipe: Recipe):
    """The recipe's reward model, as a plain replicated module on this rank's device.

    Loaded outside ZeRO-3's ``zero.Init`` (:func:`single_rank_hf`): the reward model is replicated, not
    sharded, and no engine manages it. On multi-GPU runs each rank's reward model goes to its own GPU
    (``cuda:LOCAL_RANK``) unless the recipe sets ``device``.
    """
    import inspect

    from reward.registry import build_reward, get_reward_class
    from rlkit.launch import cuda_available

    args = dict(recipe.reward.args)
    params = inspect.signature(get_reward_class(recipe.reward.name).__init__).parameters
    if "device" in params and "device" not in args and cuda_available():
        args["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    with single_rank_hf():
        return build_reward(recipe.reward.name, **args)


def load_datasets(recipe: Recipe):
    """(train, eval or None) datasets of chat prompts with an ``answer`` column."""
    from rlkit.data import load_prompts

    d = recipe.data
    common = dict(prompt_field=d.prompt_field, answer_field=d.answer_field, system_prompt=d.system_prompt,
                  seed=d.seed)
    train = load_prompts(d.train, d.train_split, d.num_train, **common)
    eval_src = d.eval or (d.train if d.train.startswith("builtin:") else None)
    evald = load_prompts(eval_src, d.eval_split, d.num_eval, **common) if eval_src and d.num_eval else None
    return train, evald


def run_info(trainer) -> dict:
    """What actually ran: the optimizer class DeepSpeed/accelerate step (wrappers unwrapped), world size..."""
    opt = trainer.optimizer
    while hasattr(opt, "optimizer") and opt.optimizer is not opt:
        opt = opt.optimizer
    policy_opt = getattr(opt, "actor", opt)  # PPO's ActorCriticOptimizer: the policy's own optimizer
    return {"optimizer": type(opt).__name__, "policy_optimizer": type(policy_opt).__name__,
            "optimizer_steps": optimizer_steps(policy_opt), "world_size": trainer.accelerator.num_processes,
            "deepspeed": trainer.is_deepspeed_enabled, "trainer": type(trainer).__name__,
            "use_vllm": bool(getattr(trainer.args, "use_vllm", False)), "global_step": trainer.state.global_step}


def optimizer_steps(opt) -> int | None:
    """How many steps ``opt`` has taken, read from its state (AdamW-style ``step`` entries), None if unknown."""
    import torch

    steps = [v["step"] for v in opt.state.values() if isinstance(v, dict) and "step" in v]
    if not steps:
        return None if not hasattr(opt, "state") else 0
    s = steps[0]
    return int(s.item() if isinstance(s, torch.Tensor) else s)


def write_run_info(trainer, run_dir: Path) -> None:
    """``run_dir/run_info.json`` (rank 0): what really ran, see :func:`run_info`."""
    import json

    if trainer.is_world_process_zero():
        from reward.labeling.io import atomic_write_text

        atomic_write_text(Path(run_dir) / "run_info.json", json.dumps(run_info(trainer), indent=1))


def train_and_report(trainer, recipe: Recipe, run_dir: Path) -> None:
    """The RL run every recipe runner shares: held-out evaluation before, train (resuming from
    ``training.resume_from_checkpoint`` when set), save ``policy/``, evaluate after, write the report,
    ``metrics.json`` and ``run_info.json`` (main process only)."""
    import json

    from rlkit import report
    from rlkit.models import resolve_model

    _, eval_ds = load_datasets(recipe)
    is_main = trainer.accelerator.is_main_process
    before = None
    if is_main and eval_ds is not None:
        # evaluation loads its own copy (a sharded ZeRO-3 model cannot generate on one rank alone)
        before = evaluate_on_one_rank(resolve_model(recipe.model), trainer, eval_ds, "before training")
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint or None)
    policy_dir = run_dir / "policy"
    trainer.save_model(str(policy_dir))
    if is_main:
        trainer.processing_class.save_pretrained(str(policy_dir))
        after = None
        if eval_ds is not None:
            after = evaluate_on_one_rank(policy_dir, trainer, eval_ds, "after training")
        report.write_report(run_dir, recipe, trainer.state.log_history, before, after)
        (run_dir / "metrics.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        write_run_info(trainer, run_dir)
    trainer.accelerator.wait_for_everyone()
