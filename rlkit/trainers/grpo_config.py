"""GRPO's config (``algorithm.name: grpo``): TRL's ``GRPOConfig`` as is (credit, aggregation and shaping come
from the recipe's ``algorithm:`` block, not the trainer config), and the recipe defaults rlkit fills in.

Example:
    >>> GRPO_DEFAULTS["num_generations"], GRPOConfig.__name__
    (4, 'GRPOConfig')
"""

from __future__ import annotations

from trl import GRPOConfig

__all__ = ["GRPOConfig", "GRPO_DEFAULTS"]

GRPO_DEFAULTS = dict(num_generations=4, per_device_train_batch_size=4, max_completion_length=128,
                     learning_rate=1e-5, max_steps=20, temperature=1.0, beta=0.0)
