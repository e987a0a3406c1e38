"""Model shapes without weights: parameter counts read from a ``config.json``, for the memory plan.

A model name resolves to a transformers config, from (in this order):

1. a local HF folder (``transformers.AutoConfig``, never running the checkpoint's own code);
2. the embedded model's converted folder (``rlkit.models.resolve_model``) when it is converted already, else
   its row in :data:`KNOWN_CONFIGS` (so ``rlkit check`` never converts the GGUF);
3. :data:`KNOWN_CONFIGS`: the config fields of a few public checkpoints (Qwen2.5 0.5B/1.5B/7B, their Math
   and Instruct variants, Qwen2.5-Math-PRM-7B, SmolLM2-135M), written here as configs, not weights, since no
   hub is reachable from ``rlkit check``.

The model is then built by transformers on PyTorch's ``meta`` device (no memory, well under a second for 7B) and
its parameters counted: ``params`` (tied embeddings once), ``largest_layer`` (the most parameters one module
holds directly, which DeepSpeed's ZeRO-3 estimator gathers) and, with a ``peft:`` block, the LoRA adapter
parameters PEFT adds. An explicit count (``rlkit check --params NAME=COUNT``) replaces the count; with no
config it is the only thing known.

Example:
    >>> s = model_shape("Qwen/Qwen2.5-0.5B")
    >>> s.params, s.hidden, s.layers, s.source
    (494032768, 896, 24, 'known shape (Qwen2.5-0.5B config fields in rlkit/model_shapes.py)')
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    LlamaConfig,
    Qwen2Config,
)

from reward.models._hf import sequence_classifier_class
from rlkit.models import EMBEDDED_PREFIX, cache_dir, resolve_model

#: Model kinds :func:`model_shape` builds: a policy or reference (``causal-lm``), PPO's value model (``critic``:
#: token classifier with one output, as ``rlkit.trainers.ppo_critic.build_critic``), a PRM
#: (``token-classifier``: the config's labels, 2 by default), an outcome RM (``sequence-classifier``: the head
#: the config records) and the Qwen2.5-Math-PRM layout (``prm-mlp2``: backbone + Linear(h,h) -> ReLU ->
#: Linear(h,2), the parameter count of its remote-code ``Qwen2ForProcessRewardModel``).
KINDS = ("causal-lm", "critic", "token-classifier", "sequence-classifier", "prm-mlp2")


def _qwen25(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, tied: bool) -> dict[str, Any]:
    return dict(model_type="qwen2", hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied,
                dtype="bfloat16")


_Q05 = _qwen25(896, 4864, 24, 14, 2, 151936, True)
_Q15 = _qwen25(1536, 8960, 28, 12, 2, 151936, True)
_Q7 = _qwen25(3584, 18944, 28, 28, 4, 152064, False)
_SMOL = dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, dtype="bfloat16")

#: hub id -> (short label, config fields, kind the checkpoint is as a reward model or None). Fields as in the
#: public config.json files (Qwen2.5 configs set attention biases through model_type qwen2).
KNOWN_CONFIGS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    **{f"Qwen/Qwen2.5-{s}{v}": (f"Qwen2.5-{s}", c, None)
       for s, c in (("0.5B", _Q05), ("1.5B", _Q15), ("7B", _Q7)) for v in ("", "-Instruct")},
    **{f"Qwen/Qwen2.5-Math-{s}{v}": (f"Qwen2.5-Math-{s}", c, None)
       for s, c in (("1.5B", _Q15), ("7B", _Q7)) for v in ("", "-Instruct")},
    "Qwen/Qwen2.5-Math-PRM-7B": ("Qwen2.5-Math-PRM-7B", _Q7, "prm-mlp2"),
    "HuggingFaceTB/SmolLM2-135M": ("SmolLM2-135M", _SMOL, None),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("SmolLM2-135M", _SMOL, None),
    f"{EMBEDDED_PREFIX}smollm2-135m-instruct": ("SmolLM2-135M", _SMOL, None),
}
_CONFIG_CLASSES = {"qwen2": Qwen2Config, "llama": LlamaConfig}


class ShapeError(ValueError):
    """A model whose shape cannot be read; ``str(e)`` is one line."""


@dataclass(frozen=True)
class ModelShape:
    """Parameter counts of one model as one kind (see :data:`KINDS`).

    ``params``: all parameters (None: unknown). ``trainable``: those that train (LoRA: the adapters; else all).
    ``largest_layer``: the most parameters one module holds directly. ``hidden``/``layers``/``vocab``: the
    config's sizes (None with a count alone). ``source``: where the numbers come from, for the printed plan.
    """

    name: str
    kind: str
    params: int | None
    trainable: int | None
    largest_layer: int
    hidden: int | None
    layers: int | None
    vocab: int | None
    source: str
    config_dtype: str | None = None


def model_config(name: str) -> tuple[Any | None, str, str | None]:
    """(config or None, where it came from, the kind the checkpoint declares as a reward model or None)."""
    if name.startswith(EMBEDDED_PREFIX):
        converted = cache_dir() / "models" / name[len(EMBEDDED_PREFIX):] / "config.json"
        if converted.is_file():
            source = f"config.json of the converted embedded model ({converted.parent})"
            return _read_folder(resolve_model(name)), source, None
    elif (Path(name).expanduser() / "config.json").is_file():
        folder = str(Path(name).expanduser())
        cfg = _read_folder(folder)
        declared = "prm-mlp2" if any("ProcessRewardModel" in a for a in (cfg.architectures or [])) else None
        return cfg, f"config.json in {folder}", declared
    if name in KNOWN_CONFIGS:
        label, fields, declared = KNOWN_CONFIGS[name]
        fields = dict(fields)
        cfg = _CONFIG_CLASSES[fields.pop("model_type")](**fields)
        return cfg, f"known shape ({label} config fields in rlkit/model_shapes.py)", declared
    return None, "", None


def _read_folder(folder: str) -> Any:
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise ShapeError(f"cannot read the config of {folder}: {str(e).splitlines()[0]}") from None


def _build(config: Any, kind: str) -> torch.nn.Module:
    cfg = copy.deepcopy(config)
    with torch.device("meta"):
        if kind == "causal-lm":
            return AutoModelForCausalLM.from_config(cfg)
        if kind == "critic":
            cfg.num_labels = 1
            return AutoModelForTokenClassification.from_config(cfg)
        if kind == "token-classifier":
            return AutoModelForTokenClassification.from_config(cfg)
        if kind == "sequence-classifier":
            return sequence_classifier_class(cfg)(cfg)
        if kind == "prm-mlp2":
            cfg.num_labels = 2
            return sequence_classifier_class(cfg, "mlp2")(cfg)
    raise ValueError(f"unknown model kind {kind!r} (allowed: {', '.join(KINDS)})")


def count_parameters(model: torch.nn.Module) -> tuple[int, int, int]:
    """(all parameters, trainable ones, the most one module holds directly) of a built (e.g. meta) model."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return total, trainable, largest


def model_shape(name: str, kind: str = "causal-lm", lora: Any = None, params: int | None = None) -> ModelShape:
    """The :class:`ModelShape` of ``name`` built as ``kind``; ``lora`` (a ``peft.LoraConfig``) counts the
    adapters as trainable; ``params`` replaces the parameter count (``--params``). Unknown names give a shape
    with ``params=None`` unless ``params`` is given."""
    cfg, source, declared = model_config(name)
    if kind == "token-classifier" and declared:
        kind = declared
    if cfg is None:
        src = ("--params" if params is not None
               else "unknown: not a local folder nor a known shape; pass --params NAME=COUNT")
        if params is not None and lora is not None:
            src = "--params gives a count only; counting LoRA adapters needs the model's config.json (a local folder)"
        trainable = None if lora is not None else params
        return ModelShape(name, kind, params, trainable, 0, None, None, None, src)
    model = _build(cfg, kind)
    if lora is not None:
        from peft import get_peft_model  # optional dependency, as in rlkit.recipe.PeftConfig

        model = get_peft_model(model, lora, low_cpu_mem_usage=True)
    total, trainable, largest = count_parameters(model)
    text = cfg.get_text_config()
    dtype = getattr(cfg, "dtype", None)
    if params is not None:  # an explicit count wins; the config still gives the sizes
        trainable = params if lora is None else trainable
        total, source = params, f"--params (sizes from {source})"
    return ModelShape(name, kind, total, trainable, largest, text.hidden_size, text.num_hidden_layers,
                      text.vocab_size, source, None if dtype is None else str(dtype).replace("torch.", ""))
