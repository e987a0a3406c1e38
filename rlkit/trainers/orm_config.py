"""The listwise outcome RM trainer's config (``algorithm.name: orm``). Imports no trainer.

Example:
    >>> ListwiseRMConfig(output_dir="out", score_head="linear", use_cpu=True).score_head
    'linear'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

# ----------------------------------------------------------------------------------------------- model
SCORE_HEAD_CHOICES = ("auto", "mlp2", "linear")


# ----------------------------------------------------------------------------------------------- trainer
@dataclass
class ListwiseRMConfig(TrainingArguments):
    """``TrainingArguments`` plus the listwise RM's own fields (the recipe's ``training:`` block for
    ``algorithm.name: orm``).

    ``max_length``: longest input per response (cut from the left, like the ``orm`` reward).
    ``eval_batch_groups``: problems per forward pass in :func:`ranking_metrics`.
    ``score_head``: "mlp2" (``Linear(h, h) -> ReLU -> Linear(h, 1)``), "linear" (the architecture's
    ``Linear(h, 1)``) or "auto" (an existing ORM's own head, else mlp2); see :func:`orm_from_causal_lm`.
    """

    max_length: int = field(default=2048, metadata={"help": "longest ORM input (tokens), cut from the left"})
    eval_batch_groups: int = field(default=8, metadata={"help": "problems per batch when measuring ranking"})
    score_head: str = field(default="auto", metadata={"help": "auto | mlp2 | linear: the scalar head"})

    def __post_init__(self) -> None:
        if self.score_head not in SCORE_HEAD_CHOICES:
            raise ValueError(f"training.score_head: unknown value {self.score_head!r} "
                             f"(allowed: {', '.join(SCORE_HEAD_CHOICES)})")
        super().__post_init__()
