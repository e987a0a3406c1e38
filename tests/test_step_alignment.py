"""Step scores land on the token that ends each step, also when the scored text is only a part of what the
completion's tokens decode to (TRL parsing reasoning or tool calls out of ``content``); steps that cannot be
placed are counted in ``prm/unplaced_steps`` and warned about once, never silently turned into outcome credit.
Before the fix the scored text was assumed to equal the decoded ids: no prefix matched and every step ended on
the last token. The linear (incremental) alignment equals the quadratic prefix rule it replaced."""

from __future__ import annotations

import logging

import pytest
from trl import GRPOConfig

from reward.base import StepRewardModel
from reward.steps import StepSplitter, _prefix_char_ends, locate_text, token_char_ends
from rlkit import testing
from rlkit.data import load_prompts
from rlkit.trainers.grpo_trainer import PRMGRPOTrainer

CONTENT = "48 / 2 = 24 in May.\n\n48 + 24 = 72 clips.\n\nThe answer is 72."
HIDDEN = "<think>good bad 12 + 3 = 15?</think>\n"  # what a response parser would move out of content


class HalfReward(StepRewardModel):
    def __init__(self):
        super().__init__(StepSplitter("double_newline"))

    def score_steps(self, prompts, steps, references=None):
        return [[0.5] * len(s) for s in steps]


@pytest.fixture()
def trainer(tok, tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=2,
                      max_completion_length=8, report_to=[], use_cpu=True, bf16=False, max_steps=1)
    return PRMGRPOTrainer(model=testing.tiny_causal_lm(tok), processing_class=tok, args=args,
                          train_dataset=load_prompts("builtin:arithmetic", n=4), step_reward=HalfReward())


def _by_hand_step_ends(tok, ids, offset: int, steps) -> list[int]:
    """For each step, the first token whose decoded prefix reaches the step's last character (+ offset)."""
    lens = [len(tok.decode(ids[: i + 1], skip_special_tokens=True)) for i in range(len(ids))]
    return [next(i for i, n in enumerate(lens) if n >= offset + s.end) for s in steps]


def test_steps_of_a_parsed_response_land_on_their_own_tokens(tok, trainer):
    ids = tok(HIDDEN + CONTENT)["input_ids"]
    reply = [{"role": "assistant", "content": CONTENT}]
    trainer._reward_callable(prompts=[[{"role": "user", "content": "q"}]], completions=[reply],
                             completion_ids=[ids])
    item = trainer._pending[0]
    steps = HalfReward().splitter.split(CONTENT)
    offset = tok.decode(ids, skip_special_tokens=True).index(CONTENT)
    expected = _by_hand_step_ends(tok, ids, offset, steps)
    expected[-1] = len(ids) - 1
    assert item.ends == expected and expected[0] < expected[1] < expected[2], (item.ends, expected)
    assert item.unplaced == 0


def test_steps_that_cannot_be_placed_are_counted_and_warned_once(tok, trainer, caplog):
    ids = tok("something else entirely")["input_ids"]
    reply = [{"role": "assistant", "content": CONTENT}]
    with caplog.at_level(logging.WARNING, logger="rlkit.trainers.scoring"):
        for _ in range(2):
            trainer._reward_callable(prompts=["q"], completions=[reply], completion_ids=[ids])
    assert trainer._pending[0].unplaced == 3
    assert sum("could not be placed" in r.message for r in caplog.records) == 1
    trainer.log_step_metrics(trainer._pending, "train")
    assert trainer._metrics["train"]["prm/unplaced_steps"][-1] == 3.0


@pytest.mark.parametrize("text", [CONTENT, HIDDEN + CONTENT, "Ünïcödé ∑ π ≤ ≥ × ÷ → 日本語 emoji 🙂 text",
                                  "  leading spaces\n\n\nand 🙂🙂 twice  "])
def test_incremental_alignment_equals_the_prefix_rule(tok, text):
    ids = tok(text)["input_ids"]
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert token_char_ends(tok, ids, decoded) == _prefix_char_ends(tok, ids, decoded)
    assert token_char_ends(tok, ids)[-1] == len(decoded)


def test_invalid_bytes_fall_back_to_the_prefix_rule(tok):
    ids = tok("🙂")["input_ids"][:1] + tok(" ok")["input_ids"]  # an emoji cut after its first byte token
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert "\ufffd" in decoded
    assert token_char_ends(tok, ids) == _prefix_char_ends(tok, ids, decoded)


def test_locate_text_clamps_tokens_outside_the_located_part(tok):
    ids = tok(HIDDEN + CONTENT)["input_ids"]
    ends = locate_text(tok, ids, CONTENT)
    assert ends[0] == 0 and ends[-1] == len(CONTENT) and ends == sorted(ends)
    assert locate_text(tok, ids, "not there") is None


@pytest.mark.embedded
def test_incremental_alignment_equals_the_prefix_rule_on_smollm2():
    from rlkit.models import ModelError, load_tokenizer

    try:
        st = load_tokenizer("embedded:smollm2-135m-instruct")
    except ModelError:
        pytest.skip("embedded model not installed")
    for text in (CONTENT * 3, "Ünïcödé ∑ π → 日本語 🙂 text\n\nStep 2: x"):
        ids = st(text, add_special_tokens=False)["input_ids"]
        decoded = st.decode(ids, skip_special_tokens=True)
        assert token_char_ends(st, ids, decoded) == _prefix_char_ends(st, ids, decoded)
