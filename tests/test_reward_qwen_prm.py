"""qwen-prm: input format, hand-checked step probabilities, separator positions, loading layouts."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pytest
import torch

from reward.base import RewardError
from reward.models.qwen_prm import DEFAULT_SYSTEM_PROMPT, QwenPRM, format_prm_input
from reward.registry import available, build_reward
from rlkit import testing

RESPONSES = [
    "Step 1: 48 / 2 = 24 clips in May.\n\nStep 2: 48 + 24 = 72 clips.\n\nThe answer is \\boxed{72}.",
    "72",
    "Ünïcödé ∑ π ≤ 3\n\n日本語 🙂\n\n\n\nSo \\boxed{18}.  \n\n",
    "Weng earns $12 an hour. 50 minutes is 50/60 hour.\n\n12 * 50/60 = 10.\n\n#### 10",
]
PROMPTS = ["Natalia sold 48 clips in April and half as many in May. How many clips did she sell?",
           "What is 8*9?", "Unicode question?", "Weng earns $12 an hour for babysitting..."]


def test_format_matches_qwen_layout(tok):
    text = format_prm_input(tok, "Q?", ["a", "b"])
    assert text == (f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n"
                    "<|im_start|>assistant\na<extra_0>b<extra_0><|im_end|>\n")
    # separators inside the texts are removed, so there is exactly one per step
    assert format_prm_input(tok, "Q<extra_0>", ["x<extra_0>y"], system_prompt=None).count("<extra_0>") == 1


def test_known_logits_give_hand_checked_probability(tok, prm_model):
    # zero weights + bias (0, ln 3): every position has logits (0, ln 3) -> P(positive) = 3 / (1 + 3) = 0.75
    with torch.no_grad():
        prm_model.score.weight.zero_()
        prm_model.score.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    rm = QwenPRM(prm_model, tokenizer=tok)
    out = rm.score(PROMPTS[:2], RESPONSES[:2])
    assert [len(o.scores) for o in out] == [3, 1]
    for o in out:
        assert o.scores == pytest.approx([0.75] * len(o.scores), abs=1e-6)
    # positive_label=0 reads the other column: 1/4
    rm0 = QwenPRM(prm_model, tokenizer=tok, positive_label=0)
    assert rm0.score(PROMPTS[:1], RESPONSES[:1])[0].scores == pytest.approx([0.25] * 3, abs=1e-6)


class PositionModel(torch.nn.Module):
    """Fake PRM (custom-code layout: returns a tuple with logits first): logits[t] = (0, 0.01 * t)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        t = torch.arange(input_ids.shape[1], dtype=torch.float32).expand(input_ids.shape)
        return (torch.stack([torch.zeros_like(t), 0.01 * t], dim=-1) + self.dummy,)


def test_scores_sit_exactly_at_separator_positions(tok):
    rm = QwenPRM(PositionModel(), tokenizer=tok)
    prompt, resp = "Q?", "a\n\nb\n\nc"
    ids = tok.encode(format_prm_input(tok, prompt, ["a", "b", "c"]), add_special_tokens=False)
    sep = tok.convert_tokens_to_ids("<extra_0>")
    positions = [t for t, i in enumerate(ids) if i == sep]
    assert len(positions) == 3 and ids[positions[-1] + 1] == tok.convert_tokens_to_ids("<|im_end|>")
    expected = [1.0 / (1.0 + math.exp(-0.01 * t)) for t in positions]   # sigmoid(0.01 t) = softmax(...)[1]
    got = rm.score([prompt], [resp])[0].scores
    assert got == pytest.approx(expected, abs=1e-6)


def test_matches_manual_unbatched_forward(tok, prm_model):
    rm = QwenPRM(prm_model, tokenizer=tok)
    out = rm.score(PROMPTS, RESPONSES)
    sep = tok.convert_tokens_to_ids("<extra_0>")
    for p, r, o in zip(PROMPTS, RESPONSES, out):
        steps = [s.text for s in rm.splitter.split(r)]
        ids = tok.encode(format_prm_input(tok, p, steps), add_special_tokens=False)
        with torch.no_grad():
            probs = prm_model(input_ids=torch.tensor([ids])).logits[0].softmax(-1)[:, 1]
        manual = [float(probs[t]) for t, i in enumerate(ids) if i == sep]
        assert o.scores == pytest.approx(manual, abs=1e-5)
        assert len(o.steps) == len(steps)


def test_batched_equals_unbatched_mixed_lengths(tok, prm_model):
    prompts = PROMPTS * 3
    responses = [r + "\n\nmore " * k for k, r in enumerate(RESPONSES * 3)]
    batched = QwenPRM(prm_model, tokenizer=tok, token_budget=4096).score(prompts, responses)
    single = QwenPRM(prm_model, tokenizer=tok, max_batch_size=1).score(prompts, responses)
    assert len({len(s.scores) for s in batched}) > 3
    for a, b in zip(batched, single):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_empty_response_and_order(tok, prm_model):
    rm = QwenPRM(prm_model, tokenizer=tok)
    out = rm.score(["q", "q", "q"], ["", "a\n\nb", "   \n\n"])
    assert [len(o.scores) for o in out] == [0, 2, 0]
    assert out[0].aggregate("min") == 0.0


def test_overflow_modes(tok, prm_model):
    resp = "\n\n".join(f"step {i} 48 + 24 = 72 clips" for i in range(12))
    full = QwenPRM(prm_model, tokenizer=tok).score(["q"], [resp])[0]
    n_ids = full.meta["input_tokens"]
    limit = n_ids - 30   # cuts off the last few separators
    cut = QwenPRM(prm_model, tokenizer=tok, max_length=limit).score(["q"], [resp])[0]
    k = len(cut.scores) - cut.meta["unscored_steps"]
    assert 0 < k < 12
    assert cut.scores[:k] == pytest.approx(full.scores[:k], abs=1e-5)      # the prefix is scored as before
    assert cut.scores[k:] == [cut.scores[k - 1]] * (12 - k)                 # repeat_last
    zero = QwenPRM(prm_model, tokenizer=tok, max_length=limit, overflow="zero").score(["q"], [resp])[0]
    assert zero.scores[k:] == [0.0] * (12 - k)
    with pytest.raises(RewardError, match="max_length"):
        QwenPRM(prm_model, tokenizer=tok, max_length=limit, overflow="error").score(["q"], [resp])
    nothing = QwenPRM(prm_model, tokenizer=tok, max_length=5).score(["q"], [resp])[0]
    assert nothing.scores == [0.0] * 12 and nothing.meta["unscored_steps"] == 12


def test_recipe_style_build_from_saved_folder(tiny_dirs, tok):
    rm = build_reward("qwen-prm", model=tiny_dirs["prm"], device="cpu", dtype="float32")
    # same seed -> same weights. The tokenizer comes from the folder: next to a Qwen2 config.json it loads as
    # Qwen2Tokenizer (digits split one by one), which tokenizes differently from the in-memory tiny tokenizer.
    ref = QwenPRM(testing.tiny_token_classifier(tok), tokenizer=rm.tokenizer)
    a = rm.score(PROMPTS[:2], RESPONSES[:2])
    b = ref.score(PROMPTS[:2], RESPONSES[:2])
    for x, y in zip(a, b):
        assert x.scores == pytest.approx(y.scores, abs=1e-6)


def test_wrong_layouts_are_refused(tiny_dirs):
    with pytest.raises(RewardError, match="lacks trained weights"):
        build_reward("qwen-prm", model=tiny_dirs["policy"])   # a causal LM has no 2-label head
    with pytest.raises(RewardError, match="use reward 'orm'"):
        build_reward("qwen-prm", model=tiny_dirs["orm"])
    with pytest.raises(RewardError, match="separator"):
        build_reward("qwen-prm", model=tiny_dirs["prm"], separator="not one token")


def test_unknown_name_lists_registered_and_bad_args():
    with pytest.raises(KeyError) as e:
        build_reward("no-such-reward")
    for name in ("qwen-prm", "shepherd-prm", "orm", "llm-judge", "remote", "composite", "qwen-math-shaping"):
        assert name in available() and name in str(e.value)
    with pytest.raises(ValueError, match="unknown argument 'modle'"):
        build_reward("qwen-prm", modle="x")


MODELING = textwrap.dedent('''
    import torch
    from torch import nn
    from transformers import Qwen2Model, Qwen2PreTrainedModel


    class TinyProcessRewardModel(Qwen2PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.model = Qwen2Model(config)
            h = config.hidden_size
            self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return (self.score(hidden),)
''')


def test_custom_code_checkpoint_needs_trust_remote_code(tmp_path, tok):
    """A checkpoint laid out like the released Qwen2.5-Math-PRM (AutoModel via auto_map, tuple output)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "modeling_tinyprm.py").write_text(MODELING)
    sys.path.insert(0, str(src))
    try:
        import modeling_tinyprm
    finally:
        sys.path.remove(str(src))
    torch.manual_seed(0)
    model = modeling_tinyprm.TinyProcessRewardModel(testing._config(tok))
    folder = tmp_path / "prm"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    (folder / "modeling_tinyprm.py").write_text(MODELING)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_tinyprm.TinyProcessRewardModel"}
    cfg["architectures"] = ["TinyProcessRewardModel"]
    (folder / "config.json").write_text(json.dumps(cfg))

    with pytest.raises(RewardError, match="trust_remote_code: true"):
        build_reward("qwen-prm", model=str(folder))
    rm = build_reward("qwen-prm", model=str(folder), trust_remote_code=True)
    expected = QwenPRM(model, tokenizer=rm.tokenizer).score(PROMPTS[:2], RESPONSES[:2])
    got = rm.score(PROMPTS[:2], RESPONSES[:2])
    for x, y in zip(got, expected):
        assert x.scores == pytest.approx(y.scores, abs=1e-6)
