"""The config of a chained run (``algorithm.name: chain``): it has no trainer settings of its own; each stage's
recipe carries them (the recipe's ``stages:``, :class:`rlkit.recipe.StageConfig`). Imports no trainer.

Example (YAML)::

    algorithm: {name: chain}
    stages:
      - {name: sft, recipe: sft_embedded}
      - {name: grpo, recipe: grpo_prm_quickstart}     # starts from the sft stage's policy/
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ChainConfig:
    """``training:`` of a chained run: empty (set a stage's training values in its ``set:``)."""
