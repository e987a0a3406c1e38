"""The algorithm registry: one :class:`Algorithm` per ``algorithm.name`` a recipe may use.

An algorithm is its trainer-config class (what ``training:`` may set; ``<algo>_config.py``, importing no
trainer), the runner ``rlkit train`` calls (``"module:function"``, imported only when a run starts, so
``rlkit check`` loads no trainer), and optional recipe checks. ``rlkit.config``, ``rlkit.launch`` and
``rlkit check`` ask this registry; adding an algorithm is one :func:`register` call::

    register(Algorithm("dpo", config_cls=MyDPOConfig, run="my_pkg.dpo_runner:run_dpo",
                       description="DPO on preference pairs"))

A runner is called as ``run(recipe, run_dir)`` (and ``trainer_cls=`` when ``accepts_trainer_cls``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from trl import GRPOConfig

from rlkit.trainers.chain_config import ChainConfig
from rlkit.trainers.critique_config import CritiqueVerifierConfig
from rlkit.trainers.orm_config import ListwiseRMConfig
from rlkit.trainers.ppo_config import PRMPPOConfig
from rlkit.trainers.prm_config import PRMTrainConfig, validate_prm_recipe
from rlkit.trainers.prm_pipeline_config import PRMPipelineConfig, validate_pipeline_recipe
from rlkit.trainers.sft_config import SFTConfig


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm.

    Attributes:
        name: the recipe's ``algorithm.name``.
        config_cls: the TRL/transformers config dataclass whose fields ``training:`` may set.
        run: ``"package.module:function"`` of the runner.
        description: one line for listings.
        uses_reward: the recipe's ``reward:`` block is this algorithm's step reward (checked by ``rlkit check``).
        supports_peft: a ``peft:`` block (LoRA policy) is allowed.
        accepts_trainer_cls: the runner takes ``trainer_cls=`` (a subclass of its trainer, in-process runs).
        online_reward: the reward may learn during the run from the rollouts' verifier labels
            (``algorithm.reward_update``, for rewards that are ``reward.base.OnlineTrainable``).
        own_workers: the runner stays in the ``rlkit train`` process and starts workers itself for the stages
            that need them (so ``distribution`` does not make ``rlkit train`` launch it on every worker).
        runs_stages: a chained run: the recipe's ``stages:`` are other recipes run one after the other
            (:func:`rlkit.config.stage_recipes`); implies ``own_workers``.
        validate: extra recipe checks; raises ValueError with one line.
    """

    name: str
    config_cls: type
    run: str
    description: str = ""
    uses_reward: bool = False
    supports_peft: bool = False
    accepts_trainer_cls: bool = False
    online_reward: bool = False
    own_workers: bool = False
    runs_stages: bool = False
    validate: Callable[[Any], None] | None = None

    def runner(self) -> Callable[..., Any]:
        """The runner function (imports its module)."""
        module, _, attr = self.run.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Add ``algorithm`` (its name must be new)."""
    if algorithm.name in _REGISTRY:
        raise ValueError(f"algorithm {algorithm.name!r} is registered already")
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def get_algorithm(name: str) -> Algorithm:
    """The registered algorithm ``name`` (KeyError naming the registered ones otherwise)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown algorithm {name!r} (registered: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def algorithm_names() -> tuple[str, ...]:
    """Registered names, in registration order."""
    return tuple(_REGISTRY)


register(Algorithm("grpo", GRPOConfig, "rlkit.trainers.grpo_runner:run_grpo",
                   "GRPO with PRM step scores as per-token credit", uses_reward=True, supports_peft=True,
                   accepts_trainer_cls=True, online_reward=True))
register(Algorithm("ppo", PRMPPOConfig, "rlkit.trainers.ppo_runner:run_ppo",
                   "PPO with a critic, GAE over PRM step-end rewards", uses_reward=True, supports_peft=True,
                   accepts_trainer_cls=True, online_reward=True))
register(Algorithm("sft", SFTConfig, "rlkit.trainers.sft_runner:run_sft",
                   "supervised fine-tuning on worked solutions (loss on the completion)", supports_peft=True,
                   accepts_trainer_cls=True))
register(Algorithm("prm", PRMTrainConfig, "rlkit.trainers.prm_trainer:train_prm",
                   "train a PRM (Qwen2.5-Math-PRM layout) on labelled steps", validate=validate_prm_recipe))
register(Algorithm("orm", ListwiseRMConfig, "rlkit.trainers.orm_trainer:train_orm",
                   "train a listwise outcome RM (Qwen2.5-Math RM)"))
register(Algorithm("critique", CritiqueVerifierConfig, "rlkit.trainers.critique:train_critique_verifier",
                   "two-stage critique verifier (Math-Minos)"))
register(Algorithm("prm_pipeline", PRMPipelineConfig, "rlkit.trainers.prm_pipeline:run_prm_pipeline",
                   "sample -> MC + judge labels -> consensus -> train and evaluate a PRM", own_workers=True,
                   validate=validate_pipeline_recipe))
register(Algorithm("chain", ChainConfig, "rlkit.trainers.chain_runner:run_chain",
                   "stages run one after the other (e.g. SFT -> PRM-guided GRPO from the SFT policy)",
                   own_workers=True, runs_stages=True))
