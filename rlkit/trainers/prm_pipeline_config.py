"""The PRM pipeline's config and settings check (``algorithm.name: prm_pipeline``). Imports no trainer.

Example:
    >>> pipeline_settings({"mc_rollouts": 2})["mc_rollouts"], pipeline_settings({})["label_mode"]
    (2, 'hard')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from transformers import TrainingArguments

LABEL_MODES = ("hard", "soft")


STEP_SPLITS = ("newline", "double_newline")


class PipelineError(RuntimeError):
    """A pipeline setting is invalid or a stage left nothing to continue with (no responses, no labelled step);
    the one-line message reaches the user as ``rlkit: error: ...`` (exit 1, the run folder marked FAILED)."""


@dataclass
class PRMPipelineConfig(TrainingArguments):
    """The ``training:`` block of ``algorithm.name: prm_pipeline``: the PRM's ``TrainingArguments`` plus the
    sampling, labelling and evaluation settings below."""

    samples_per_problem: int = field(default=4, metadata={"help": "responses sampled per problem"})
    mc_rollouts: int = field(default=4, metadata={"help": "MC completions from each step prefix"})
    label_mode: str = field(default="hard", metadata={"help": "hard (any completion right) | soft (fraction)"})
    max_new_tokens: int = field(default=128, metadata={"help": "tokens per sampled response and MC completion"})
    sample_temperature: float = field(default=0.8)
    sample_batch_size: int = field(default=8, metadata={"help": "prompts per generate call; also responses "
                                                                    "per MC completer call and judge call"})
    step_split: str = field(default="newline", metadata={"help": "newline | double_newline"})
    max_response_steps: int = field(default=8, metadata={"help": "text after this many steps joins the last "
                                                                   "step (guards against one-token lines)"})
    judge_model: str | None = field(default=None, metadata={"help": "llm-judge model (default: the policy)"})
    judge_max_new_tokens: int = field(default=192)
    min_kept: int = field(default=16, metadata={"help": "fewer consensus-kept training responses -> MC labels"})
    heldout_fraction: float = field(default=0.25, metadata={"help": "share of problems held out for evaluation"})
    prm_max_length: int = field(default=1024)


PIPELINE_OWN_FIELDS = {f.name for f in dataclasses.fields(PRMPipelineConfig)} - \
    {f.name for f in dataclasses.fields(TrainingArguments)}


def pipeline_settings(training: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's own settings (defaults filled in), checked; raises PipelineError on a bad value."""
    cfg = {f.name: f.default for f in dataclasses.fields(PRMPipelineConfig) if f.name in PIPELINE_OWN_FIELDS}
    cfg.update({k: v for k, v in training.items() if k in PIPELINE_OWN_FIELDS})
    if cfg["label_mode"] not in LABEL_MODES:
        raise PipelineError(f"training.label_mode: unknown value {cfg['label_mode']!r} (allowed: hard, soft)")
    if cfg["step_split"] not in STEP_SPLITS:
        raise PipelineError(f"training.step_split: unknown value {cfg['step_split']!r} "
                            f"(allowed: {', '.join(STEP_SPLITS)})")
    for k in ("samples_per_problem", "mc_rollouts", "max_new_tokens", "sample_batch_size",
              "max_response_steps", "prm_max_length"):
        if int(cfg[k]) < 1:
            raise PipelineError(f"training.{k}: must be >= 1, got {cfg[k]}")
    if not 0.0 < float(cfg["heldout_fraction"]) < 1.0:
        raise PipelineError(f"training.heldout_fraction: must be in (0, 1), got {cfg['heldout_fraction']}")
    return cfg


def validate_pipeline_recipe(recipe) -> None:
    """Recipe check for ``algorithm: prm_pipeline`` (ValueError with one line)."""
    try:
        pipeline_settings(recipe.training)
    except PipelineError as e:
        raise ValueError(str(e)) from None
