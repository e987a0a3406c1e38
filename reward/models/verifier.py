"""`verifier`: rule-based final-answer check with math-verify; 1.0 / 0.0 on the last step, earlier steps 1.0.

Example:
    >>> from reward.models.verifier import answers_match, extract_answer
    >>> extract_answer("So she sold 72.\\n\\nThe answer is \\\\boxed{72}.")
    '72'
    >>> answers_match("\\\\frac{1}{2}", "0.5")
    True
"""

from __future__ import annotations

import re
import threading
from typing import Sequence

from reward.base import RewardError, StepRewardModel
from reward.registry import register
from reward.steps import Step

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"


def _last_boxed(text: str) -> str | None:
    i = text.rfind("\\boxed")
    if i < 0:
        return None
    j = text.find("{", i)
    if j < 0:
        return None
    depth = 0
    for k in range(j, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[j + 1:k].strip()
    return None


def stated_answer(text: str) -> str | None:
    """The final answer ``text`` states explicitly: last \\boxed{...}, else after '####', else after
    'answer is'; None when it states none (a step-by-step search ends a solution at such a step)."""
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    m = re.search(r"####\s*([^\n]+)", text)
    if m:
        return m.group(1).strip()
    m = list(re.finditer(r"answer is[:\s]*\$?([^\n]+?)(?:\.\s*$|\.?\n|$)", text, flags=re.I))
    if m:
        return m[-1].group(1).strip().rstrip(".")
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a response states (:func:`stated_answer`), else its last number. None when the text
    states nothing answer-like."""
    answer = stated_answer(text)
    if answer is not None:
        return answer
    nums = re.findall(_NUMBER, text)
    return nums[-1].replace("$", "").replace(",", "") if nums else None


def reference_answer(reference: str) -> str:
    """The gold answer of a reference: a GSM8K solution ('... #### 72'), a boxed solution, or the answer itself."""
    if "####" in reference:
        return reference.split("####")[-1].strip().replace(",", "")
    boxed = _last_boxed(reference)
    return boxed if boxed else reference.strip()


def answers_match(pred: str | None, gold: str) -> bool:
    """Mathematical equivalence of two answer strings (math-verify), with plain string equality as fallback."""
    if pred is None:
        return False
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        g = parse(f"${gold}$" if "\\" in gold else gold, parsing_timeout=timeout)
        p = parse(f"${pred}$" if "\\" in pred else pred, parsing_timeout=timeout)
        if g and p and verify(g, p, timeout_seconds=timeout):
            return True
    except Exception:  # math-verify raises on exotic input; fall through to the string check
        pass
    norm = lambda s: re.sub(r"[\s$,]|\\!", "", s).rstrip(".")  # noqa: E731
    return norm(pred) == norm(gold)


def is_correct(response: str, reference: str) -> bool:
    """Whether ``response``'s final answer matches ``reference``'s."""
    return answers_match(extract_answer(response), reference_answer(reference))


@register("verifier")
class AnswerVerifier(StepRewardModel):
    """Outcome check against the reference answer: last step 1.0 if the final answer is right else 0.0.

    Earlier steps get ``prefix_score`` (default 1.0, so min/product aggregation equal the outcome).
    Needs ``references``.

    Example:
        >>> rm = AnswerVerifier()
        >>> rm.score(["q"], ["48/2 = 24\\n\\nThe answer is \\\\boxed{72}"], ["#### 72"])[0].scores
        [1.0, 1.0]
    """

    def __init__(self, prefix_score: float = 1.0, splitter=None) -> None:
        super().__init__(splitter)
        self.prefix_score = prefix_score

    def score_steps(self, prompts, steps: Sequence[Sequence[Step]], references=None) -> list[list[float]]:
        if references is None or any(r is None for r in references):
            raise RewardError("reward 'verifier' needs a reference answer for every response")
        out = []
        for st, ref in zip(steps, references):
            if not st:
                out.append([])
                continue
            text = "\n\n".join(s.text for s in st)
            ok = 1.0 if is_correct(text, ref) else 0.0
            out.append([self.prefix_score] * (len(st) - 1) + [ok])
        return out
