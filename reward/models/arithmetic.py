"""`arithmetic`: a rule-based step checker for GSM8K-style arithmetic, usable as a PRM on CPU with no model.

Each step's equations ("48 / 2 = 24", GSM8K calculator annotations "<<48/2=24>>") are evaluated exactly;
a step scores 1.0 when all its equations hold, 0.0 when any is wrong, and ``neutral`` when it has none.
With ``verify_final`` and a reference answer, the last step scores 1.0/0.0 by the final answer instead.

Example:
    >>> rm = ArithmeticChecker()
    >>> rm.score(["q"], ["48 / 2 = 24\\n\\n48 + 24 = 73\\n\\nSo 73."], None)[0].scores
    [1.0, 0.0, 0.5]
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction
from typing import Sequence

from reward.base import StepRewardModel
from reward.models.verifier import is_correct
from reward.registry import register
from reward.steps import Step

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_NUM = r"\d+(?:\.\d+)?"
# An expression of >= 2 numbers joined by operators (parentheses allowed), "=", then a number.
_EQUATION = re.compile(
    rf"(?P<lhs>\(*\s*{_NUM}(?:\s*\)*\s*[-+*/×÷x]\s*\(*\s*{_NUM})+\s*\)*)\s*=\s*(?P<rhs>-?{_NUM})"
)


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    raise ValueError("unsupported expression")


def check_equations(text: str, rel_tol: float = 1e-4) -> list[bool]:
    """Truth of every "expression = number" found in ``text`` (commas in numbers and '$' are ignored)."""
    clean = re.sub(r"(?<=\d),(?=\d{3})", "", text).replace("$", "")
    results = []
    for m in _EQUATION.finditer(clean):
        lhs = m.group("lhs").replace("×", "*").replace("÷", "/").replace("x", "*")
        try:
            value = _eval(ast.parse(lhs.strip(), mode="eval"))
        except (ValueError, SyntaxError, ZeroDivisionError):
            continue
        rhs = Fraction(m.group("rhs"))
        results.append(abs(value - rhs) <= rel_tol * max(1, abs(rhs)))
    return results


@register("arithmetic")
class ArithmeticChecker(StepRewardModel):
    """Scores steps by checking their arithmetic exactly; see the module docstring."""

    def __init__(self, neutral: float = 0.5, verify_final: bool = False, splitter=None) -> None:
        super().__init__(splitter)
        self.neutral, self.verify_final = neutral, verify_final

    def score_steps(self, prompts, steps: Sequence[Sequence[Step]], references=None) -> list[list[float]]:
        out = []
        for i, st in enumerate(steps):
            scores = []
            for s in st:
                eqs = check_equations(s.text)
                scores.append(self.neutral if not eqs else float(all(eqs)))
            if self.verify_final and st and references is not None and references[i] is not None:
                scores[-1] = 1.0 if is_correct("\n\n".join(s.text for s in st), references[i]) else 0.0
            out.append(scores)
        return out
