"""Shared fixtures: tiny random Qwen2 models and a local tokenizer, built in-process with no network."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from rlkit import testing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tok():
    return testing.tiny_tokenizer()


@pytest.fixture()
def policy(tok):
    return testing.tiny_causal_lm(tok)


@pytest.fixture()
def prm_model(tok):
    return testing.tiny_token_classifier(tok)


@pytest.fixture()
def orm_model(tok):
    return testing.tiny_sequence_classifier(tok)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tok):
    """HF folders of a tiny policy, PRM and ORM (saved once per session): {'policy': path, 'prm': ..., 'orm': ...}."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "policy": testing.save_tiny(testing.tiny_causal_lm(tok), tok, root / "policy"),
        "prm": testing.save_tiny(testing.tiny_token_classifier(tok), tok, root / "prm"),
        "orm": testing.save_tiny(testing.tiny_sequence_classifier(tok), tok, root / "orm"),
    }


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data, or skip the test when it is absent (the project never needs it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def load_benchmark():
    """A script of ``benchmarks/`` as a module, for tests that call its functions in-process:
    ``bench = load_benchmark("grpo_step")``."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load
