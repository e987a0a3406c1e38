"""PPO's critic (value model): how it is built from the policy, and how it rides on the policy as the
submodule ``rlkit_critic`` so one Trainer / DeepSpeed engine shards, steps, checkpoints and resumes both.

Example:
    >>> critic = build_critic(policy)                 # a 1-label token classifier with the policy's backbone
    >>> policy.add_module(CRITIC_ATTR, critic)
    >>> with critic_detached(policy) as c:            # code inside sees the policy alone (saving, vLLM sync)
    ...     policy.save_pretrained("out/policy")
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForTokenClassification
from trl.trainer.utils import disable_dropout_in_model

CRITIC_ATTR = "rlkit_critic"


CRITIC_DIR = "critic"


def build_critic(source: Any, seed: int = 0, dtype: torch.dtype | None = None):
    """A value model: ``AutoModelForTokenClassification`` with one output per token, no dropout.

    ``source``: an HF folder / hub id (the backbone is loaded from it, the 1-output head is new unless the folder
    is a saved critic), or an in-memory causal LM whose backbone weights are copied.
    """
    torch.manual_seed(seed)  # the new head's initialisation
    if isinstance(source, (str, Path)):
        cfg = AutoConfig.from_pretrained(str(source), num_labels=1)
        cfg.classifier_dropout = 0.0
        kw = {"dtype": dtype} if dtype is not None else {}
        critic = AutoModelForTokenClassification.from_pretrained(str(source), config=cfg, **kw)
    else:
        policy = source.get_base_model() if hasattr(source, "get_base_model") else source
        cfg = copy.deepcopy(policy.config)
        cfg.num_labels = 1
        cfg.classifier_dropout = 0.0
        critic = AutoModelForTokenClassification.from_config(cfg)
        critic.base_model.load_state_dict(_plain_backbone_state(policy.base_model, critic.base_model))
        critic.to(dtype=next(policy.parameters()).dtype, device=next(policy.parameters()).device)
    disable_dropout_in_model(critic)
    return critic


def _plain_backbone_state(backbone, target) -> dict[str, torch.Tensor]:
    """``backbone``'s weights under ``target``'s (plain) parameter names. A PEFT-wrapped backbone gives its base
    weights (``q_proj.base_layer.weight`` -> ``q_proj.weight``; ``modules_to_save``: the original module); adapter
    weights are left out, so the critic of a LoRA policy starts from the base model."""
    wanted = set(target.state_dict())
    out = {}
    for k, v in backbone.state_dict().items():
        plain = k.replace(".base_layer.", ".").replace(".original_module.", ".")
        if plain in wanted and (plain == k or plain not in out):
            out[plain] = v
    return out


def critic_holder(model):
    """The module that holds the critic as its ``rlkit_critic`` child: the policy, or the model under a PEFT
    wrapper."""
    if CRITIC_ATTR not in model._modules and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


@contextlib.contextmanager
def critic_detached(model):
    """Take the critic off ``model`` for the block (yields it): what runs inside sees the policy alone."""
    holder = critic_holder(model)
    critic = holder._modules.pop(CRITIC_ATTR)
    try:
        yield critic
    finally:
        holder.add_module(CRITIC_ATTR, critic)


def has_path(model) -> bool:
    return bool(policy_path(model))


def policy_path(model) -> str | None:
    """The folder/hub id the policy was loaded from, if any."""
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "_name_or_path", "") or getattr(cfg, "name_or_path", "")
    return name or None


# ----------------------------------------------------------------------------------------------- recipe runner
