"""Step segmentation: response text -> steps -> character spans -> token spans.

Every part of rlkit that talks about "a step" (PRM data, PRM scoring, evaluation, credit assignment in RL)
goes through this module, so a step means the same characters everywhere.

Example:
    >>> splitter = StepSplitter()                      # default: steps separated by a blank line
    >>> [s.text for s in splitter.split("2+2=4\\n\\nSo 4.")]
    ['2+2=4', 'So 4.']
    >>> splitter.split("2+2=4\\n\\nSo 4.")[1].start      # character span inside the response
    7
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

SEPARATORS = {"double_newline": "\n\n", "newline": "\n"}


@dataclass(frozen=True)
class Step:
    """One reasoning step: its text (surrounding whitespace stripped) and its [start, end) span in the response."""

    text: str
    start: int
    end: int


class StepSplitter:
    """Splits a response into steps.

    Args:
        mode: "double_newline" (default, the Qwen2.5-Math-PRM convention), "newline", "separator" (split on the
            literal ``separator``) or "regex" (split on matches of ``pattern``).
        separator: the literal for mode "separator".
        pattern: the regular expression for mode "regex".
        max_steps: if set, everything after step ``max_steps - 1`` is merged into the last step, so a response
            never has more steps than that (guards PRM inputs against degenerate "one token per line" text).

    ``separator`` is the literal text between steps (None in mode "regex"): what a step-by-step generator
    stops at (``reward.search``).

    Whitespace-only pieces are not steps. A response without any separator is a single step; an empty response
    has no steps. Responses given as a list of strings (explicit steps, e.g. ProcessBench items) go through
    :meth:`from_list`, which keeps each string as one step.

    Example:
        >>> StepSplitter("regex", pattern=r"(?m)^Step \\d+: ").split("Step 1: a\\nStep 2: b")[1].text
        'b'
    """

    def __init__(self, mode: str = "double_newline", separator: str | None = None, pattern: str | None = None,
                 max_steps: int | None = None) -> None:
        self.separator: str | None = None
        if mode in SEPARATORS:
            self.separator = SEPARATORS[mode]
            self._regex = re.compile(re.escape(self.separator))
        elif mode == "separator":
            if not separator:
                raise ValueError("step splitter mode 'separator' needs a non-empty 'separator'")
            self.separator = separator
            self._regex = re.compile(re.escape(separator))
        elif mode == "regex":
            if not pattern:
                raise ValueError("step splitter mode 'regex' needs a 'pattern'")
            try:
                self._regex = re.compile(pattern)
            except re.error as e:
                raise ValueError(f"step splitter pattern {pattern!r} is not a valid regex: {e}") from None
        else:
            raise ValueError(f"unknown step splitter mode {mode!r} (allowed: double_newline, newline, separator, regex)")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.mode, self.max_steps = mode, max_steps

    def split(self, response: str) -> list[Step]:
        """The steps of ``response``, each with its stripped text and exact span."""
        pieces, pos = [], 0
        for m in self._regex.finditer(response):
            if m.end() == m.start():  # zero-width matches (e.g. lookahead patterns) split before the match
                if m.start() > pos:
                    pieces.append((pos, m.start()))
                    pos = m.start()
                continue
            pieces.append((pos, m.start()))
            pos = m.end()
        pieces.append((pos, len(response)))
        steps = [s for s in (_strip_span(response, a, b) for a, b in pieces) if s is not None]
        if self.max_steps is not None and len(steps) > self.max_steps:
            last = steps[self.max_steps - 1]
            end = steps[-1].end
            steps = steps[: self.max_steps - 1] + [Step(response[last.start:end], last.start, end)]
        return steps

    @staticmethod
    def from_list(steps: Sequence[str], joiner: str = "\n\n") -> tuple[str, list[Step]]:
        """Join explicit steps into one response text and return it with the steps' spans."""
        text, out = "", []
        for i, raw in enumerate(steps):
            if i:
                text += joiner
            start = len(text)
            text += raw
            s = _strip_span(text, start, len(text))
            if s is not None:
                out.append(s)
        return text, out


def _strip_span(text: str, a: int, b: int) -> Step | None:
    piece = text[a:b]
    stripped = piece.strip()
    if not stripped:
        return None
    start = a + (len(piece) - len(piece.lstrip()))
    return Step(stripped, start, start + len(stripped))


def token_char_ends(tokenizer, token_ids: Sequence[int], text: str | None = None) -> list[int]:
    """For each token of ``token_ids``, the number of characters of the decoded text it completes.

    Works with any tokenizer (byte-level BPE and SentencePiece included). Decoding is incremental: each token is
    decoded together with the few tokens before it and credited with the characters it adds, so the cost is
    linear in the completion length; a token that ends inside a multi-byte character adds nothing until the
    character is complete (it gets the end of the previous complete character). ``text`` is the decoded full
    text (computed when omitted). Where the incremental pieces do not add up to ``text`` (a tokenizer whose
    decoding cleans up spaces between tokens) or the text holds invalid bytes (U+FFFD), every prefix is decoded
    instead (quadratic, the reference rule).

    Example:
        >>> from rlkit.testing import tiny_tokenizer
        >>> tok = tiny_tokenizer(); ids = tok("48 / 2 = 24")["input_ids"]
        >>> token_char_ends(tok, ids)[-1] == len("48 / 2 = 24")
        True
    """
    ids = list(token_ids)
    if text is None:
        text = tokenizer.decode(ids, skip_special_tokens=True)
    if not ids:
        return []
    if "\ufffd" not in text:  # bytes that never form a character: the prefix rule decides where they end
        ends = _incremental_char_ends(tokenizer, ids)
        if ends is not None and ends[1] == text:
            return ends[0]
    return _prefix_char_ends(tokenizer, ids, text)


def _incremental_char_ends(tokenizer, ids: list[int]) -> tuple[list[int], str] | None:
    """Per-token character ends by incremental detokenization, and the text the pieces add up to (None when a
    token changes already credited text). Each token is decoded in a window that starts at the token before the
    last credited one, so spaces and byte merges that depend on the previous token come out right."""
    pieces: list[str] = []
    ends: list[int] = []
    n_chars, window, credited = 0, 0, 0  # ids[window:credited] decode to the window's already credited text
    for i in range(len(ids)):
        before = tokenizer.decode(ids[window:credited], skip_special_tokens=True) if credited > window else ""
        now = tokenizer.decode(ids[window:i + 1], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            if not now.startswith(before):
                return None
            pieces.append(now[len(before):])
            n_chars += len(pieces[-1])
            window, credited = credited, i + 1
        ends.append(n_chars)
    return ends, "".join(pieces)


def _prefix_char_ends(tokenizer, ids: list[int], text: str) -> list[int]:
    """The quadratic reference: decode every prefix (one batched call)."""
    prefixes = tokenizer.batch_decode([ids[: i + 1] for i in range(len(ids))], skip_special_tokens=True)
    ends, prev = [], 0
    for p in prefixes:
        if text.startswith(p) and len(p) >= prev:
            prev = len(p)
        ends.append(prev)
    return ends


def locate_text(tokenizer, token_ids: Sequence[int], text: str) -> list[int] | None:
    """Character ends of ``token_ids`` in the coordinates of ``text``, a part of their decoded text (e.g. the
    ``content`` a chat parser kept after moving reasoning or tool calls out), or None when ``text`` does not
    occur in the decoded ids. Tokens before ``text`` end at 0, tokens after it at ``len(text)``.

    Example:
        >>> from rlkit.testing import tiny_tokenizer
        >>> tok = tiny_tokenizer(); ids = tok("good bad")["input_ids"]
        >>> locate_text(tok, ids, "bad")[-1], locate_text(tok, ids, "ugly")
        (3, None)
    """
    decoded = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    offset = 0 if text == decoded else decoded.find(text)
    if offset < 0:
        return None
    return [min(max(e - offset, 0), len(text)) for e in token_char_ends(tokenizer, token_ids, decoded)]


def step_token_spans(steps: Sequence[Step], char_ends: Sequence[int]) -> list[tuple[int, int] | None]:
    """Map steps to inclusive (first_token, last_token) spans given each token's character end.

    The last token of a step is the first token whose decoded text reaches the step's last character, so a
    step score placed there sits on the exact token that finishes the step. A step whose characters were cut
    off (a truncated completion) maps to None.
    """
    spans: list[tuple[int, int] | None] = []
    n = len(char_ends)
    for step in steps:
        first = next((i for i in range(n) if char_ends[i] > step.start), None)
        last = next((i for i in range(n) if char_ends[i] >= step.end), None)
        spans.append(None if first is None or last is None else (first, last))
    return spans


def step_end_tokens(tokenizer, token_ids: Sequence[int], splitter: StepSplitter,
                    text: str | None = None) -> tuple[list[Step], list[int]]:
    """Steps of the decoded ``token_ids`` and, for each, the index of its last token.

    Steps cut off by truncation end at the last token. An empty text gives ([], []).
    """
    if text is None:
        text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    steps = splitter.split(text)
    ends = token_char_ends(tokenizer, token_ids, text)
    last = max(len(ends) - 1, 0)
    out = []
    for span in step_token_spans(steps, ends):
        out.append(last if span is None else span[1])
    return steps, out
