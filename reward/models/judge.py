"""``llm-judge``: a generative critic names the earliest wrong step (ProcessBench-style critique).

Pieces, usable on their own:

* :func:`build_judge_prompt` - the critique request for a problem and its numbered steps.
* :func:`parse_verdict` - robust reading of the critic's answer -> :class:`Verdict` (earliest wrong step,
  0-based; -1 = no error; ``None`` = unparsable, never guessed).
* :func:`labels_from_verdict` - step labels: 1 before the error, 0 at it, None after (all None if unparsable).
* :class:`LLMJudge` (registered as ``llm-judge``) - HF ``generate`` or vLLM generation + the above;
  :meth:`LLMJudge.earliest_errors` is the entry point for PRM data labelling (issue 4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from reward.base import RewardError, StepRewardModel, StepScores
from reward.generation import generate_texts
from reward.models._hf import load_model, load_tokenizer, render_chat
from reward.registry import register
from reward.steps import Step, StepSplitter
from rlkit.vllm_support import fixed_model_llm_kwargs

BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class Verdict:
    """A critic's verdict on one solution.

    ``index``: the earliest wrong step, 0-based; -1 when the critic says every step is correct; None when the
    answer could not be read (``how`` then says why). ``how`` names the rule that read it ("boxed", "phrase",
    "step-is-wrong", "no-error-phrase", "last-line") or the failure ("unparsable", "out-of-range",
    "unfinished-thinking", "boxed-unreadable"). ``raw`` is the critic's full text.
    """

    index: int | None
    how: str
    raw: str = ""

    @property
    def unparsable(self) -> bool:
        return self.index is None


def solution_lines(problem: str, steps: Sequence[str], first_index: int = 1) -> list[str]:
    """The problem and its numbered steps as a critic reads them ("Problem:", ..., "Solution:", "Step k: ...",
    one blank line after each step): the layout every judge prompt here uses, the critique verifier's too."""
    lines = ["Problem:", problem.strip(), "", "Solution:"]
    for j, s in enumerate(steps):
        lines += [f"Step {first_index + j}: {s.strip()}", ""]
    return lines


def build_judge_prompt(problem: str, steps: Sequence[str], first_index: int = 1, reference: str | None = None,
                       hint: str | None = None) -> str:
    """The user message asking a critic for the earliest wrong step.

    Steps are shown as "Step k:" with k starting at ``first_index``; the critic answers ``\\boxed{k}`` or
    ``\\boxed{-1}``. ``reference`` (the gold final answer) and ``hint`` (any extra text, e.g. whether the final
    answer is known to be right) make the prompt label-aware when given.

    Example:
        >>> print(build_judge_prompt("1+1?", ["1+1=3", "So 3."]).splitlines()[6])
        Step 1: 1+1=3
    """
    lines = ["Review the following step-by-step solution to a math problem.", "",
             *solution_lines(problem, steps, first_index)]
    if reference is not None:
        lines += [f"For reference, the correct final answer is: {reference.strip()}", ""]
    if hint:
        lines += [hint.strip(), ""]
    lines += [
        "Go through the steps in order and check each one: calculations, claims, logic, and whether it follows "
        "from the problem and the previous steps. Find the earliest step that contains an error; what happens "
        "after that step does not matter.",
        f"End your reply with the number of that step in \\boxed{{}}, e.g. \\boxed{{{first_index + 1}}}, or with "
        "\\boxed{-1} if all steps are correct.",
    ]
    return "\n".join(lines)


_NONE = r"(?:none|no\s+errors?|no\s+mistakes?|no\s+wrong\s+steps?|n/?a|null|nil|all\s+(?:steps\s+)?(?:are\s+)?correct|correct)"
_NUM = r"(?:step|paragraph)?\s*#?\s*(-?\d+)"
_PHRASE = re.compile(r"(?:earliest|first)\s+(?:error|mistake|incorrect\s+step|wrong\s+step|erroneous\s+step)"
                     r"[^.\n\d-]{0,40}?\b(?:step|paragraph)\s*#?\s*(-?\d+)", re.I)
_ANSWER = re.compile(r"(?:final\s+answer|final\s+verdict|answer|verdict)\s*(?:is|:|=)\s*\**\s*" + _NUM, re.I)
_STEP_BAD = re.compile(r"\b(?:step|paragraph)\s*#?\s*(\d+)\s*(?:\)|:)?\s+(?:is|was|contains|has)\s+(?:the\s+)?"
                       r"(?:first\s+|earliest\s+)?(?:incorrect|wrong|erroneous|invalid|flawed|an?\s+(?:error|mistake))",
                       re.I)
_NO_ERROR = re.compile(r"\b(?:there\s+(?:are|is)\s+no\s+(?:errors?|mistakes?)|no\s+(?:errors?|mistakes?)\s+"
                       r"(?:were\s+|was\s+)?(?:found|detected)|all\s+(?:the\s+|of\s+the\s+)?steps\s+are\s+"
                       r"(?:correct|valid|right))", re.I)


def _boxed_contents(text: str) -> list[str]:
    out, key = [], "\\boxed"
    i = text.find(key)
    while i >= 0:
        j = i + len(key)
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            depth, k = 0, j
            while k < len(text):
                depth += {"{": 1, "}": -1}.get(text[k], 0)
                if depth == 0:
                    out.append(text[j + 1:k])
                    break
                k += 1
        i = text.find(key, i + len(key))
    return out


def _read_boxed(content: str) -> int | str | None:
    s = re.sub(r"\\(?:text|mathrm|textbf|mathbf)\s*\{([^{}]*)\}", r"\1", content)
    s = s.replace("$", "").replace("\\", " ").strip().rstrip(".").strip()
    m = re.fullmatch(r"(?:step|paragraph)?\s*#?\s*(-?\s*\d+)", s, re.I)
    if m:
        return int(m.group(1).replace(" ", ""))
    if re.fullmatch(_NONE, s, re.I):
        return "none"
    return None


def parse_verdict(text: str, n_steps: int, first_index: int = 1) -> Verdict:
    """Read the earliest wrong step (0-based, -1 = none, None = unparsable) from a critic's reply.

    Rules, first that applies wins: (1) an unclosed ``<think>`` block -> unparsable; text after ``</think>``
    is what counts. (2) the last ``\\boxed{...}`` (a number, "Step k", or a none-word like "none"/"no error";
    anything else in the box -> unparsable, not a guess). (3) "the earliest/first error is in step k" (last such
    phrase). (4) "final answer/verdict: k". (5) "step k is wrong/incorrect/..." (the lowest k). (6) "there are no
    errors" / "all steps are correct" -> -1. (7) a last line that is only a number. A step number outside
    ``first_index .. first_index + n_steps - 1`` (other than -1) -> unparsable ("out-of-range").

    Example:
        >>> parse_verdict("Step 2 divides wrongly. \\\\boxed{2}", n_steps=3).index
        1
        >>> parse_verdict("All steps are correct.", n_steps=3).index
        -1
        >>> parse_verdict("I am not sure.", n_steps=3).index is None
        True
    """
    raw = text or ""
    body = raw
    if "</think>" in body:
        body = body.rsplit("</think>", 1)[1]
    elif "<think>" in body:
        return Verdict(None, "unfinished-thinking", raw)

    def to_index(k: int, how: str) -> Verdict:
        if k == -1:
            return Verdict(-1, how, raw)
        if first_index <= k < first_index + n_steps:
            return Verdict(k - first_index, how, raw)
        return Verdict(None, "out-of-range", raw)

    boxed = _boxed_contents(body)
    if boxed:
        v = _read_boxed(boxed[-1])
        if v == "none":
            return Verdict(-1, "boxed", raw)
        if isinstance(v, int):
            return to_index(v, "boxed")
        return Verdict(None, "boxed-unreadable", raw)
    found = _PHRASE.findall(body)
    if found:
        return to_index(int(found[-1]), "phrase")
    found = _ANSWER.findall(body)
    if found:
        return to_index(int(found[-1]), "phrase")
    found = _STEP_BAD.findall(body)
    if found:
        return to_index(min(int(k) for k in found), "step-is-wrong")
    if _NO_ERROR.search(body):
        return Verdict(-1, "no-error-phrase", raw)
    lines = [ln for ln in body.strip().splitlines() if ln.strip()]
    if lines:
        m = re.fullmatch(r"\W*?(-?\d+)\W*", lines[-1].strip())
        if m:
            return to_index(int(m.group(1)), "last-line")
    return Verdict(None, "unparsable", raw)


def labels_from_verdict(index: int | None, n_steps: int) -> list[int | None]:
    """1 before the earliest error, 0 at it, None after it; all 1 for -1; all None when unparsable (None).

    Example:
        >>> labels_from_verdict(1, 4), labels_from_verdict(-1, 2), labels_from_verdict(None, 2)
        ([1, 0, None, None], [1, 1], [None, None])
    """
    if index is None:
        return [None] * n_steps
    if index < 0:
        return [1] * n_steps
    return [1] * index + [0] + [None] * (n_steps - index - 1)


@register("llm-judge")
class LLMJudge(StepRewardModel):
    """A generative critic as a step reward: it reads the numbered steps and names the earliest wrong one.

    Per response: ``labels`` = 1 before the error, 0 at it, None after (all 1 when the critic finds no error);
    ``scores`` = 1.0 for label 1, 0.0 at and after the error (so ``first_error()``, ``min`` and ``product``
    agree with the critic). An unparsable reply is never guessed: all labels None, all scores
    ``unparsable_score`` (default 0.5), ``meta["unparsable"] = True``; ``self.stats`` counts calls and
    unparsable replies over the judge's life. ``meta`` also holds ``verdict`` (0-based, -1, or None),
    ``parse`` (the rule that read it) and ``critique`` (the raw reply).

    Args:
        model: a chat causal LM: path / hub id, or a built model (HF backend). Not needed with ``generate_fn``.
        tokenizer: tokenizer or its path; default the model's.
        backend: "hf" (``model.generate``, batched under ``token_budget``) or "vllm" (needs ``vllm``
            importable and ``model`` a path; ``vllm_args`` go to ``vllm.LLM``).
        generate_fn: optional callable ``list[str] (chat-formatted prompts) -> list[str]`` replacing the
            backend (a custom server, or canned replies in tests).
        max_new_tokens, temperature, top_p: sampling (temperature 0 = greedy).
        system_prompt: optional system turn for the critic.
        first_index: number of the first step as shown to the critic (1: "Step 1", ...; 0 for ProcessBench
            style numbering).
        use_reference: show the reference final answer to the critic (label-aware prompting).
        unparsable_score: step score for responses whose verdict cannot be read.
        device, dtype, token_budget, max_batch_size, trust_remote_code, splitter: as in ``qwen-prm``
            (``token_budget`` counts prompt + ``max_new_tokens`` per row).

    Example (recipe)::

        reward: {name: llm-judge, args: {model: Qwen/Qwen2.5-72B-Instruct, backend: vllm, max_new_tokens: 2048}}

    Example (canned critic):
        >>> judge = LLMJudge(generate_fn=lambda prompts: ["Step 2 is wrong: 3*4 is 12. \\\\boxed{2}"] * len(prompts))
        >>> s = judge.score(["q"], ["3*4=12\\n\\n12+1=14\\n\\nSo 14."])[0]
        >>> s.labels, s.scores
        ([1, 0, None], [1.0, 0.0, 0.0])
        >>> judge.earliest_errors(["q"], [["a", "b"]])[0].index
        1
    """

    probabilistic = True

    def __init__(self, model: Any = None, tokenizer: Any = None, backend: str = "hf",
                 generate_fn: Callable[[list[str]], list[str]] | None = None, max_new_tokens: int = 1024,
                 temperature: float = 0.0, top_p: float = 1.0, system_prompt: str | None = None,
                 first_index: int = 1, use_reference: bool = False, unparsable_score: float = 0.5,
                 device: str | None = None, dtype: str | None = "auto", token_budget: int = 65536,
                 max_batch_size: int | None = None, trust_remote_code: bool = False,
                 vllm_args: dict[str, Any] | None = None, splitter: StepSplitter | dict | None = None) -> None:
        super().__init__(splitter)
        if backend not in BACKENDS:
            raise ValueError(f"unknown llm-judge backend {backend!r} (allowed: {', '.join(BACKENDS)})")
        self.backend, self.generate_fn = backend, generate_fn
        self.max_new_tokens, self.temperature, self.top_p = int(max_new_tokens), float(temperature), float(top_p)
        self.system_prompt, self.first_index, self.use_reference = system_prompt, int(first_index), use_reference
        self.unparsable_score = float(unparsable_score)
        self.token_budget, self.max_batch_size = token_budget, max_batch_size
        self.stats = {"calls": 0, "unparsable": 0}
        self.model = self.tokenizer = self._llm = None
        if generate_fn is not None:
            if tokenizer is not None or isinstance(model, str):
                self.tokenizer = load_tokenizer(model, tokenizer, trust_remote_code)
            return
        if model is None:
            raise ValueError("llm-judge needs a model (or a generate_fn)")
        if backend == "vllm":
            if not isinstance(model, str):
                raise ValueError("llm-judge backend 'vllm' needs model to be a path or hub id")
            try:
                import vllm
            except Exception as e:  # ImportError, or vllm failing to import its own dependencies
                raise RewardError(f"llm-judge backend 'vllm' needs an importable vllm ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); use backend: hf") from None

            kw = fixed_model_llm_kwargs({"model": model, "trust_remote_code": trust_remote_code, **(vllm_args or {})})
            if dtype not in (None, "auto"):
                kw.setdefault("dtype", dtype)
            self._llm = vllm.LLM(**kw)
            self._sampling = vllm.SamplingParams(temperature=self.temperature, top_p=self.top_p,
                                                 max_tokens=self.max_new_tokens)
            self.tokenizer = self._llm.get_tokenizer()
            return
        self.model, self.tokenizer = load_model(model, "causal-lm", tokenizer=tokenizer, device=device, dtype=dtype,
                                                trust_remote_code=trust_remote_code)
        self.device = next(self.model.parameters()).device

    # ---- generation -------------------------------------------------------------------------------------
    def chat_prompt(self, user: str) -> str:
        """The chat-formatted critic input for a user message (ChatML when no tokenizer is known)."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": user})
        if self.tokenizer is None:
            return render_chat(object(), messages, add_generation_prompt=True)
        return render_chat(self.tokenizer, messages, add_generation_prompt=True)

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Critic replies for chat-formatted prompts (one reply each, in order)."""
        prompts = list(prompts)
        if not prompts:
            return []
        if self.generate_fn is not None:
            out = list(self.generate_fn(prompts))
        elif self._llm is not None:
            out = [o.outputs[0].text if o.outputs else "" for o in self._llm.generate(prompts, self._sampling)]
        else:
            out = self._hf_generate(prompts)
        if len(out) != len(prompts):
            raise RewardError(f"llm-judge generator returned {len(out)} replies for {len(prompts)} prompts")
        return [o if isinstance(o, str) else "" for o in out]

    def _hf_generate(self, prompts: list[str]) -> list[str]:
        return [o[0] for o in generate_texts(self.model, self.tokenizer, prompts, self.max_new_tokens,
                                             temperature=self.temperature, top_p=self.top_p,
                                             batch_size=self.max_batch_size, token_budget=self.token_budget)]

    # ---- verdicts ---------------------------------------------------------------------------------------
    def earliest_errors(self, problems: Sequence[str], steps: Sequence[Sequence[str]],
                        references: Sequence[str | None] | None = None,
                        hints: Sequence[str | None] | None = None) -> list[Verdict]:
        """The critic's earliest wrong step for each (problem, steps) pair (steps as plain strings).

        Returns :class:`Verdict` objects (``index`` 0-based, -1 = no error, None = unparsable). The reference
        answer is shown to the critic only when the judge was built with ``use_reference=True`` (and one is
        given); ``hints`` adds free text per item (e.g. "The final answer of this solution is wrong.").
        Solutions with no steps get ``Verdict(-1, "no-steps")`` without a call.
        """
        if len(problems) != len(steps):
            raise RewardError(f"{len(problems)} problems for {len(steps)} step lists")
        for name, extra in (("references", references), ("hints", hints)):
            if extra is not None and len(extra) != len(steps):
                raise RewardError(f"{len(extra)} {name} for {len(steps)} step lists")
        todo = [i for i, st in enumerate(steps) if len(st)]
        prompts = []
        for i in todo:
            ref = references[i] if (references is not None and self.use_reference) else None
            hint = hints[i] if hints is not None else None
            prompts.append(self.chat_prompt(build_judge_prompt(problems[i], steps[i], self.first_index, ref, hint)))
        replies = self.generate(prompts)
        verdicts = [Verdict(-1, "no-steps")] * len(steps)
        for i, reply in zip(todo, replies):
            v = parse_verdict(reply, len(steps[i]), self.first_index)
            verdicts[i] = v
            self.stats["calls"] += 1
            self.stats["unparsable"] += int(v.unparsable)
        return verdicts

    def score_steps(self, prompts: Sequence[str], steps: Sequence[Sequence[Step]],
                    references: Sequence[str | None] | None = None) -> list[StepScores]:
        verdicts = self.earliest_errors(prompts, [[s.text for s in st] for st in steps], references)
        out = []
        for st, v in zip(steps, verdicts):
            labels = labels_from_verdict(v.index, len(st))
            if v.unparsable:
                scores = [self.unparsable_score] * len(st)
            else:
                scores = [1.0 if lab == 1 else 0.0 for lab in labels]
            meta = {"verdict": v.index, "parse": v.how, "unparsable": v.unparsable, "critique": v.raw}
            out.append(StepScores(list(st), scores, labels=labels, meta=meta))
        return out


def earliest_errors(judge: LLMJudge, problems: Sequence[str], steps: Sequence[Sequence[str]],
                    references: Sequence[str | None] | None = None,
                    hints: Sequence[str | None] | None = None) -> list[Verdict]:
    """Function form of :meth:`LLMJudge.earliest_errors` (for labelling pipelines)."""
    return judge.earliest_errors(problems, steps, references, hints)
