"""Tiny offline models and a tokenizer for tests, examples and benchmarks (no network, seconds on CPU).

Example:
    >>> tok = tiny_tokenizer()
    >>> policy = tiny_causal_lm(tok)                      # Qwen2, hidden 64, 2 layers, random weights
    >>> prm = tiny_token_classifier(tok)                  # 2-label head per token (qwen-prm layout)
    >>> orm = tiny_sequence_classifier(tok)               # 1 score per sequence (orm layout)
"""

from __future__ import annotations

import functools

from reward.steps import step_end_tokens
from rlkit import credit

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>", "<extra_0>", "<ki>", "+", "-"]
_CORPUS = [
    "Natalia sold 48 clips in April and half as many in May. How many clips did she sell?",
    "Step 1: 48 / 2 = 24 clips in May.\n\nStep 2: 48 + 24 = 72 clips.\n\nThe answer is \\boxed{72}.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "system user assistant The answer is #### 18 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) . , ? ! good bad",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Ünïcödé ∑ π ≤ ≥ × ÷ → 日本語 emoji 🙂 text",
]


@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS[:5],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tk.to_str()


def tiny_tokenizer():
    """A byte-level BPE tokenizer (~400 tokens) with ChatML specials, ``<extra_0>`` and a chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
                                  bos_token=None, eos_token="<|im_end|>", pad_token="<pad>",
                                  additional_special_tokens=["<|im_start|>", "<extra_0>", "<ki>"])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def _config(tok, **overrides):
    from transformers import Qwen2Config

    kw = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
              tie_word_embeddings=True)
    kw.update(overrides)
    return Qwen2Config(**kw)


def tiny_causal_lm(tok=None, seed: int = 0, **overrides):
    """A random Qwen2ForCausalLM (hidden 64, 2 layers) matching ``tok``."""
    import torch
    from transformers import Qwen2ForCausalLM

    tok = tok or tiny_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_config(tok, **overrides))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval()


def tiny_token_classifier(tok=None, seed: int = 0, num_labels: int = 2, **overrides):
    """A random Qwen2ForTokenClassification with a 2-label head: the layout of rlkit-trained PRMs."""
    import torch
    from transformers import Qwen2ForTokenClassification

    tok = tok or tiny_tokenizer()
    torch.manual_seed(seed)
    return Qwen2ForTokenClassification(_config(tok, num_labels=num_labels, **overrides)).eval()


def tiny_sequence_classifier(tok=None, seed: int = 0, **overrides):
    """A random Qwen2ForSequenceClassification with one output: the layout of outcome RMs."""
    import torch
    from transformers import Qwen2ForSequenceClassification

    tok = tok or tiny_tokenizer()
    torch.manual_seed(seed)
    return Qwen2ForSequenceClassification(_config(tok, num_labels=1, **overrides)).eval()


def arithmetic_requests(n: int, bits: int = 14, seed: int = 0) -> list[dict]:
    """``n`` reward requests ``{"prompts", "responses", "references"}`` (1-3 responses each) for load tests.

    Every response across all requests is different: its ``bits`` steps are arithmetic equations, step ``b``
    right exactly when bit ``b`` of the response's running number is set, then one step without an equation.
    So the ``arithmetic`` reward scores response ``u`` as its bits followed by 0.5, and a score delivered to
    the wrong request or response is seen.

    Example:
        >>> r = arithmetic_requests(2, bits=3)
        >>> [len(x["responses"]) for x in r], r[1]["responses"][0].count("\\n\\n")
        ([1, 2], 3)
    """
    import random

    rng = random.Random(seed)
    out, u = [], 0
    for i in range(n):
        req: dict = {"prompts": [], "responses": [], "references": []}
        for _ in range(1 + i % 3):
            steps = []
            for b in range(bits):
                x, y = rng.randint(2, 999), rng.randint(2, 999)
                steps.append(f"{x} + {y} = {x + y + (0 if (u >> b) & 1 else 1)}")
            steps.append(f"That was response {u}.")
            req["prompts"].append(f"Request {i}, response {u}: check the sums.")
            req["responses"].append("\n\n".join(steps))
            req["references"].append(None)
            u += 1
        out.append(req)
    return out


def save_tiny(model, tok, path) -> str:
    """Save a tiny model and tokenizer as an HF folder; returns the path as a string."""
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def rlkit_train(recipe: str, out_dir, *sets: str, timeout: int = 600, cwd=None, **env: str):
    """Run ``rlkit train RECIPE --output-dir OUT_DIR --set ...`` in a fresh Python process, as a user would.

    The child gets the CPU-safe environment tests need (``DS_ACCELERATOR=cpu``, offline hub, no tokenizer
    threads, unbuffered output) plus ``env`` (e.g. ``OMP_NUM_THREADS="1"`` for multi-process runs on 2 cores).
    Returns the ``subprocess.CompletedProcess``; :func:`train_ok` is the asserting form.

    Example::

        res = rlkit_train("grpo_prm_quickstart", tmp_path, "training.max_steps=1")
        assert res.returncode == 0, res.stderr
    """
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "rlkit.cli", "train", str(recipe), "--output-dir", str(out_dir)]
    for s in sets:
        args += ["--set", s]
    child_env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                     PYTHONUNBUFFERED="1", **env)
    return subprocess.run(args, env=child_env, cwd=None if cwd is None else str(cwd), capture_output=True,
                          text=True, timeout=timeout)


def train_ok(recipe: str, out_dir, *sets: str, timeout: int = 600, cwd=None, **env: str):
    """:func:`rlkit_train` that must succeed; returns the one run folder it made under ``out_dir`` (a Path).

    On failure the assertion message carries the tails of the child's stdout and stderr.
    """
    from pathlib import Path

    res = rlkit_train(recipe, out_dir, *sets, timeout=timeout, cwd=cwd, **env)
    assert res.returncode == 0, f"rlkit train {recipe} {list(sets)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-6000:]}"
    runs = [p for p in Path(out_dir).iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one run folder in {out_dir}, found {runs}"
    return runs[0]


def recompute_step_rewards(tok, reward, completion_ids, completion_mask):
    """Padded step rewards for a batch of generated completions, recomputed independently of the trainers:
    decode each row, split and score it with ``reward``, put each score on its step's last token (the last step
    always ends on the last completion token; a row with no step gets one 0.0 there).

    Returns ``credit.pad_steps(scores, ends)``: (step_rewards, step_mask, step_ends), for tests that check a
    trainer's advantages against ``rlkit.credit`` applied to these.
    """
    scores, ends = [], []
    for row, m in zip(completion_ids, completion_mask):
        toks = row[m.bool()].tolist()
        text = tok.decode(toks, skip_special_tokens=True)
        steps, step_ends = step_end_tokens(tok, toks, reward.splitter, text)
        sc = reward.score_steps([""], [steps])[0]
        if not steps:
            sc, step_ends = [0.0], [len(toks) - 1]
        step_ends[-1] = len(toks) - 1
        scores.append(sc)
        ends.append(step_ends)
    return credit.pad_steps(scores, ends)
