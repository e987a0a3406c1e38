"""SFT's config (``algorithm.name: sft``): TRL's ``SFTConfig`` (loss on the completion only for the
prompt-completion rows rlkit builds), the recipe defaults, and how many tokens the held-out evaluation lets
the policy write. Imports no trainer.

Example:
    >>> SFT_DEFAULTS["learning_rate"], SFTConfig.__name__
    (5e-05, 'SFTConfig')
"""

from __future__ import annotations

from trl import SFTConfig

__all__ = ["SFTConfig", "SFT_DEFAULTS", "SFT_EVAL_MAX_NEW_TOKENS"]

SFT_DEFAULTS = dict(learning_rate=5e-5, lr_scheduler_type="cosine", max_steps=60,
                    per_device_train_batch_size=8, max_length=512, completion_only_loss=True)
SFT_EVAL_MAX_NEW_TOKENS = 128  # held-out greedy answers before/after SFT (the RL recipes' max_completion_length)
