"""One GPU check (issue 19 item 3): PRM scoring, a GRPO-style and a PPO-style step, OnDARE/OnTIES vs AdamW, and
peak memory against ``rlkit.memory``'s estimate, written as one JSON file. Not yet run on a GPU.

Random-initialised Qwen2-shaped models (the Qwen2.5-0.5B and -1.5B config fields of ``rlkit.model_shapes``; no
weights are reachable on the device machine), bf16 on CUDA, fp32 with ``--cpu``. Sections:

- ``matmul``: the chip's measured bf16 (CPU: fp32) matmul rate, the denominator of every MFU below.
- ``prm_scoring``: ``benchmarks/prm_scoring.py``'s batched vs one-at-a-time ``QwenPRM`` scoring at the 1.5B
  body (its tiny tokenizer, so the embedding is small).
- ``grpo_step``: one PRM-guided GRPO-style step in plain torch/transformers (TRL needs datasets/deepspeed/vllm
  there, so no rlkit trainer runs): HF ``generate`` of prompts x generations with the 0.5B policy, a 1.5B PRM
  reading P(correct) at a step end every ``step_tokens`` tokens, ``rlkit.credit.process_grpo`` advantages, one
  policy-gradient backward in micro-batches and one fused AdamW step. Time split generation / scoring / training,
  tokens/s, and MFU = (2 or 6) x parameters x tokens / time / matmul rate (attention FLOPs left out).
- ``ppo_step``: the same with PPO: reference and critic (0.5B) forwards join scoring, per-token KL and
  ``rlkit.credit.gae``, clipped policy loss + value loss, two fused AdamW steps.
- ``online_merging``: ``benchmarks/online_merging.py``'s ``run`` at the 1.5B shape: OnDARE and OnTIES step time
  vs fused torch AdamW, state bytes.
- ``memory``: per section, ``torch.cuda.max_memory_allocated`` next to ``rlkit.memory.plan_memory`` of a recipe
  with the same shapes (``distribution: none``); on CPU only the estimates (no allocator statistics).

Usage:
    bash benchmarks/device_check.sh                      # on the GPU machine: full sizes, JSON to $OUT
    python benchmarks/device_check.py --cpu --tiny --out /tmp/device_check.json    # seconds; the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

sys.path.insert(0, str(Path(__file__).resolve().parent))           # the sibling benchmarks
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))       # rlkit and reward from this checkout

import online_merging  # noqa: E402
import prm_scoring  # noqa: E402

from rlkit import credit  # noqa: E402
from rlkit.config import recipe_from_dict  # noqa: E402
from rlkit.memory import PROMPT_TOKENS, plan_memory  # noqa: E402
from rlkit.model_shapes import KNOWN_CONFIGS  # noqa: E402

SHAPES = {"0.5B": KNOWN_CONFIGS["Qwen/Qwen2.5-0.5B"][1], "1.5B": KNOWN_CONFIGS["Qwen/Qwen2.5-1.5B"][1]}
TINY = {"0.5B": dict(SHAPES["0.5B"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
        "1.5B": dict(SHAPES["1.5B"], hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=512)}
FULL_SIZES = dict(matmul=8192, matmul_iters=50, prompts=8, generations=8, ppo_prompts=4, ppo_generations=4,
                  prompt_tokens=PROMPT_TOKENS, new_tokens=256, step_tokens=32, micro_batch=8, prm_responses=32,
                  prm_repeats=3, om_warmup=1, om_reps=3)
TINY_SIZES = dict(matmul=256, matmul_iters=3, prompts=2, generations=2, ppo_prompts=2, ppo_generations=2,
                  prompt_tokens=16, new_tokens=8, step_tokens=4, micro_batch=2, prm_responses=4, prm_repeats=1,
                  om_warmup=1, om_reps=1)


class Clock:
    """Wall time with a device synchronisation at each reading."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def config(fields: dict[str, Any], **extra: Any) -> Qwen2Config:
    kw = {k: v for k, v in fields.items() if k != "model_type"}
    return Qwen2Config(**kw, pad_token_id=0, bos_token_id=None, eos_token_id=None, **extra)


def build(cls: type, cfg: Qwen2Config, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(cfg)
    return model.to(dtype)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matmul_rate(n: int, iters: int, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """FLOP/s of an n x n x n matmul, best of ``iters`` after a warm-up."""
    clock = Clock(device)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(iters):
        t = clock()
        a @ b
        best = min(best, clock() - t)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "flops_per_s": 2 * n**3 / best}


def prm_step_scores(prm: torch.nn.Module, seq: torch.Tensor, positions: torch.Tensor, mb: int) -> torch.Tensor:
    """P(class 1) at ``positions`` (S,) of every row, forwards in micro-batches (the qwen-prm read-out)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(seq), mb):
            logits = prm(input_ids=seq[i:i + mb]).logits[:, positions].float()
            out.append(logits.softmax(-1)[..., 1])
    return torch.cat(out)


def token_logps(model: torch.nn.Module, seq: torch.Tensor, prompt_len: int) -> torch.Tensor:
    logits = model(input_ids=seq).logits[:, prompt_len - 1:-1].float()
    return logits.log_softmax(-1).gather(-1, seq[:, prompt_len:, None]).squeeze(-1)


def rollout(policy: torch.nn.Module, prompts: int, gens: int, sz: dict, vocab: int, device: torch.device):
    prompt = torch.randint(1, vocab, (prompts, sz["prompt_tokens"]), device=device).repeat_interleave(gens, 0)
    with torch.no_grad():
        return policy.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                               max_new_tokens=sz["new_tokens"], min_new_tokens=sz["new_tokens"], pad_token_id=0)


def step_layout(n: int, sz: dict, device: torch.device):
    t, k = sz["new_tokens"], sz["step_tokens"]
    ends = torch.arange(k - 1, t, k, device=device)                     # the last step ends on the last token
    return ends, ends.expand(n, -1), torch.ones(n, len(ends), dtype=torch.bool, device=device), \
        torch.ones(n, t, device=device)


def phases(gen_s: float, score_s: float, train_s: float, gen_tokens: int, seq_tokens: int, flops: dict[str, float],
           rate: float) -> dict[str, float]:
    return {"generation_s": gen_s, "scoring_s": score_s, "training_s": train_s, "total_s": gen_s + score_s + train_s,
            "generated_tokens": gen_tokens, "train_tokens": seq_tokens,
            "generation_tokens_per_s": gen_tokens / gen_s, "train_tokens_per_s": seq_tokens / train_s,
            "generation_mfu": flops["generation"] / gen_s / rate, "scoring_mfu": flops["scoring"] / score_s / rate,
            "train_mfu": flops["training"] / train_s / rate}


def rollout_and_scores(policy, prm, prompts: int, generations: int, sz: dict, device: torch.device, clock):
    """The start every step shares: sample, lay out the steps, PRM-score them. Returns (seq, step_ends,
    step_mask, token_mask, scores, t0, t1) with t0/t1 the clock before and after generation."""
    t0 = clock()
    seq = rollout(policy, prompts, generations, sz, policy.config.vocab_size, device)
    t1 = clock()
    ends, step_ends, step_mask, token_mask = step_layout(len(seq), sz, device)
    scores = prm_step_scores(prm, seq, sz["prompt_tokens"] + ends, sz["micro_batch"])
    return seq, step_ends, step_mask, token_mask, scores, t0, t1


def grpo_step(policy, prm, opt, sz: dict, device: torch.device, rate: float) -> dict[str, float]:
    clock, p_len, mb = Clock(device), sz["prompt_tokens"], sz["micro_batch"]
    seq, step_ends, step_mask, token_mask, scores, t0, t1 = rollout_and_scores(
        policy, prm, sz["prompts"], sz["generations"], sz, device, clock)
    adv = credit.process_grpo(scores, step_mask, step_ends, token_mask, group_size=sz["generations"])
    t2 = clock()
    for i in range(0, len(seq), mb):
        logp = token_logps(policy, seq[i:i + mb], p_len)
        loss = -(torch.exp(logp - logp.detach()) * adv[i:i + mb]).sum() / token_mask.sum()
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = clock()
    n, p, q = len(seq), n_params(policy), n_params(prm)
    flops = {"generation": 2 * p * n * seq.shape[1], "scoring": 2 * q * n * seq.shape[1],
             "training": 6 * p * n * seq.shape[1]}
    return phases(t1 - t0, t2 - t1, t3 - t2, n * sz["new_tokens"], n * seq.shape[1], flops, rate)


def ppo_step(policy, ref, critic, prm, opts, sz: dict, device: torch.device, rate: float,
             kl_coef: float = 0.05) -> dict[str, float]:
    clock, p_len, mb = Clock(device), sz["prompt_tokens"], sz["micro_batch"]
    seq, step_ends, step_mask, token_mask, scores, t0, t1 = rollout_and_scores(
        policy, prm, sz["ppo_prompts"], sz["ppo_generations"], sz, device, clock)
    with torch.no_grad():
        old, ref_lp, values = [], [], []
        for i in range(0, len(seq), mb):
            old.append(token_logps(policy, seq[i:i + mb], p_len))
            ref_lp.append(token_logps(ref, seq[i:i + mb], p_len))
            values.append(critic(input_ids=seq[i:i + mb]).logits[:, p_len - 1:-1, 0].float())
        old, ref_lp, values = torch.cat(old), torch.cat(ref_lp), torch.cat(values)
    rewards = credit.ppo_token_rewards(scores, step_mask, step_ends, token_mask) - kl_coef * (old - ref_lp)
    adv, returns = credit.gae(rewards, values, token_mask, gamma=1.0, lam=0.95)
    adv = credit.whiten(adv, token_mask)
    t2 = clock()
    for i in range(0, len(seq), mb):
        s = slice(i, i + mb)
        ratio = torch.exp(token_logps(policy, seq[s], p_len) - old[s])
        pg = -torch.min(ratio * adv[s], ratio.clamp(0.8, 1.2) * adv[s]).sum() / token_mask.sum()
        v = critic(input_ids=seq[s]).logits[:, p_len - 1:-1, 0].float()
        (pg + 0.1 * 0.5 * ((v - returns[s]) ** 2).sum() / token_mask.sum()).backward()
    for opt in opts:
        opt.step()
        opt.zero_grad(set_to_none=True)
    t3 = clock()
    n, length = len(seq), seq.shape[1]
    p, c, q = n_params(policy), n_params(critic), n_params(prm)
    flops = {"generation": 2 * p * n * length, "scoring": 2 * (q + p + p + c) * n * length,
             "training": 6 * (p + c) * n * length}
    return phases(t1 - t0, t2 - t1, t3 - t2, n * sz["new_tokens"], n * length, flops, rate)


def estimate(recipe: dict[str, Any]) -> dict[str, Any]:
    plan = plan_memory(recipe_from_dict(recipe, check=False))
    return {"estimate_bytes": plan.total, "estimate_complete": plan.complete,
            "estimate_rows": {c.name: c.total for c in plan.components}}


def measured(section: Callable[[], dict], device: torch.device) -> dict[str, Any]:
    """Run ``section`` with the CUDA peak counter reset first; peak_bytes None on CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out = section()
    out["peak_bytes"] = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return out


def rl_recipe(algorithm: str, policy_dir: Path, prm_dir: Path, sz: dict, bf16: bool) -> dict[str, Any]:
    dtype = "bfloat16" if bf16 else "float32"
    training = {"bf16": bf16, "model_init_kwargs": {"dtype": dtype}, "per_device_train_batch_size": sz["micro_batch"],
                "max_completion_length": sz["new_tokens"], "gradient_checkpointing": False}
    training.update({"kl_coef": 0.05} if algorithm == "ppo" else {"beta": 0.0})
    return {"model": str(policy_dir), "algorithm": {"name": algorithm}, "distribution": "none", "training": training,
            "reward": {"name": "qwen-prm", "args": {"model": str(prm_dir), "dtype": dtype}}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sz, shapes = (TINY_SIZES, TINY) if args.tiny else (FULL_SIZES, SHAPES)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "tiny": args.tiny, "sizes": sz,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    rate = matmul_rate(sz["matmul"], sz["matmul_iters"], device, dtype)
    result["matmul"] = rate
    rate = rate["flops_per_s"]
    tmp = Path(tempfile.mkdtemp(prefix="device_check-"))
    small, big = config(shapes["0.5B"]), config(shapes["1.5B"], num_labels=2)
    small.save_pretrained(tmp / "policy")
    big.save_pretrained(tmp / "prm")
    print(f"[device_check] {result['device']}: matmul {rate / 1e12:.1f} TFLOP/s", flush=True)

    h = shapes["1.5B"]
    prm_args = SimpleNamespace(device=device.type, token_budget=None, repeats=sz["prm_repeats"])
    prompts, responses = prm_scoring.make_inputs(sz["prm_responses"])
    size = (h["hidden_size"], h["num_hidden_layers"], h["num_attention_heads"], h["num_key_value_heads"],
            h["intermediate_size"])
    result["prm_scoring"] = measured(lambda: prm_scoring.measure(size, prm_args, prompts, responses), device)
    print(f"[device_check] prm_scoring: {result['prm_scoring']['speedup']:.2f}x batched vs loop", flush=True)

    def grpo() -> dict:
        policy = build(Qwen2ForCausalLM, small, device, dtype)
        prm = build(Qwen2ForTokenClassification, big, device, dtype).eval()
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=True)
        grpo_step(policy, prm, opt, dict(sz, new_tokens=sz["step_tokens"]), device, rate)  # warm-up
        return grpo_step(policy, prm, opt, sz, device, rate)

    result["grpo_step"] = {**measured(grpo, device), **estimate(rl_recipe("grpo", tmp / "policy", tmp / "prm", sz,
                                                                          dtype == torch.bfloat16))}
    print(f"[device_check] grpo_step: {result['grpo_step']['total_s']:.2f} s", flush=True)

    def ppo() -> dict:
        policy = build(Qwen2ForCausalLM, small, device, dtype)
        ref = build(Qwen2ForCausalLM, small, device, dtype).eval().requires_grad_(False)
        critic = build(Qwen2ForTokenClassification, config(shapes["0.5B"], num_labels=1), device, dtype)
        prm = build(Qwen2ForTokenClassification, big, device, dtype).eval()
        opts = [torch.optim.AdamW(m.parameters(), lr=1e-6, fused=True) for m in (policy, critic)]
        ppo_step(policy, ref, critic, prm, opts, dict(sz, new_tokens=sz["step_tokens"]), device, rate)
        return ppo_step(policy, ref, critic, prm, opts, sz, device, rate)

    result["ppo_step"] = {**measured(ppo, device), **estimate(rl_recipe("ppo", tmp / "policy", tmp / "prm", sz,
                                                                        dtype == torch.bfloat16))}
    print(f"[device_check] ppo_step: {result['ppo_step']['total_s']:.2f} s", flush=True)

    om_fields = dict(h, vocab_size=None if args.tiny else h["vocab_size"])
    om = online_merging.parse_args([
        "--device", device.type, "--hidden", str(h["hidden_size"]), "--layers", str(h["num_hidden_layers"]),
        "--heads", str(h["num_attention_heads"]), "--kv-heads", str(h["num_key_value_heads"]),
        "--intermediate", str(h["intermediate_size"]), "--warmup", str(sz["om_warmup"]), "--reps", str(sz["om_reps"]),
        "--fused", *([] if om_fields["vocab_size"] is None else ["--vocab", str(om_fields["vocab_size"])])])
    merged = measured(lambda: online_merging.run(om), device)
    config(dict(h, vocab_size=om_fields["vocab_size"] or 400)).save_pretrained(tmp / "om")
    for kind in ("adamw", "ondare", "onties"):
        opt = {"name": kind} if kind == "adamw" else {"name": kind, "args": {"p": om.p, "alpha": om.alpha}}
        plan = plan_memory(recipe_from_dict({"model": str(tmp / "om"), "optimizer": opt}, check=False))
        rows = {c.name: c.total for c in plan.components}
        merged[kind]["measured_model_bytes"] = 8 * merged["params"] + merged[kind]["state_bytes"]  # fp32 w + g
        merged[kind]["estimate_model_bytes"] = rows["policy"] + rows.get(f"{kind} tau", 0)
        merged[kind]["estimate_params"] = plan.components[0].params   # the plan's count of the same model
        merged[kind]["step_ratio_vs_adamw"] = merged[kind]["step_s"] / merged["adamw"]["step_s"]
    result["online_merging"] = merged
    print(f"[device_check] online_merging: ondare {merged['ondare']['step_ratio_vs_adamw']:.2f}x, "
          f"onties {merged['onties']['step_ratio_vs_adamw']:.2f}x AdamW", flush=True)

    result["memory"] = {
        name: {"peak_bytes": result[name]["peak_bytes"], "estimate_bytes": result[name].get("estimate_bytes"),
               "peak_over_estimate": (result[name]["peak_bytes"] / result[name]["estimate_bytes"]
                                      if result[name]["peak_bytes"] and result[name].get("estimate_bytes") else None)}
        for name in ("grpo_step", "ppo_step")}
    result["memory"]["online_merging"] = {
        k: {"measured_model_bytes": merged[k]["measured_model_bytes"],
            "estimate_model_bytes": merged[k]["estimate_model_bytes"]} for k in ("adamw", "ondare", "onties")}
    result["memory"]["online_merging_peak_bytes"] = merged["peak_bytes"]
    result["run_s"] = time.perf_counter() - args.t0   # after the imports
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (fp32) even where CUDA is available")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and sizes (seconds; what the test suite runs)")
    default = Path(os.environ["OUT"]) / "device_check.json" if os.environ.get("OUT") else Path("device_check.json")
    ap.add_argument("--out", type=Path, default=default, help="JSON file to write (default $OUT/device_check.json)")
    args = ap.parse_args(argv)
    args.t0 = time.perf_counter()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"[device_check] wrote {args.out} ({result['run_s']:.0f} s after the imports)")


if __name__ == "__main__":
    main()
