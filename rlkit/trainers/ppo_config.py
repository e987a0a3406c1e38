"""PPO's config (``algorithm.name: ppo``): TRL's GRPOConfig plus GAE, critic and KL-penalty fields, and the
recipe defaults. Imports no trainer.

Example:
    >>> args = PRMPPOConfig(output_dir="out", kl_coef=0.05, gamma=1.0, lam=0.95, use_cpu=True)
    >>> args.beta == args.kl_coef          # TRL builds its reference model when beta > 0
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig


@dataclass
class PRMPPOConfig(GRPOConfig):
    """TRL's GRPOConfig plus the PPO fields. Fields of GRPOConfig keep their meaning; PPO-relevant ones:
    ``epsilon``/``epsilon_high`` (policy clip range), ``num_iterations`` (PPO epochs over a rollout),
    ``steps_per_generation`` (mini-batches per rollout), ``temperature``, ``max_completion_length``,
    ``loss_type`` (how the clipped policy loss is averaged over tokens). ``beta`` mirrors ``kl_coef``
    (TRL builds its reference model when it is > 0); PPO never adds a KL term to the loss.
    """

    gamma: float = field(default=1.0, metadata={"help": "Discount factor of GAE."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE (0: one-step TD, 1: Monte Carlo)."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss in the total loss."})
    cliprange_value: float = field(
        default=0.2, metadata={"help": "Clip range of the value prediction around the rollout's old value."})
    kl_coef: float = field(
        default=0.05, metadata={"help": "Per-token KL penalty in the reward: r_t -= kl_coef * (logp - ref_logp). "
                                        "0 = no reference model."})
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Whiten GAE advantages over the whole batch (all ranks)."})
    critic_model: str | None = field(
        default=None, metadata={"help": "HF folder/hub id of the critic (loaded as a 1-label token classifier; "
                                        "must share the policy's tokenizer). None = initialise from the policy."})
    critic_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the critic (None = learning_rate)."})
    bootstrap_truncated: bool = field(
        default=False, metadata={"help": "Bootstrap GAE with the critic's value after the last token of a "
                                         "response cut off by max_completion_length (default: treat as terminal)."})
    num_generations: int | None = field(
        default=2, metadata={"help": "Completions per prompt (TRL needs >= 2; PPO itself does not use groups)."})

    def __post_init__(self):
        if self.beta not in (0.0, self.kl_coef):
            raise ValueError(f"PRMPPOConfig: beta={self.beta} is TRL's KL-in-the-loss coefficient, which PPO does "
                             f"not use; set kl_coef (the KL penalty in the reward) instead")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PRMPPOConfig: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.kl_coef < 0 or self.vf_coef < 0 or self.cliprange_value <= 0:
            raise ValueError("PRMPPOConfig: kl_coef and vf_coef must be >= 0 and cliprange_value > 0")
        self.beta = self.kl_coef
        super().__post_init__()


# ----------------------------------------------------------------------------------------------- critic


PPO_DEFAULTS = dict(num_generations=2, per_device_train_batch_size=4, max_completion_length=128,
                    learning_rate=1e-6, max_steps=20, temperature=1.0)
