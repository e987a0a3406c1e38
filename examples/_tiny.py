"""Shared by the examples: `--tiny` swaps the embedded SmolLM2 for a tiny random model (seconds on CPU)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

TINY_OVERRIDES = ["training.max_steps=2", "training.max_completion_length=12", "training.num_generations=2",
                  "training.per_device_train_batch_size=4", "data.num_train=8", "data.num_eval=4"]


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="use a tiny random model and 2 steps (smoke test)")
    p.add_argument("--output-dir", default="runs/examples")
    p.add_argument("--set", action="append", default=[], help="extra recipe overrides KEY.PATH=VALUE")
    return p.parse_args()


def tiny_model_dir() -> str:
    """Save a tiny random Qwen2 policy (with tokenizer) to a temp folder and return its path."""
    from rlkit import testing

    tok = testing.tiny_tokenizer()
    path = Path(tempfile.mkdtemp(prefix="rlkit-tiny-")) / "policy"
    return testing.save_tiny(testing.tiny_causal_lm(tok), tok, path)


def overrides(args: argparse.Namespace, *extra: str) -> list[str]:
    sets = list(extra) + list(args.set)
    if args.tiny:
        sets = [f"model={tiny_model_dir()}", *TINY_OVERRIDES, *sets]
    return sets
