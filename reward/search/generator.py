"""The policy side of PRM-guided search: what a search asks of a generator, and what it gets back.

A :class:`Generator` continues text prefixes: ``generate(prefixes, n, stop, max_new_tokens)`` returns, for
each prefix, ``n`` sampled :class:`Continuation` s, each cut at the first ``stop`` string (the step
separator; ``None``: run to EOS or the token cap) and carrying how many tokens were generated for it, so a
search can account for its compute exactly. :class:`reward.search.hf.HFGenerator` (transformers generate,
the default) and :class:`reward.search.vllm_generator.VLLMGenerator` implement it; a test can script one.

Example (a scripted generator that always writes one step and then stops):
    >>> class OneStep:
    ...     def generate(self, prefixes, n, stop=None, max_new_tokens=64):
    ...         return [[Continuation("2 * 3 = 6", tokens=6, finish="stop")] * n for _ in prefixes]
    >>> isinstance(OneStep(), Generator)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, runtime_checkable

#: why a continuation ended: it reached the stop string, the model's end-of-sequence token, or the token cap
Finish = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class Continuation:
    """One sampled continuation: its text (without the stop string), the tokens generated for it (the
    stop string's and the EOS token included), and why it ended."""

    text: str
    tokens: int
    finish: Finish


@dataclass(frozen=True)
class Problem:
    """One problem to search on: ``prompt`` is the text the policy continues (chat template applied),
    ``question`` what the PRM is shown, ``reference`` the gold answer (used only to grade, never shown to the
    PRM or the policy)."""

    prompt: str
    question: str
    reference: str | None = None


@runtime_checkable
class Generator(Protocol):
    """Samples continuations of text prefixes (see the module docstring)."""

    def generate(self, prefixes: Sequence[str], n: int, stop: str | None = None,
                 max_new_tokens: int = 128) -> list[list[Continuation]]:
        """``n`` continuations per prefix, in the order of ``prefixes``."""
        ...


def check_continuations(out: Sequence[Sequence[Continuation]], n_prefixes: int, n: int) -> None:
    """A generator's answer has the asked-for shape, or a ValueError naming what came back."""
    if len(out) != n_prefixes or any(len(o) != n for o in out):
        raise ValueError(f"generator returned {[len(o) for o in out]} continuations for {n_prefixes} prefixes "
                         f"x {n}")
    for o in out:
        for c in o:
            if not isinstance(c, Continuation) or c.tokens < 0 or c.finish not in ("stop", "eos", "length"):
                raise ValueError(f"generator returned a malformed continuation: {c!r}")
