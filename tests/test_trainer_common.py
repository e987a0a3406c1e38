"""The shared pieces of the classifier trainers (rlkit/trainers/common.py): backbone + tokenizer resolution,
the atomic save of ``final/``, and atomic summaries (NaN written as null)."""

from __future__ import annotations

import json

import pytest


def test_load_backbone_tokenizer_gives_a_pad_token(tiny_dirs, tok):
    from rlkit.trainers.common import load_backbone_tokenizer

    path, t = load_backbone_tokenizer(tiny_dirs["policy"])
    assert path == tiny_dirs["policy"] and t.pad_token_id == tok.pad_token_id
    t.pad_token = None
    same_path, same = load_backbone_tokenizer(tiny_dirs["policy"], t)
    assert same is t and same_path == tiny_dirs["policy"]
    assert t.pad_token == t.eos_token == "<|im_end|>"


def test_save_final_replaces_final_atomically(tmp_path, tiny_dirs, tok):
    from safetensors.torch import load_file
    from transformers import Trainer, TrainingArguments

    from rlkit import testing
    from rlkit.trainers.common import save_final

    old = tmp_path / "final"
    old.mkdir()
    (old / "stale.txt").write_text("from an earlier run")
    (tmp_path / ".final.tmp").mkdir()  # left by a crashed save
    model = testing.tiny_sequence_classifier(tok)
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), report_to=[], use_cpu=True)
    final = save_final(Trainer(model=model, args=args), tok, tmp_path)
    assert final == old and not (tmp_path / ".final.tmp").exists() and not (final / "stale.txt").exists()
    saved = load_file(str(final / "model.safetensors"))
    assert all(saved[k].equal(v) for k, v in model.state_dict().items())
    assert (final / "tokenizer_config.json").is_file()


def test_write_summary_is_valid_json_with_nan_as_null(tmp_path):
    from rlkit.trainers.common import write_summary

    def no_constants(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    write_summary(tmp_path / "s.json", {"a": float("nan"), "b": [1.5, float("nan")], "c": {"d": float("nan")},
                                        "p": tmp_path})
    got = json.loads((tmp_path / "s.json").read_text(), parse_constant=no_constants)
    assert got == {"a": None, "b": [1.5, None], "c": {"d": None}, "p": str(tmp_path)}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temp file left behind
    with pytest.raises(ValueError, match="non-standard"):
        json.loads('{"x": NaN}', parse_constant=no_constants)
