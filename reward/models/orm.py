"""``orm``: outcome reward models (one score per response from a sequence classifier)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from reward.base import RewardError, StepScores
from reward.batching import ForwardBatch, batched_forward
from reward.models._common import ResponseAwareReward
from reward.models._hf import load_model, pad_id_of, render_chat
from reward.registry import register
from reward.steps import Step, StepSplitter


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@register("orm")
class OutcomeRM(ResponseAwareReward):
    """Outcome reward model: an ``AutoModelForSequenceClassification`` with one output, one score per response.

    The input is the chat template of [system (optional), user = prompt, assistant = full response]; the score
    is the model's logit at the last token (raw, or ``sigmoid(logit)`` with ``sigmoid: true``).

    Where the score goes: the **last step** holds the response score. Earlier steps get ``prefix_score`` when
    it is set, else (default) the same score, so ``min``/``last``/``mean`` aggregation all return the response
    score (``product`` does not: use ``last``). ``meta["response_score"]`` always holds it, also for empty
    responses (which have no steps), and ``meta["outcome"] = True`` tells credit assignment that the step
    values are not step-level judgements. ``probabilistic`` is True only with ``sigmoid: true``.

    Args:
        model: path / hub id of the sequence classifier (``num_labels == 1``), or a built model.
        tokenizer: tokenizer or its path; default the model's.
        sigmoid: report ``sigmoid(logit)`` instead of the raw logit.
        system_prompt: optional system turn.
        prefix_score: value for steps before the last (default None: the response score).
        label: the output column to read when the head has several (default 0).
        max_length: longest input; longer inputs are cut **from the left** (the end of the response, where the
            score is read, is kept) and ``meta["truncated"]`` is set.
        device, dtype, token_budget, max_batch_size, trust_remote_code, splitter: as in ``qwen-prm``.

    Example (recipe)::

        reward: {name: orm, args: {model: ./runs/orm, sigmoid: true}}

    Example (in process):
        >>> from rlkit import testing
        >>> tok = testing.tiny_tokenizer()
        >>> rm = OutcomeRM(testing.tiny_sequence_classifier(tok), tokenizer=tok, sigmoid=True)
        >>> s = rm.score(["1+1?"], ["1+1=2\\n\\nSo \\\\boxed{2}."])[0]
        >>> s.scores[0] == s.scores[1] == s.meta["response_score"]
        True
    """

    probabilistic = False

    def __init__(self, model: Any, tokenizer: Any = None, sigmoid: bool = False, system_prompt: str | None = None,
                 prefix_score: float | None = None, label: int = 0, device: str | None = None,
                 dtype: str | None = "auto", max_length: int | None = None, token_budget: int | None = None,
                 max_batch_size: int | None = None, trust_remote_code: bool = False,
                 splitter: StepSplitter | dict | None = None) -> None:
        super().__init__(splitter)
        self.model, self.tokenizer = load_model(model, "sequence-classification", tokenizer=tokenizer, device=device,
                                                dtype=dtype, trust_remote_code=trust_remote_code)
        self.sigmoid, self.system_prompt, self.prefix_score, self.label = sigmoid, system_prompt, prefix_score, label
        self.probabilistic = bool(sigmoid)
        self.pad_token_id = pad_id_of(self.tokenizer, self.model)
        config = getattr(self.model, "config", None)
        if config is not None and getattr(config, "pad_token_id", None) is None:
            # HF sequence classifiers find each row's last token through config.pad_token_id
            config.pad_token_id = self.pad_token_id
        limit = getattr(config, "max_position_embeddings", None) or 4096
        self.max_length = int(max_length) if max_length else min(int(limit), 4096)
        self.token_budget, self.max_batch_size = token_budget, max_batch_size
        self.device = next(self.model.parameters()).device

    def encode(self, prompt: str, response: str) -> list[int]:
        """Token ids of the ORM input (not truncated)."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.encode(render_chat(self.tokenizer, messages), add_special_tokens=False)

    def response_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[float], list[bool]]:
        """One score per (prompt, response) and whether each input was truncated."""
        seqs, cut = [], []
        for p, r in zip(prompts, responses):
            ids = self.encode(p, r)
            cut.append(len(ids) > self.max_length)
            seqs.append(ids[-self.max_length:])
        col = self.label

        def reduce(b: ForwardBatch) -> list[float]:
            logits = b.logits
            if logits.dim() == 3:  # a head returning per-token scores: take each row's last real token
                last = b.attention_mask.sum(dim=1) - 1
                logits = logits[range(logits.shape[0]), last]
            return logits[:, col].float().cpu().tolist()

        raw = batched_forward(self.model, seqs, reduce, pad_token_id=self.pad_token_id, device=self.device,
                              token_budget=self.token_budget, max_batch_size=self.max_batch_size)
        scores = []
        for i, v in enumerate(raw):
            if v is None or not math.isfinite(v):
                raise RewardError(f"orm returned a non-finite score {v!r} for response {i}")
            scores.append(_sigmoid(v) if self.sigmoid else float(v))
        return scores, cut

    def score_responses(self, prompts: Sequence[str], responses: Sequence[str], steps: Sequence[Sequence[Step]],
                        references: Sequence[str | None] | None = None) -> list[StepScores]:
        scores, cut = self.response_scores(prompts, responses)
        out = []
        for st, s, c in zip(steps, scores, cut):
            prefix = s if self.prefix_score is None else float(self.prefix_score)
            vals = [prefix] * (len(st) - 1) + [s] if st else []
            out.append(StepScores(list(st), vals, meta={"outcome": True, "response_score": s, "truncated": c}))
        return out
