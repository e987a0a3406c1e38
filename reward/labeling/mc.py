"""Monte-Carlo step labels: roll out N completions from every step prefix and check their final answers.

A step is labelled from the completions that continue the response after it: hard label 1 when at least one
completion reaches the reference answer (the default, "any" was best in the Qwen2.5-Math-PRM study), soft
label = the fraction that do. The final step needs no rollout: its label is the verifier's check of the whole
response. Steps after the first negative step (no completion right) are dropped from the labels. All step
prefixes of a response (of several, with ``items_per_call``) are rolled out in one completer call, since one
large generation batch costs far less than a call per step.

The completer is any callable ``complete(prefixes: list[str], n: int) -> list[list[str]]`` returning n
continuations of each prefix. A prefix is the text to continue: ``completer.prompt(problem)`` (when the
completer has a ``prompt`` method, e.g. a chat template) followed by the steps so far, each followed by the
step separator. :class:`HFCompleter` (transformers generate) and :class:`VLLMCompleter` are provided;
:func:`build_completer` picks vLLM when asked and importable.

Example (a completer that always reaches the answer):
    >>> right = lambda prefixes, n: [["\\\\boxed{72}"] * n for _ in prefixes]
    >>> item = {"id": "a", "problem": "p", "steps": ["48/2=24", "48+24=73", "\\\\boxed{73}"], "reference": "72"}
    >>> mc_label_item(item, right, n=2)["labels"]
    [1, 1, 0]
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from reward.generation import encode_prefix, generate_texts
from reward.labeling.io import ResumableWriter
from reward.models.verifier import is_correct
from rlkit.models import resolve_model
from rlkit.vllm_support import fixed_model_llm_kwargs, per_request_seed

log = logging.getLogger(__name__)

Completer = Callable[[list[str], int], list[list[str]]]
STEP_JOIN = "\n\n"


def _prompt_of(completer: Any, problem: str) -> str:
    fn = getattr(completer, "prompt", None)
    return fn(problem) if callable(fn) else f"{problem}{STEP_JOIN}"


def step_prefixes(completer: Any, problem: str, steps: Sequence[str], step_join: str = STEP_JOIN) -> list[str]:
    """The text to continue after each step but the last (``len(steps) - 1`` prefixes). ``step_join`` is the
    text between steps: keep it equal to the separator the responses were split on (``"\\n"`` for
    one-step-per-line responses), so a prefix reads as the model wrote it."""
    head = _prompt_of(completer, problem)
    return [head + step_join.join(steps[: k + 1]) + step_join for k in range(len(steps) - 1)]


def mc_label_item(item: Mapping, completer: Completer, n: int = 8, mode: str = "hard",
                  verify: Callable[[str, str], bool] | None = None, step_join: str = STEP_JOIN) -> dict:
    """Label one item ``{"id", "problem", "steps", "reference"}``; returns a labelled record.

    The record adds ``labels`` (up to and including the first negative step), ``earliest_error`` (-1: none),
    ``mc_correct`` (right completions per rolled-out step; the final step's entry is n or 0 from the
    verifier), ``mc_n`` and ``method: "mc"``.
    """
    return mc_label_items([item], completer, n, mode, verify, step_join)[0]


def mc_label_items(items: Sequence[Mapping], completer: Completer, n: int = 8, mode: str = "hard",
                   verify: Callable[[str, str], bool] | None = None, step_join: str = STEP_JOIN) -> list[dict]:
    """Label several items with one completer call for all their step prefixes (bigger generation batches:
    much faster on CPU and GPU alike); one record per item, as :func:`mc_label_item` gives."""
    if mode not in ("hard", "soft"):
        raise ValueError(f"unknown MC label mode {mode!r} (allowed: hard, soft)")
    if n < 1:
        raise ValueError(f"MC needs n >= 1 completions, got {n}")
    if verify is None:
        verify = is_correct
    per_item = [step_prefixes(completer, it["problem"], list(it["steps"]), step_join) for it in items]
    prefixes = [p for ps in per_item for p in ps]
    outs = completer(prefixes, n) if prefixes else []
    if len(outs) != len(prefixes) or any(len(o) != n for o in outs):
        raise ValueError(f"completer returned {[len(o) for o in outs]} completions for {len(prefixes)} "
                         f"prefixes x {n}")
    records, at = [], 0
    for it, ps in zip(items, per_item):
        records.append(_record(it, outs[at:at + len(ps)], n, mode, verify, step_join))
        at += len(ps)
    return records


def _record(item: Mapping, outs: Sequence[Sequence[str]], n: int, mode: str, verify: Callable[[str, str], bool],
            step_join: str) -> dict:
    steps, ref = list(item["steps"]), str(item["reference"])
    counts = []
    for k, comps in enumerate(outs):
        partial = step_join.join(steps[: k + 1]) + step_join
        counts.append(sum(bool(verify(partial + c, ref)) for c in comps))
    counts.append(n if verify(step_join.join(steps), ref) else 0)
    labels: list[float] = []
    earliest = -1
    for k, c in enumerate(counts):
        labels.append((1 if c > 0 else 0) if mode == "hard" else c / n)
        if c == 0:
            earliest = k
            break
    return {"id": item["id"], "problem": item["problem"], "steps": steps, "reference": ref,
            "labels": labels, "earliest_error": earliest, "mc_correct": counts[: len(labels)], "mc_n": n,
            "label_mode": mode, "method": "mc"}


def run_mc(items: Iterable[Mapping], completer: Completer, output: str, n: int = 8, mode: str = "hard",
           verify: Callable[[str, str], bool] | None = None, progress: Callable[[str], None] | None = None,
           limit: int | None = None, step_join: str = STEP_JOIN, items_per_call: int = 1) -> dict[str, int]:
    """Label ``items`` into the JSONL ``output``, one appended line per finished item; resumable.

    Items whose id is already in ``output`` are skipped, so an interrupted run continues where it stopped.
    ``items_per_call`` items share one completer call (their records are written when it returns).
    Returns counts: total, skipped (already done), labelled, with_error.
    """
    if items_per_call < 1:
        raise ValueError(f"items_per_call must be >= 1, got {items_per_call}")
    items = list(items)
    stats = {"total": len(items), "skipped": 0, "labelled": 0, "with_error": 0}
    t0 = time.time()
    with ResumableWriter(output) as w:
        todo = w.pending(items)
        stats["skipped"] = len(items) - len(todo)
        todo = todo[:limit]
        for i in range(0, len(todo), items_per_call):
            for rec in mc_label_items(todo[i:i + items_per_call], completer, n, mode, verify, step_join):
                w.write(rec)
                stats["labelled"] += 1
                stats["with_error"] += rec["earliest_error"] != -1
                if progress:
                    progress(f"[mc] {stats['labelled'] + stats['skipped']}/{stats['total']} id={rec['id']} "
                             f"labels={rec['labels']} ({time.time() - t0:.0f}s)")
    return stats


# ----------------------------------------------------------------------------------------------- completers
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def chat_prompt(tokenizer, problem: str, system_prompt: str | None = SYSTEM_PROMPT) -> str:
    """The generation prompt for ``problem`` through the tokenizer's chat template (plain text without one)."""
    msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": problem}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return (system_prompt + "\n\n" if system_prompt else "") + problem + "\n\n"


class HFCompleter:
    """Sampling with transformers ``generate``: n continuations of each prefix.

    Args:
        model, tokenizer: a causal LM and its tokenizer, or ``model`` as a path/name (loaded here;
            ``embedded:...`` names resolve through rlkit.models).
        max_new_tokens, temperature, top_p: sampling settings. batch_size: prefixes per generate call.
        system_prompt: system turn of :meth:`prompt`.
    """

    def __init__(self, model: Any, tokenizer: Any = None, max_new_tokens: int = 256, temperature: float = 0.7,
                 top_p: float = 1.0, batch_size: int = 4, system_prompt: str | None = SYSTEM_PROMPT,
                 seed: int | None = 0) -> None:
        if isinstance(model, str):
            model, tokenizer = load_causal_lm(model)
        if tokenizer is None:
            raise ValueError("HFCompleter needs a tokenizer with a model object")
        self.model, self.tok = model.eval(), tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.system_prompt, self.seed = batch_size, system_prompt, seed

    def prompt(self, problem: str) -> str:
        return chat_prompt(self.tok, problem, self.system_prompt)

    def __call__(self, prefixes: list[str], n: int) -> list[list[str]]:
        if self.seed is not None:
            torch.manual_seed(self.seed)
        return generate_texts(self.model, self.tok, prefixes, self.max_new_tokens, n=n, temperature=self.temperature,
                              top_p=self.top_p, batch_size=self.batch_size)


class VLLMCompleter:
    """Sampling with vLLM (``vllm.LLM``): n continuations of each prefix in one call."""

    def __init__(self, model: str, max_new_tokens: int = 256, temperature: float = 0.7, top_p: float = 1.0,
                 system_prompt: str | None = SYSTEM_PROMPT, seed: int | None = 0, **llm_args: Any) -> None:
        from vllm import LLM  # noqa: F401  (import error tells the caller vLLM is absent)


        path = resolve_model_path(model)
        self.llm = LLM(model=path, seed=seed or 0, **fixed_model_llm_kwargs(llm_args))
        self.tok = self.llm.get_tokenizer()
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.system_prompt, self.seed = system_prompt, seed

    def prompt(self, problem: str) -> str:
        return chat_prompt(self.tok, problem, self.system_prompt)

    def __call__(self, prefixes: list[str], n: int) -> list[list[str]]:
        from vllm import SamplingParams


        sp = SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_new_tokens,
                            seed=per_request_seed(self.seed))
        # token ids, a trailing separator as in running text (see encode_prefix), a BOS as vLLM would add
        prompts = [{"prompt_token_ids": encode_prefix(self.tok, p, add_special_tokens=True)} for p in prefixes]
        res = self.llm.generate(prompts, sp, use_tqdm=False)
        return [[o.text for o in r.outputs] for r in res]


def resolve_model_path(name: str) -> str:
    """A local folder for ``name``: ``embedded:...`` through rlkit.models, anything else as given."""
    return resolve_model(name)


def load_causal_lm(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path)
    return model, tok


def build_completer(model: str, backend: str = "hf", **kwargs: Any) -> Completer:
    """A completer for ``model``: vLLM when ``backend == "vllm"`` and importable (else HF generate, logged)."""
    if backend not in ("hf", "vllm"):
        raise ValueError(f"unknown completer backend {backend!r} (allowed: hf, vllm)")
    if backend == "vllm":
        try:
            import vllm  # noqa: F401
        except Exception as e:  # ImportError, or a broken install raising something else
            log.warning("vLLM is not importable (%s); MC rollouts use HF generate", e)
        else:
            kw = {k: v for k, v in kwargs.items() if k != "batch_size"}
            return VLLMCompleter(model, **kw)
    return HFCompleter(model, **kwargs)
