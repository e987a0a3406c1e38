"""Memory planning before launch: what each GPU of a GRPO/PPO recipe holds, from configs alone (no weights).

``rlkit check RECIPE [--gpu-memory 80GB] [--params NAME=COUNT]`` prints :func:`format_plan` of
:func:`plan_memory`. Parameter counts come from ``rlkit.model_shapes`` (config.json on the meta device).
N = ``num_processes`` under ``distribution: zero2|zero3``, else 1; P = a model's parameters; T = its trainable
parameters (LoRA: the adapters, PEFT's count; else P); L = the largest single module (DeepSpeed's ZeRO-3 gather);
w = bytes of a stored weight. Every number is bytes per GPU.

**Trained models** (the policy; PPO's critic, which rides in the same engine and always gets AdamW):

- ZeRO-2/3 with ``training.bf16: true`` (DeepSpeed mixed precision: bf16 weights, fp32 master weights, AdamW):
  DeepSpeed's own estimators, ``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs``
  = 2T + 18T/N and ``stage3.estimate_zero3_model_states_mem_needs`` = 4L + 18T/N, both without offload (rlkit's
  DeepSpeed config offloads nothing). (The ``..._all_cold`` functions the issue names only print these two's
  results for every offload option.) Their assumption, per trainable parameter: 2 bf16 weight bytes + 18 bytes of
  2 bf16 grads, 4 fp32 grads, 4 fp32 master weights and 8 AdamW moments, the 18 split over N (ZeRO-2 keeps the
  weights whole). Split here as weights = 2T (ZeRO-2) or 2T/N + 4L (ZeRO-3), grads + optimizer = the rest.
  The critic's rows use L = 0: one gathered layer is counted once, on the policy.
- ZeRO-2/3 in fp32 (``bf16`` false): the same layout with 4-byte weights (DeepSpeed still keeps its own fp32
  partition copy): weights 4T (ZeRO-2) or 4T/N + 8L (ZeRO-3), grads + optimizer 16T/N.
- ``distribution: none``: plain torch AdamW on weights stored in ``training.model_init_kwargs.dtype`` (TRL's
  default float32; ``bf16: true`` is then autocast), moments in the weights' dtype: weights wP, grads + optimizer
  3wT (grads wT + moments 2wT). LoRA adapters are fp32 there (PEFT upcasts them), the frozen base w bytes.
- Frozen weights under ZeRO-3 are sharded (/N), under ZeRO-2 replicated.
- OnDARE / OnTIES keep one parameter-sized tau beside AdamW's moments, in the dtype the optimizer sees: 4T/N
  (fp32 flat partitions) under ZeRO, wT without. Their base model is read from safetensors on the CPU.

**Frozen models**: the KL reference (GRPO ``beta`` > 0, PPO ``kl_coef`` > 0; none with LoRA, whose reference is
the adapter-disabled policy): wP/N under ZeRO-3 (sharded), wP otherwise. Reward models (every ``model`` /
``ref_model`` path in ``reward.args``, nested through ``components`` / ``reward_model`` / ``verifier``; built
outside ZeRO, one replica per GPU): P x their ``dtype`` argument ("auto": bf16 on a GPU). A reward that learns
online (``algorithm.reward_update``, the implicit PRM's ``model``) is a trained model instead: under ZeRO its own
engine with the policy's stage and precision, as the rows above without a second gathered layer (its frozen
``ref`` then in bf16 too when ``bf16`` is on); without DeepSpeed its weights in their dtype w' plus grads and
torch AdamW moments 3w'P.

**vLLM colocate**: ``generation.vllm_gpu_memory_utilization`` x the GPU's memory (vLLM's own budget for its copy
of the policy, activations and KV cache); in bytes only with ``--gpu-memory``. Server mode uses other GPUs.

**Activations** (rough, from Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models": 34 bytes x sbh per layer in 16-bit, the attention-score term dropped since SDPA/flash attention keeps
no s x s matrix): b = ``per_device_train_batch_size``, s = ``max_completion_length`` + 256 prompt tokens
(assumed), h = hidden size, l = layers, a = 2 (bf16) or 4 bytes: with ``gradient_checkpointing`` b s h a (l + 17)
(each layer's input, plus one layer recomputed), without it 17 b s h a l; plus b s V x 4 for fp32 logits over the
vocabulary V; PPO adds its critic's term without logits. Left out: generation buffers (HF generate's KV cache,
TRL's log-prob passes without grad), CUDA context and allocator fragmentation (often 1-3 GiB).

``--gpu-memory`` warns (one line on stderr) when the total exceeds it; the exit code stays 0, since an estimate
this rough should not block a launch.

Example:
    >>> from rlkit.config import load_recipe
    >>> plan = plan_memory(load_recipe("grpo_qwen_math_prm_8gpu"), gpu_memory=parse_size("80GB"))
    >>> [c.name for c in plan.components]
    ['policy', 'reward qwen-prm', 'activations (rough)', 'vLLM colocate']
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rlkit.algorithms import get_algorithm
from rlkit.model_shapes import ModelShape, model_shape
from rlkit.recipe import Recipe
from rlkit.recipe_glue import training_values
from rlkit.trainers.grpo_config import GRPO_DEFAULTS
from rlkit.trainers.ppo_config import PPO_DEFAULTS

RL_DEFAULTS = {"grpo": GRPO_DEFAULTS, "ppo": PPO_DEFAULTS}
PROMPT_TOKENS = 256
DTYPE_BYTES = {"float32": 4, "fp32": 4, "float": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2}
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_REWARD_MODEL_KINDS = {"qwen-prm": "token-classifier", "orm": "sequence-classifier"}  # others: causal LMs


class PlanError(ValueError):
    """Bad input to the memory plan (``--gpu-memory``, ``--params``); ``str(e)`` is one line."""


@dataclass
class Component:
    """One row of the plan: ``weights`` and ``states`` (grads + optimizer) in bytes per GPU, None = unknown."""

    name: str
    params: int | None
    weights: int | None
    states: int = 0
    how: str = ""

    @property
    def total(self) -> int | None:
        return None if self.weights is None else self.weights + self.states


@dataclass
class MemoryPlan:
    """The per-GPU estimate of one recipe. ``vllm_fraction``: share of the GPU vLLM colocate takes."""

    recipe: str
    gpus: int
    setup: str
    components: list[Component] = field(default_factory=list)
    vllm_fraction: float = 0.0
    gpu_memory: int | None = None
    gpu_memory_text: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(c.total is not None for c in self.components)

    @property
    def total(self) -> int:
        """Bytes per GPU of every known row (vLLM's share included when ``gpu_memory`` is known)."""
        return sum(c.total or 0 for c in self.components)

    def warning(self) -> str | None:
        """One line when the total exceeds ``gpu_memory``, else None."""
        if self.gpu_memory is None or self.total <= self.gpu_memory:
            return None
        return (f"rlkit: warning: estimated {gib(self.total)} per GPU exceeds --gpu-memory "
                f"{self.gpu_memory_text} ({gib(self.gpu_memory)}); see the plan above")


# ----------------------------------------------------------------------------------------------- parsing

def parse_size(text: str | None) -> int | None:
    """``80GB`` (10^9), ``80GiB`` (2^30), ``141 GB``, ``512MiB`` -> bytes; None -> None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kmgt]i?b|b)\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise PlanError(f"--gpu-memory: expected a size such as 80GB, 80GiB or 141GB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_params(items: list[str] | None) -> dict[str, int]:
    """``["Qwen/Qwen2.5-7B=7.6B", "my/model=494e6"]`` -> {name: count}; suffixes K, M, B (10^3, 10^6, 10^9)."""
    out = {}
    for item in items or []:
        name, _, count = item.rpartition("=")
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([kmb]?)\s*", count, re.IGNORECASE)
        if not name or not m:
            raise PlanError(f"--params: expected MODEL=COUNT such as Qwen/Qwen2.5-7B=7.6B or my/model=494e6, "
                            f"got {item!r}")
        out[name.strip()] = int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[m.group(2).lower()])
    return out


# ----------------------------------------------------------------------------------------------- formatting

def gib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 or n == 0 else f"{n / 2**20:.1f} MiB"


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a table (GiB = 2^30 bytes) with one line per row saying how it was computed."""
    lines = [f"memory per GPU ({plan.setup}; an estimate from configs, not a measurement):"]
    if plan.components:
        lines.append(f"  {'component':<22} {'params':>8} {'weights':>11} {'grads+optim':>12} {'total':>11}")
        for c in plan.components:
            lines.append(f"  {c.name:<22} {_count(c.params) if c.params else '':>8} {gib(c.weights):>11} "
                         f"{gib(c.states) if c.states else '':>12} {gib(c.total):>11}")
        total = gib(plan.total) if plan.complete else f">= {gib(plan.total)}"
        of = f" of --gpu-memory {plan.gpu_memory_text} ({gib(plan.gpu_memory)})" if plan.gpu_memory else ""
        lines.append(f"  {'total':<22} {'':>8} {'':>11} {'':>12} {total:>11}{of}")
        lines += [f"  - {c.name}: {c.how}" for c in plan.components if c.how]
    lines += [f"  - {n}" for n in plan.notes]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- estimates

def _ds_trained(stage: int, trainable: int, largest: int, gpus: int) -> tuple[int, int]:
    """(weights, grads + optimizer) of ``trainable`` parameters under DeepSpeed bf16 mixed precision, from
    DeepSpeed's estimators (deepspeed is optional: imported here, it is heavy and absent on some machines)."""
    if stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, gpu = estimate_zero2_model_states_mem_needs(trainable, num_gpus_per_node=gpus, cpu_offload=False)
        weights = 2 * trainable
    else:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        _, gpu, _ = estimate_zero3_model_states_mem_needs(trainable, largest, num_gpus_per_node=gpus, cpu_offload=False,
                                                          cpu_offload_params=False, zero_init=True)
        weights = 2 * trainable // gpus + 4 * largest
    return weights, gpu - weights


@dataclass
class _Setup:
    stage: int          # 0 (no DeepSpeed), 2, 3
    gpus: int
    bf16: bool
    w: int              # bytes of a stored weight

    def trained(self, shape: ModelShape, gather: bool, lora: bool) -> tuple[int, int, str]:
        """(weights, grads + optimizer, how) of a trained model (adapters only with ``lora``)."""
        t, frozen = shape.trainable, shape.params - shape.trainable
        largest = shape.largest_layer if gather else 0
        n, w = self.gpus, self.w
        if self.stage and self.bf16:
            weights, states = _ds_trained(self.stage, t, largest, n)
            how = (f"DeepSpeed estimate_zero{self.stage}_model_states_mem_needs: 2 B x {_count(t)}"
                   + (f" / {n}" if self.stage == 3 else "")
                   + (f" + 4 B x {_count(largest)} gathered layer" if self.stage == 3 and largest else "")
                   + f"; grads + fp32 master + AdamW {(18 if self.stage == 2 else 16)} B x {_count(t)} / {n}")
        elif self.stage:
            weights = 4 * t // n + 8 * largest if self.stage == 3 else 4 * t
            states = 16 * t // n
            how = f"fp32 ZeRO-{self.stage}: weights 4 B x {_count(t)}{f' / {n}' if self.stage == 3 else ''}; " \
                  f"grads + master + AdamW 16 B x {_count(t)} / {n}"
        else:
            tw = 4 if lora else w
            weights, states = tw * t, 3 * tw * t
            how = f"weights {tw} B x {_count(t)}; grads {tw} B + AdamW moments {2 * tw} B per trained parameter"
        if frozen:
            fw = (2 if self.bf16 else 4) if self.stage else w
            weights += fw * frozen // (n if self.stage == 3 else 1)
            how += f"; frozen base {fw} B x {_count(frozen)}{f' / {n}' if self.stage == 3 else ''}"
        return weights, states, how

    def frozen(self, params: int) -> tuple[int, str]:
        fw = (2 if self.bf16 else 4) if self.stage else self.w
        n = self.gpus if self.stage == 3 else 1
        return fw * params // n, f"{fw} B x {_count(params)}" + (f" / {n} (ZeRO-3 shards it)" if n > 1 else "")


def _reward_models(name: str, args: dict[str, Any]) -> Iterator[tuple[str, str, str, Any]]:
    """(row name, model path, kind, dtype argument) of every HF model a reward spec loads."""
    if name == "llm-judge" and args.get("backend", "hf") != "hf":
        return
    kind = _REWARD_MODEL_KINDS.get(name, "causal-lm")
    for key in ("model", "ref_model"):
        if isinstance(args.get(key), str):
            yield f"reward {name}" + (" ref" if key == "ref_model" else ""), args[key], kind, args.get("dtype", "auto")
    if name == "implicit-prm" and isinstance(args.get("model"), str) and not args.get("ref_model"):
        yield f"reward {name} ref", args["model"], kind, args.get("dtype", "auto")  # a frozen copy of model
    for part in list(args.get("components") or []) + [args.get("reward_model"), args.get("verifier")]:
        if isinstance(part, dict) and isinstance(part.get("name"), str):
            yield from _reward_models(part["name"], dict(part.get("args") or {}))


def _activations(shape: ModelShape, t: dict[str, Any], a: int, logits: bool) -> int | None:
    if shape.hidden is None:
        return None
    b, s = int(t["per_device_train_batch_size"]), int(t["max_completion_length"]) + PROMPT_TOKENS
    per_layer = b * s * shape.hidden * a
    body = per_layer * (shape.layers + 17) if t.get("gradient_checkpointing") else 17 * per_layer * shape.layers
    return body + (b * s * shape.vocab * 4 if logits else 0)


def plan_memory(recipe: Recipe, gpu_memory: int | None = None, gpu_memory_text: str = "",
                params: dict[str, int] | None = None) -> MemoryPlan:
    """The per-GPU :class:`MemoryPlan` of ``recipe`` (GRPO and PPO; other algorithms get a note only)."""
    params = params or {}
    alg = recipe.algorithm.name
    if alg not in RL_DEFAULTS:
        note = f"the memory plan covers grpo and ppo recipes, not {alg}"
        return MemoryPlan(recipe.name, 1, "not estimated", notes=[note])
    base = {f.name: f.default for f in dataclasses.fields(get_algorithm(alg).config_cls)
            if f.default is not dataclasses.MISSING}
    t = {**base, **training_values(recipe, RL_DEFAULTS[alg])}
    stage = {"zero2": 2, "zero3": 3}.get(recipe.distribution, 0)
    gpus = recipe.num_processes if stage else 1
    bf16 = bool(t.get("bf16"))
    load_dtype = str((t.get("model_init_kwargs") or {}).get("dtype", "float32")).replace("torch.", "")
    lora = recipe.peft.to_lora_config() if recipe.peft is not None else None
    policy = model_shape(recipe.model, "causal-lm", lora=lora, params=params.get(recipe.model))
    if stage:
        w = 2 if bf16 else 4
        setup_text = f"{gpus} GPUs, DeepSpeed ZeRO-{stage}, " + ("bf16 weights + fp32 master weights" if bf16
                                                                 else "fp32")
    else:
        w = DTYPE_BYTES.get(policy.config_dtype if load_dtype == "auto" else load_dtype, 4)
        setup_text = (f"1 GPU, no DeepSpeed, {'fp32' if w == 4 else '16-bit'} weights"
                      + (" + bf16 autocast" if bf16 else ""))
    setup = _Setup(stage, gpus, bf16, w)
    plan = MemoryPlan(recipe.name, gpus, setup_text, gpu_memory=gpu_memory, gpu_memory_text=gpu_memory_text)
    comps = plan.components

    def unknown(name: str, shape: ModelShape) -> Component:
        return Component(name, None, None, how=f"{shape.name}: {shape.source}")

    if policy.params is None or policy.trainable is None:
        comps.append(unknown("policy", policy))
    else:
        wts, states, how = setup.trained(policy, gather=True, lora=lora is not None)
        comps.append(Component("policy", policy.params, wts, states, f"{policy.name}, {policy.source}; {how}"))
        if recipe.optimizer.name in ("ondare", "onties"):
            tau = 4 * policy.trainable // gpus if stage else (4 if lora else w) * policy.trainable
            comps.append(Component(f"{recipe.optimizer.name} tau", None, 0, tau,
                                   f"one parameter-sized tensor: {4 if stage else w} B x {_count(policy.trainable)}"
                                   + (f" / {gpus} (ZeRO partitions it)" if stage else "")))
    kl = float(t.get("kl_coef" if alg == "ppo" else "beta") or 0.0)
    if kl > 0 and lora is None:
        ref = model_shape(recipe.model, "causal-lm", params=params.get(recipe.model))
        if ref.params is None:
            comps.append(unknown("reference (KL)", ref))
        else:
            wts, how = setup.frozen(ref.params)
            comps.append(Component("reference (KL)", ref.params, wts, 0, how))
    else:
        plan.notes.append("no reference model: " + ("LoRA's reference is the adapter-disabled policy" if lora
                                                     else f"{'kl_coef' if alg == 'ppo' else 'beta'} = 0"))
    critic = None
    if alg == "ppo":
        critic_name = str(t.get("critic_model") or recipe.model)
        critic = model_shape(critic_name, "critic", params=params.get(critic_name))
        if critic.params is None:
            comps.append(unknown("critic", critic))
        else:
            wts, states, how = setup.trained(dataclasses.replace(critic, trainable=critic.params), gather=False,
                                             lora=False)
            comps.append(Component("critic", critic.params, wts, states, f"{critic_name} as a 1-output token "
                                                                         f"classifier; {how}"))
    online_row = f"reward {recipe.reward.name}" if recipe.algorithm.reward_update != "none" else None
    for row, path, kind, dtype in _reward_models(recipe.reward.name, dict(recipe.reward.args)):
        shape = model_shape(path, kind, params=params.get(path))
        if shape.params is None:
            comps.append(unknown(row, shape))
            continue
        nbytes = DTYPE_BYTES.get(str(dtype), 2 if dtype == "auto" else DTYPE_BYTES.get(shape.config_dtype or "", 4))
        if row == online_row and stage:
            wts, states, how = setup.trained(dataclasses.replace(shape, trainable=shape.params), gather=False,
                                             lora=False)
            comps.append(Component(row, shape.params, wts, states, f"{path}, {shape.source}; learns online in its "
                                                                   f"own ZeRO-{stage} engine: {how}"))
        elif row == online_row:
            comps.append(Component(row, shape.params, nbytes * shape.params, 3 * nbytes * shape.params,
                                   f"{path}, {shape.source}; learns online: {nbytes} B x {_count(shape.params)} "
                                   f"weights, grads + AdamW moments {3 * nbytes} B per parameter"))
        else:
            if online_row and stage and bf16 and row == f"{online_row} ref":
                nbytes = 2  # pi_ref follows pi_phi's engine into bf16
            comps.append(Component(row, shape.params, nbytes * shape.params, 0,
                                   f"{path}, {shape.source}; {nbytes} B x {_count(shape.params)}, one replica per GPU"))
    a = 2 if bf16 else 4
    act = _activations(policy, t, a, logits=True)
    if act is not None and critic is not None:
        critic_act = _activations(critic, t, a, logits=False)
        act = None if critic_act is None else act + critic_act
    comps.append(Component("activations (rough)", None, act, 0,
                           f"b={t['per_device_train_batch_size']}, s={t['max_completion_length']}+{PROMPT_TOKENS}, "
                           f"{'with' if t.get('gradient_checkpointing') else 'without'} gradient checkpointing, "
                           f"fp32 logits" + (" + the critic's" if critic is not None else "")
                           if act is not None else "needs the policy's config (hidden size, layers)"))
    gen = recipe.generation
    if gen.backend == "vllm" and gen.vllm_mode == "colocate":
        plan.vllm_fraction = float(gen.vllm_gpu_memory_utilization)
        share = int(plan.vllm_fraction * gpu_memory) if gpu_memory else None
        comps.append(Component("vLLM colocate", None, share, 0,
                               f"vllm_gpu_memory_utilization {plan.vllm_fraction:g} x the GPU"
                               + ("" if gpu_memory else " (give --gpu-memory to count it)")))
    elif gen.backend == "vllm":
        plan.notes.append("vLLM server mode: generation runs on other GPUs (not counted)")
    return plan
