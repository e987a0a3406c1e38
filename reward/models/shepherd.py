"""``shepherd-prm``: Math-Shepherd-style PRMs read from a causal LM's head at a step tag.

Input format: ``template.format(question=..., response=...)`` where the response is the steps, each followed
by ``" " + step_tag``, joined by ``"\\n"`` (Math-Shepherd: ``"Step 1: ... ки\\nStep 2: ... ки"``). The step
score is ``softmax([logit(good_token), logit(bad_token)])[0]`` at the last token of each tag, i.e. the
model's P("+") against P("-") for the token that would follow the tag.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from reward.base import RewardError, StepRewardModel, StepScores
from reward.batching import ForwardBatch, batched_forward
from reward.models._hf import load_model, pad_id_of, render_chat, single_token_id
from reward.registry import register
from reward.steps import Step, StepSplitter


@register("shepherd-prm")
class ShepherdPRM(StepRewardModel):
    """Math-Shepherd-style process reward: P(good) vs P(bad) from the LM head at a tag after every step.

    Args:
        model: path / hub id of a causal LM, or a built one (e.g. ``peiyi9979/math-shepherd-mistral-7b-prm``).
        tokenizer: tokenizer or its path; default the model's.
        step_tag: the text put after each step (default "ки", Math-Shepherd's tag). It may span several tokens;
            the score is read at its last token.
        good_token, bad_token: the tokens compared at the tag (default "+" and "-"); each must be one token.
        good_token_id, bad_token_id: explicit ids, overriding the two above (for tokenizers where the trained
            tokens are e.g. "▁+" and cannot be spelled unambiguously).
        template: the input text, with ``{question}`` and ``{response}`` (default ``"{question} {response}"``).
        step_joiner: text between tagged steps (default "\\n").
        use_chat_template: wrap as a user turn (question) + assistant turn (tagged steps) instead of
            ``template``.
        device, dtype, max_length, token_budget, max_batch_size, trust_remote_code, splitter: as in ``qwen-prm``.
            Steps whose tag falls beyond ``max_length`` (the input is cut at the right) get the last scored step's
            score (0.0 when none was scored); ``meta["unscored_steps"]`` counts them.

    Example (recipe)::

        reward: {name: shepherd-prm, args: {model: peiyi9979/math-shepherd-mistral-7b-prm}}

    Example (in process):
        >>> from rlkit import testing
        >>> tok = testing.tiny_tokenizer()
        >>> rm = ShepherdPRM(testing.tiny_causal_lm(tok), tokenizer=tok, step_tag="<ki>")
        >>> rm.format_input("1+1?", ["1+1=2", "So 2."])
        '1+1? 1+1=2 <ki>\\nSo 2. <ki>'
        >>> len(rm.score(["1+1?"], ["1+1=2\\n\\nSo 2."])[0].scores)
        2
    """

    probabilistic = True

    def __init__(self, model: Any, tokenizer: Any = None, step_tag: str = "ки", good_token: str = "+",
                 bad_token: str = "-", good_token_id: int | None = None, bad_token_id: int | None = None,
                 template: str = "{question} {response}", step_joiner: str = "\n", use_chat_template: bool = False,
                 device: str | None = None, dtype: str | None = "auto", max_length: int | None = None,
                 token_budget: int | None = None, max_batch_size: int | None = None, trust_remote_code: bool = False,
                 splitter: StepSplitter | dict | None = None) -> None:
        super().__init__(splitter)
        if not step_tag:
            raise ValueError("shepherd-prm needs a non-empty step_tag")
        if "{question}" not in template or "{response}" not in template:
            raise ValueError("shepherd-prm template must contain {question} and {response}")
        self.model, self.tokenizer = load_model(model, "causal-lm", tokenizer=tokenizer, device=device, dtype=dtype,
                                                trust_remote_code=trust_remote_code)
        if not getattr(self.tokenizer, "is_fast", False):
            raise RewardError("shepherd-prm needs a fast tokenizer (character offsets locate the step tags)")
        self.step_tag, self.template, self.step_joiner = step_tag, template, step_joiner
        self.use_chat_template = use_chat_template
        self.good_id = int(good_token_id) if good_token_id is not None else single_token_id(
            self.tokenizer, good_token, "shepherd-prm good_token")
        self.bad_id = int(bad_token_id) if bad_token_id is not None else single_token_id(
            self.tokenizer, bad_token, "shepherd-prm bad_token")
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None) or 4096
        self.max_length = int(max_length) if max_length else min(int(limit), 4096)
        self.token_budget, self.max_batch_size = token_budget, max_batch_size
        self.pad_token_id = pad_id_of(self.tokenizer, self.model)
        self.device = next(self.model.parameters()).device

    def _tagged(self, steps: Sequence[str]) -> str:
        return self.step_joiner.join(f"{s.replace(self.step_tag, '')} {self.step_tag}" for s in steps)

    def format_input(self, question: str, steps: Sequence[str]) -> str:
        """The model input text for ``question`` and ``steps``."""
        question = question.replace(self.step_tag, "")
        if self.use_chat_template:
            return render_chat(self.tokenizer, [{"role": "user", "content": question},
                                                {"role": "assistant", "content": self._tagged(steps)}])
        return self.template.format(question=question, response=self._tagged(steps))

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of the input and, per step, the index of the last token of its tag."""
        text = self.format_input(question, steps)
        # the tags are the last len(steps) occurrences of step_tag (the template's own text may not hold one)
        ends, pos = [], len(text)
        for _ in steps:
            pos = text.rfind(self.step_tag, 0, pos)
            if pos < 0:
                raise RewardError("shepherd-prm could not find a step tag in the formatted input")
            ends.append(pos + len(self.step_tag))
        ends.reverse()
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        positions = []
        for e in ends:
            # the token holding the tag's last character
            tok_pos = next((t for t, (a, b) in enumerate(offsets) if a < e <= b), None)
            if tok_pos is None:
                raise RewardError(f"shepherd-prm: no token covers the end of step tag {self.step_tag!r}")
            positions.append(tok_pos)
        return list(ids), positions

    def score_steps(self, prompts: Sequence[str], steps: Sequence[Sequence[Step]],
                    references: Sequence[str | None] | None = None) -> list[StepScores]:
        if len(prompts) != len(steps):
            raise RewardError(f"{len(prompts)} prompts for {len(steps)} responses")
        seqs, positions = [], []
        for p, st in zip(prompts, steps):
            ids, pos = self.encode(p, [s.text for s in st]) if st else ([], [])
            seqs.append(ids[: self.max_length])
            positions.append(pos)
        good, bad = self.good_id, self.bad_id

        def reduce(b: ForwardBatch) -> list[list[float]]:
            rows, cols, counts = [], [], []
            for r, i in enumerate(b.index):
                keep = [p for p in positions[i] if p < len(seqs[i])]
                rows += [r] * len(keep)
                cols += keep
                counts.append(len(keep))
            picked = b.logits[torch.tensor(rows, device=b.logits.device), torch.tensor(cols, device=b.logits.device)]
            flat = picked[:, [good, bad]].float().softmax(dim=-1)[:, 0].cpu().tolist()
            out, at = [], 0
            for c in counts:
                out.append(flat[at: at + c])
                at += c
            return out

        found = batched_forward(self.model, seqs, reduce, pad_token_id=self.pad_token_id, device=self.device,
                                token_budget=self.token_budget, max_batch_size=self.max_batch_size)
        out = []
        for st, vals in zip(steps, found):
            vals = list(vals or [])
            missing = len(st) - len(vals)
            if missing:
                vals += [vals[-1] if vals else 0.0] * missing
            out.append(StepScores(list(st), vals, meta={"unscored_steps": missing}))
        return out
