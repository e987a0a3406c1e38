"""The two-stage critique verifier's config (``algorithm.name: critique``). Imports no trainer.

Example:
    >>> CritiqueVerifierConfig(output_dir="out", stage2="orm", use_cpu=True).stage2
    'orm'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transformers import TrainingArguments

FEEDBACK_SOURCES = ("template", "file", "judge")


# ----------------------------------------------------------------------------------------------- recipe entry
@dataclass
class CritiqueVerifierConfig(TrainingArguments):
    """The ``training:`` block of ``algorithm.name: critique``: stage 2's ``TrainingArguments`` fields plus
    the two-stage settings below (``sft_*`` configure stage 1's ``SFTConfig``)."""

    stage2: str = field(default="prm", metadata={"help": "prm | orm: what stage 2 trains the stage-1 model as"})
    feedback: str = field(default="template", metadata={"help": "template | file | judge"})
    feedback_file: str | None = field(default=None, metadata={"help": "records with critiques (feedback: file); "
                                                                      "default data.train"})
    judge_model: str | None = field(default=None, metadata={"help": "llm-judge model (feedback: judge)"})
    judge_backend: str = field(default="hf", metadata={"help": "hf | vllm for the llm-judge"})
    judge_max_new_tokens: int = field(default=512)
    stage2_data: str | None = field(default=None, metadata={"help": "stage-2 data (default data.train); for "
                                                                     "stage2: orm, grouped responses"})
    sft_num_train_epochs: float = field(default=1.0)
    sft_max_steps: int = field(default=-1)
    sft_learning_rate: float = field(default=1e-5)
    sft_per_device_train_batch_size: int = field(default=4)
    sft_gradient_accumulation_steps: int = field(default=1)
    sft_max_length: int = field(default=1024)
    stage2_max_length: int = field(default=2048)
    stage2_score_head: str = field(default="auto", metadata={"help": "stage2: orm: auto | mlp2 | linear"})


CRITIQUE_OWN_FIELDS = {f.name for f in dataclasses.fields(CritiqueVerifierConfig)} - \
    {f.name for f in dataclasses.fields(TrainingArguments)}
