"""Shared Hugging Face plumbing for the model-backed rewards: device/dtype resolution, loading, output logits.

Every HF reward (``qwen-prm``, ``shepherd-prm``, ``orm``, ``llm-judge``) accepts either a path / hub id or an
already-built model object, so the same class serves recipes (``model: path``) and in-process use (tests, a
PRM trainer scoring with the model it is training).

Example:
    >>> from rlkit import testing
    >>> tok = testing.tiny_tokenizer()
    >>> model, tok2 = load_model(testing.tiny_token_classifier(tok), "token-classification", tokenizer=tok)
    >>> model.training
    False
"""

from __future__ import annotations

from typing import Any

import torch

from reward.base import RewardError

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}

_AUTO_CLASSES = {
    "token-classification": "AutoModelForTokenClassification",
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
}


# ----------------------------------------------------------------------------------------------- score heads
SCORE_HEAD_KEY = "rlkit_score_head"
SCORE_HEADS = ("linear", "mlp2")


class ScalarMLPHead(torch.nn.Sequential):
    """The Qwen2.5-Math-RM value head: ``Linear(h, h) -> ReLU -> Linear(h, num_labels)`` (biases on).

    Used as the ``score`` layer of a transformers sequence classifier; its weights are saved under
    ``score.0.*`` and ``score.2.*``.
    """

    def __init__(self, hidden_size: int, num_labels: int = 1) -> None:
        super().__init__(torch.nn.Linear(hidden_size, hidden_size), torch.nn.ReLU(),
                         torch.nn.Linear(hidden_size, num_labels))


_MLP_HEAD_CLASSES: dict[type, type] = {}


def mlp_head_class(base: type) -> type:
    """``base`` (a transformers ``*ForSequenceClassification`` class whose head is a linear ``score``) with
    :class:`ScalarMLPHead` as its ``score`` layer. The subclass is built once per base class and registered in
    this module (so it pickles); ``from_pretrained`` on it loads ``score.0.*`` / ``score.2.*`` like any other
    weight (missing ones are reported, never silently re-initialised)."""
    cls = _MLP_HEAD_CLASSES.get(base)
    if cls is not None:
        return cls

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, config, *args, **kwargs)
        if not isinstance(getattr(self, "score", None), torch.nn.Linear):
            raise RewardError(f"{base.__name__} has no linear `score` head to replace with the mlp2 head")
        self.score = ScalarMLPHead(config.get_text_config().hidden_size, config.num_labels)
        self.post_init()  # initialises the new head when built from a config; from_pretrained loads it

    name = f"{base.__name__}MLP2"
    cls = type(name, (base,), {"__init__": __init__, "__module__": __name__, "__qualname__": name,
                               "__doc__": f"{base.__name__} with a two-layer scalar head (rlkit mlp2)."})
    globals()[name] = cls
    _MLP_HEAD_CLASSES[base] = cls
    return cls


def score_head_of(config: Any) -> str | None:
    """The head a sequence-classifier config records (``rlkit_score_head``); None for plain HF classifiers."""
    head = getattr(config, SCORE_HEAD_KEY, None)
    if head is not None and head not in SCORE_HEADS:
        raise RewardError(f"unknown {SCORE_HEAD_KEY} {head!r} in the model config "
                          f"(known: {', '.join(SCORE_HEADS)})")
    return head


def sequence_classifier_class(config: Any, head: str | None = None) -> type:
    """The transformers class that builds/loads a sequence classifier with ``head`` ("linear": the
    architecture's own class; "mlp2": :func:`mlp_head_class` of it). ``head`` None: the one ``config``
    records, else "linear"."""
    from transformers import AutoModelForSequenceClassification

    head = head or score_head_of(config) or "linear"
    if head not in SCORE_HEADS:
        raise RewardError(f"unknown score head {head!r} (known: {', '.join(SCORE_HEADS)})")
    try:
        base = AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:
        raise RewardError(f"no sequence-classification class for model type "
                          f"{getattr(config, 'model_type', '?')!r}") from None
    return base if head == "linear" else mlp_head_class(base)


def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """``None``/"auto": the model's current device for a built model, else CUDA when available, else CPU."""
    if device is None or device == "auto":
        if model is not None:
            try:
                return next(model.parameters()).device
            except StopIteration:
                pass
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """``"auto"``: bfloat16 on a CUDA device that supports it, float32 otherwise. ``None``: leave as loaded."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (allowed: auto, {', '.join(_DTYPES)})")
    return _DTYPES[dtype]


def load_tokenizer(source: Any, tokenizer: Any = None, trust_remote_code: bool = False):
    """The tokenizer given, or the one saved beside the model (path or built model's ``name_or_path``)."""
    if tokenizer is not None and not isinstance(tokenizer, str):
        return tokenizer
    from transformers import AutoTokenizer

    path = tokenizer if isinstance(tokenizer, str) else source
    if not isinstance(path, str):
        path = getattr(getattr(source, "config", None), "name_or_path", None) or getattr(source, "name_or_path", None)
        if not path:
            raise RewardError("a built model was given without a tokenizer: pass tokenizer=<tokenizer or path>")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise RewardError(f"cannot load a tokenizer from {path!r}: {str(e).splitlines()[0]}") from None


def load_model(source: Any, kind: str, *, tokenizer: Any = None, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = "auto", trust_remote_code: bool = False,
               remote_auto_class: str = "AutoModel") -> tuple[torch.nn.Module, Any]:
    """Load (or adopt) a model and its tokenizer, in eval mode, on ``device``.

    ``source`` is a path / hub id or a built ``torch.nn.Module``. ``kind`` picks the transformers auto class
    ("token-classification", "sequence-classification", "causal-lm"). With ``trust_remote_code=True`` and a
    config whose ``auto_map`` names ``remote_auto_class`` (e.g. the Qwen2.5-Math-PRM checkpoints, which map
    ``AutoModel`` to their own process-reward class), that class is used instead. A sequence classifier whose
    config records ``rlkit_score_head: mlp2`` (rlkit's listwise ORM) is built with that head before its
    weights load (:func:`sequence_classifier_class`). A built model is moved to
    ``device`` only when one is given, and its dtype is kept unless ``dtype`` is an explicit dtype.
    """
    if kind not in _AUTO_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}")
    if isinstance(source, torch.nn.Module):
        model = source
        if device is not None and device != "auto":
            model.to(torch.device(device))
        if dtype not in (None, "auto"):
            model.to(resolve_dtype(dtype, resolve_device(None, model)))
        tok = load_tokenizer(source, tokenizer, trust_remote_code)
        return model.eval(), tok
    if not isinstance(source, str) or not source:
        raise RewardError(f"reward model must be a path, hub id or torch module, got {type(source).__name__}")

    import transformers

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0]
        if "trust_remote_code" in str(e) and not trust_remote_code:
            msg = "its config needs custom code: set `trust_remote_code: true` in the reward args if you trust it"
        raise RewardError(f"cannot load reward model {source!r}: {msg}") from None
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and remote_auto_class in auto_map:
        cls = getattr(transformers, remote_auto_class)
    elif kind == "sequence-classification" and score_head_of(config) == "mlp2":
        cls = sequence_classifier_class(config, "mlp2")  # rlkit's two-layer head, rebuilt before loading
    else:
        cls = getattr(transformers, _AUTO_CLASSES[kind])
    hint = ""
    if auto_map and not trust_remote_code:
        hint = (f" (the checkpoint ships custom code for {', '.join(getattr(config, 'architectures', None) or [])}:"
                " set `trust_remote_code: true` if you trust it)")
    try:
        model, info = cls.from_pretrained(source, dtype=dt, trust_remote_code=trust_remote_code,
                                          output_loading_info=True)
    except (OSError, ValueError) as e:
        raise RewardError(f"cannot load reward model {source!r} as {cls.__name__}: {str(e).splitlines()[0]}"
                          f"{hint}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        # e.g. a causal LM folder loaded as a classifier, or a custom-code PRM without trust_remote_code:
        # the head would be random and every score meaningless
        raise RewardError(f"reward model {source!r} loaded as {type(model).__name__} lacks trained weights for "
                          f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}: wrong layout for this "
                          f"reward{hint}")
    model.to(dev)
    tok = load_tokenizer(source, tokenizer, trust_remote_code)
    return model.eval(), tok


def output_logits(output: Any) -> torch.Tensor:
    """The logits of a model output: ``.logits`` when present, else the first element (custom-code models)."""
    logits = getattr(output, "logits", None)
    if logits is None:
        if isinstance(output, torch.Tensor):
            return output
        try:
            logits = output[0]
        except (TypeError, IndexError, KeyError):
            raise RewardError(f"model output {type(output).__name__} has no logits") from None
    if not isinstance(logits, torch.Tensor):
        raise RewardError(f"model output's first element is {type(logits).__name__}, not a logits tensor")
    return logits


def single_token_id(tokenizer: Any, text: str, what: str) -> int:
    """The id of ``text`` when it is one token of ``tokenizer`` (a special or regular token), else RewardError."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    tid = tokenizer.convert_tokens_to_ids(text)
    unk = getattr(tokenizer, "unk_token_id", None)
    if isinstance(tid, int) and tid >= 0 and tid != unk:
        return int(tid)
    raise RewardError(f"{what} {text!r} is not a single token of this tokenizer (it encodes to {ids})")


def render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat-template text of ``messages``; ChatML when the tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def pad_id_of(tokenizer: Any, model: torch.nn.Module | None = None) -> int:
    """A padding id: the tokenizer's pad, else its eos, else the model config's pad, else 0."""
    for v in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None),
              getattr(getattr(model, "config", None), "pad_token_id", None)):
        if isinstance(v, int):
            return v
    return 0
