"""Name -> reward model class. A recipe's ``reward: {name: ..., args: {...}}`` block resolves here.

Example:
    >>> from reward.registry import build_reward, available
    >>> "verifier" in available()
    True
    >>> rm = build_reward("verifier")
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from reward.base import StepRewardModel

_REGISTRY: dict[str, type[StepRewardModel]] = {}
# Built-in models live in reward/models/<module>.py; they are imported on first lookup so that
# `import reward` stays light.
_BUILTIN_MODULES = ("arithmetic", "verifier", "qwen_prm", "shepherd", "orm", "judge", "remote", "composite",
                    "implicit_prm")


def register(name: str) -> Callable[[type[StepRewardModel]], type[StepRewardModel]]:
    """Class decorator: make a StepRewardModel available to recipes under ``name``."""

    def deco(cls: type[StepRewardModel]) -> type[StepRewardModel]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"reward name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(f"reward.models.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"reward.models.{mod}":
                raise


def available() -> list[str]:
    """Sorted names of every registered reward model."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_reward_class(name: str) -> type[StepRewardModel]:
    _load_builtins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward {name!r} (registered: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def check_reward_args(name: str, args: dict[str, Any]) -> list[str]:
    """Problems with ``args`` for reward ``name`` (unknown argument names), without building the model."""
    cls = get_reward_class(name)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    allowed = [p for p in params if p != "self"]
    return [f"unknown argument {k!r} for reward {name!r} (allowed: {', '.join(allowed)})"
            for k in args if k not in allowed]


def build_reward(name: str, **args: Any) -> StepRewardModel:
    """Instantiate the reward model registered as ``name`` with ``args``."""
    problems = check_reward_args(name, args)
    if problems:
        raise ValueError(problems[0])
    return get_reward_class(name)(**args)
