"""The PRM trainer's config (``algorithm.name: prm``): ``TrainingArguments`` + input length and label kind.
Imports no trainer, so recipe validation can read its fields.

Example:
    >>> PRMTrainConfig(output_dir="out", max_length=512, use_cpu=True).max_length
    512
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class PRMTrainConfig(TrainingArguments):
    """The ``training:`` block of ``algorithm.name: prm``: ``TrainingArguments`` plus the PRM's input length and
    label kind.

    Example (recipe)::

        algorithm: {name: prm}
        training: {max_length: 1024, soft_labels: true, num_train_epochs: 2, learning_rate: 2.0e-5}
    """

    max_length: int = field(default=2048, metadata={"help": "tokens per PRM input; steps whose separator falls "
                                                             "beyond are left out of the loss"})
    soft_labels: bool = field(default=False, metadata={"help": "train on the MC fraction as a target "
                                                               "distribution instead of hard 0/1 labels"})

    def __post_init__(self):
        check_max_length(self.max_length)
        super().__post_init__()


def check_max_length(value: int, key: str = "training.max_length") -> None:
    """ValueError unless ``value`` >= 1 (a negative length would silently cut tokens off the end instead)."""
    if int(value) < 1:
        raise ValueError(f"{key}: must be >= 1, got {value}")


def validate_prm_recipe(recipe) -> None:
    """Recipe check for ``algorithm: prm`` (ValueError with one line)."""
    if "max_length" in recipe.training:
        check_max_length(recipe.training["max_length"])
