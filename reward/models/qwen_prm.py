"""``qwen-prm``: Qwen2.5-Math-PRM-format process reward models (and rlkit-trained PRMs of the same layout).

Input format (one sequence per response)::

    chat_template([{"role": "system",    "content": system_prompt},
                   {"role": "user",      "content": question},
                   {"role": "assistant", "content": "step 1<extra_0>step 2<extra_0>...step n<extra_0>"}])

The step score is ``softmax(logits)[..., positive_label]`` read at each separator (``<extra_0>``) position,
i.e. P(step correct) in [0, 1]. :func:`format_prm_input` builds that text, so a PRM trainer can produce the
identical layout (issue 4 trains ``AutoModelForTokenClassification`` models with ``num_labels=2`` and reads
the same positions).
"""

from __future__ import annotations

from typing import Any, Sequence

from reward.base import RewardError, StepRewardModel, StepScores
from reward.batching import ForwardBatch, batched_forward, gather_positions
from reward.models._hf import load_model, pad_id_of, render_chat, single_token_id
from reward.registry import register
from reward.steps import Step, StepSplitter

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
OVERFLOW_MODES = ("repeat_last", "zero", "error")


def format_prm_input(tokenizer: Any, question: str, steps: Sequence[str], separator: str = "<extra_0>",
                     system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The Qwen2.5-Math-PRM input text for ``question`` and ``steps`` (separator after every step).

    Occurrences of ``separator`` inside the question or the steps are removed, so the text holds exactly one
    separator per step. ``system_prompt=None`` (or "") leaves the system turn out.

    Example:
        >>> from rlkit.testing import tiny_tokenizer
        >>> format_prm_input(tiny_tokenizer(), "1+1?", ["1+1=2", "So 2."], system_prompt=None)
        '<|im_start|>user\\n1+1?<|im_end|>\\n<|im_start|>assistant\\n1+1=2<extra_0>So 2.<extra_0><|im_end|>\\n'
    """
    clean = [s.replace(separator, "") for s in steps]
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt.replace(separator, "")})
    messages.append({"role": "user", "content": question.replace(separator, "")})
    messages.append({"role": "assistant", "content": separator.join(clean) + (separator if clean else "")})
    return render_chat(tokenizer, messages)


def _check_num_labels(path: str) -> None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return  # load_model reports loading problems
    archs = getattr(config, "architectures", None) or []
    n = getattr(config, "num_labels", None)
    if any("TokenClassification" in a for a in archs) and n != 2:
        raise RewardError(f"qwen-prm model {path!r} is a token classifier with num_labels={n}; 2 are needed")
    if any("SequenceClassification" in a for a in archs):
        raise RewardError(f"qwen-prm model {path!r} is a sequence classifier (num_labels={n}): an outcome RM, "
                          "use reward 'orm'")


@register("qwen-prm")
class QwenPRM(StepRewardModel):
    """Process reward model in the Qwen2.5-Math-PRM format: P(step correct) at each ``<extra_0>`` separator.

    Args:
        model: path / hub id of the PRM, or a built model (anything whose output has per-token logits
            ``(B, T, 2)`` as ``.logits`` or first element). Three layouts load:
            (a) rlkit-trained PRMs: ``AutoModelForTokenClassification`` folders with ``num_labels=2`` (no custom
            code); (b) the released Qwen2.5-Math-PRM checkpoints, which need ``trust_remote_code: true`` (their
            ``AutoModel`` class returns logits (B, T, 2) as first output); (c) a built ``torch.nn.Module``.
        tokenizer: tokenizer or its path; default the one saved with the model (required for a built model
            that has no ``name_or_path``).
        device: "cpu", "cuda", "cuda:1", ...; default the built model's device, else CUDA if available.
        dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16". Scores are computed in fp32.
        max_length: longest input in tokens (default: the model's ``max_position_embeddings``, at most 4096).
        token_budget: padded tokens per forward batch (rows x longest row); default 2048 on CPU (moderate batches
            stay in cache and were measured fastest there), 16384 on accelerators.
        max_batch_size: optional cap on rows per batch.
        separator: the step-end token (must be a single token of the tokenizer).
        system_prompt: system turn; ``None`` or "" leaves it out.
        positive_label: the logit column holding "step correct" (1 for Qwen2.5-Math-PRM and rlkit PRMs).
        overflow: what steps whose separator falls beyond ``max_length`` get (the input is cut at the right, so
            the question and the first steps are always scored): "repeat_last" (default) = the score of the last
            scored step, "zero" = 0.0, "error" = raise RewardError. If not even the first step fits, all steps get
            0.0 under both non-error modes. ``meta["unscored_steps"]`` counts them either way.
        trust_remote_code: allow the checkpoint's own modelling code (needed for the released Qwen PRMs).
        splitter: step splitting (a StepSplitter or its kwargs); default blank-line steps.

    Example (recipe)::

        reward:
          name: qwen-prm
          args: {model: Qwen/Qwen2.5-Math-PRM-7B, trust_remote_code: true, dtype: bfloat16}

    Example (in process):
        >>> from rlkit import testing
        >>> tok = testing.tiny_tokenizer()
        >>> rm = QwenPRM(testing.tiny_token_classifier(tok), tokenizer=tok)
        >>> out = rm.score(["What is 2+2?"], ["2+2=4\\n\\nThe answer is \\\\boxed{4}."])
        >>> len(out[0].scores), all(0.0 <= s <= 1.0 for s in out[0].scores)
        (2, True)
    """

    probabilistic = True

    def __init__(self, model: Any, tokenizer: Any = None, device: str | None = None, dtype: str | None = "auto",
                 max_length: int | None = None, token_budget: int | None = None, max_batch_size: int | None = None,
                 separator: str = "<extra_0>", system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                 positive_label: int = 1, overflow: str = "repeat_last", trust_remote_code: bool = False,
                 splitter: StepSplitter | dict | None = None) -> None:
        super().__init__(splitter)
        if overflow not in OVERFLOW_MODES:
            raise ValueError(f"unknown overflow mode {overflow!r} (allowed: {', '.join(OVERFLOW_MODES)})")
        if isinstance(model, str) and not trust_remote_code:
            _check_num_labels(model)
        self.model, self.tokenizer = load_model(model, "token-classification", tokenizer=tokenizer, device=device,
                                                dtype=dtype, trust_remote_code=trust_remote_code)
        self.separator = separator
        self.separator_id = single_token_id(self.tokenizer, separator, "qwen-prm separator")
        self.system_prompt = system_prompt
        self.positive_label = positive_label
        self.overflow = overflow
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None) or 4096
        self.max_length = int(max_length) if max_length else min(int(limit), 4096)
        self.token_budget, self.max_batch_size = token_budget, max_batch_size
        self.pad_token_id = pad_id_of(self.tokenizer, self.model)
        self.device = next(self.model.parameters()).device

    def encode(self, question: str, steps: Sequence[str]) -> list[int]:
        """Token ids of the PRM input for ``question`` and ``steps`` (not truncated)."""
        text = format_prm_input(self.tokenizer, question, steps, self.separator, self.system_prompt)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def step_logits_reducer(self):
        """The batch reducer: P(positive) at every separator position of every row."""
        sep, col = self.separator_id, self.positive_label

        def reduce(b: ForwardBatch) -> list[list[float]]:
            if b.logits.dim() != 3 or b.logits.shape[-1] <= col:
                raise RewardError(f"qwen-prm needs per-token logits (B, T, >={col + 1}), got "
                                  f"{tuple(b.logits.shape)}")
            probs = b.logits.float().softmax(dim=-1)[..., col]
            return gather_positions(probs, (b.input_ids == sep) & b.attention_mask.bool())

        return reduce

    def score_steps(self, prompts: Sequence[str], steps: Sequence[Sequence[Step]],
                    references: Sequence[str | None] | None = None) -> list[StepScores]:
        if len(prompts) != len(steps):
            raise RewardError(f"{len(prompts)} prompts for {len(steps)} responses")
        seqs, full = [], []
        for p, st in zip(prompts, steps):
            ids = self.encode(p, [s.text for s in st]) if st else []
            full.append(len(ids))
            # tokens after the last separator cannot change any score (causal model): not run
            end = len(ids) - ids[::-1].index(self.separator_id) if self.separator_id in ids else len(ids)
            seqs.append(ids[: min(end, self.max_length)])
        found = batched_forward(self.model, seqs, self.step_logits_reducer(), pad_token_id=self.pad_token_id,
                                device=self.device, token_budget=self.token_budget,
                                max_batch_size=self.max_batch_size)
        out = []
        for i, (st, vals) in enumerate(zip(steps, found)):
            vals = list(vals or [])
            n = len(st)
            if len(vals) > n:
                raise RewardError(f"qwen-prm found {len(vals)} separators for {n} steps in response {i}")
            missing = n - len(vals)
            meta: dict[str, Any] = {"unscored_steps": missing, "input_tokens": full[i]}
            if missing:
                if self.overflow == "error":
                    raise RewardError(f"qwen-prm: response {i} needs {full[i]} tokens > max_length "
                                      f"{self.max_length}; {missing} of {n} steps do not fit")
                fill = vals[-1] if (vals and self.overflow == "repeat_last") else 0.0
                vals = vals + [fill] * missing
            out.append(StepScores(list(st), vals, meta=meta))
        return out
