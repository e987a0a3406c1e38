"""Where one PRM-guided GRPO (or PPO) step spends its time, and how close forward+backward gets to the CPU's matmul
ceiling.

    python benchmarks/grpo_step.py                          # quickstart shape: embedded SmolLM2-135M, 8 x <= 80 tokens
    python benchmarks/grpo_step.py --tiny                   # tiny random policy + tiny PRM (rlkit.testing), seconds
    python benchmarks/grpo_step.py --algo ppo --tiny        # one PPO rollout cycle instead
    python benchmarks/grpo_step.py --steps 4 --set training.max_completion_length=40 --json out.json

The trainer is built as ``rlkit train`` builds it (``load_recipe`` + ``build_grpo_trainer`` /
``build_ppo_trainer``) and trained for ``--steps`` + 1 steps; the first is dropped as warm-up. Nothing of TRL is
copied: methods of the trainer instance are wrapped with timers and the step is timed between the Trainer's
``on_step_begin`` / ``on_step_end`` callbacks. Parts (exclusive time: a part started inside another pauses it, so
nothing is counted twice):

- generation: TRL's ``_generate`` (HF generate or vLLM; decoding included)
- reward_scoring: ``trainer.step_reward.score`` (the step reward model's score call)
- credit: step-end token placement (``_place``) + advantages (``compute_advantages``; PPO: ``token_rewards``,
  ``rlkit.credit.gae`` and ``whiten``)
- logprob_passes: ``_get_per_token_logps_and_entropies`` outside the loss (old / ref log-probs under no_grad,
  when TRL computes them); PPO: also the critic's rollout value pass (``state_values``)
- forward_backward: ``compute_loss`` (its log-prob forward included) + ``accelerator.backward``
- optimizer: ``optimizer.step()`` (between the ``on_pre_optimizer_step`` / ``on_optimizer_step`` callbacks)
- weight_sync: vLLM ``sync_weights`` (n/a with HF generate: reported as 0)
- other: step - sum of the parts (data collation, gradient clipping, logging metrics, ...)

A PPO "step" is one rollout cycle: the ``steps_per_generation * num_iterations`` optimizer steps that consume one
rollout. Reported: the median step (the step whose total is the median, lower middle for an even count) split into
parts, each part's median over the measured steps, and the achieved FLOP/s of forward+backward
(6 x parameters x tokens in the loss batch, padding included) against square ``torch.matmul`` in fp32 and bf16
timed in the same run. Step times on a shared 2-core machine vary by tens of percent; read shares, not digits.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback

from rlkit import credit as credit_lib
from rlkit import testing
from rlkit.config import load_recipe
from rlkit.trainers.grpo_runner import build_grpo_trainer
from rlkit.trainers.ppo_runner import build_ppo_trainer

PARTS = ("generation", "reward_scoring", "credit", "logprob_passes", "forward_backward", "optimizer", "weight_sync")
RECIPES = {"grpo": "grpo_prm_quickstart", "ppo": "ppo_prm_quickstart"}


class Stopwatch:
    """Exclusive-time accounting over nested parts, active only inside a step (between ``begin`` and ``end``)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self._stack: list[str] = []
        self._mark = 0.0
        self._cur: dict[str, float] | None = None
        self._t0 = 0.0
        self.tokens = 0
        self.real_tokens = 0

    @property
    def active(self) -> bool:
        """Whether a step is being timed."""
        return self._cur is not None

    @property
    def current(self) -> str | None:
        """The innermost open part (None at the step's top level)."""
        return self._stack[-1] if self._stack else None

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._stack:
            self._cur[self._stack[-1]] += now - self._mark
        self._mark = now

    def begin(self) -> None:
        """Start timing a step."""
        self._cur = dict.fromkeys(PARTS, 0.0)
        self._stack, self.tokens, self.real_tokens = [], 0, 0
        self._t0 = self._mark = time.perf_counter()

    def end(self) -> None:
        """Close the step: record its wall time and parts."""
        self._charge()
        total = time.perf_counter() - self._t0
        self.steps.append({"step": total, "parts": self._cur, "tokens": self.tokens, "real_tokens": self.real_tokens})
        self._cur, self._stack = None, []

    def push(self, part: str) -> None:
        """Enter ``part`` (pauses the enclosing one)."""
        self._charge()
        self._stack.append(part)

    def pop(self) -> None:
        """Leave the innermost part (resumes the enclosing one)."""
        self._charge()
        self._stack.pop()

    def wrap(self, fn: Callable, part: str, skip_inside: tuple[str, ...] = ()) -> Callable:
        """``fn`` timed as ``part`` while a step is timed, unless called inside one of ``skip_inside``
        (then its time stays with the enclosing part)."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active or self.current in skip_inside:
                return fn(*args, **kwargs)
            self.push(part)
            try:
                return fn(*args, **kwargs)
            finally:
                if self.active:
                    self.pop()

        return timed


class StepTimer(TrainerCallback):
    """Opens/closes the Stopwatch's step every ``cycle`` optimizer steps and times ``optimizer.step()``."""

    def __init__(self, watch: Stopwatch, cycle: int) -> None:
        self.watch, self.cycle, self.n = watch, cycle, 0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: D102 (Trainer callback)
        if self.n % self.cycle == 0 and not self.watch.active:
            self.watch.begin()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: D102
        if self.watch.active:
            self.watch.push("optimizer")

    def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: D102
        if self.watch.active and self.watch.current == "optimizer":
            self.watch.pop()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        self.n += 1
        if self.n % self.cycle == 0 and self.watch.active:
            self.watch.end()


def instrument(trainer: Any, watch: Stopwatch) -> tuple[bool, list[Callable[[], None]]]:
    """Wrap the trainer's methods with ``watch``'s timers. Returns (uses vLLM, undo callbacks for module patches)."""
    trainer._generate = watch.wrap(trainer._generate, "generation")
    trainer.step_reward.score = watch.wrap(trainer.step_reward.score, "reward_scoring")
    trainer._place = watch.wrap(trainer._place, "credit")
    undo: list[Callable[[], None]] = []
    if hasattr(trainer, "token_rewards"):  # PPO
        trainer.token_rewards = watch.wrap(trainer.token_rewards, "credit")
        trainer.state_values = watch.wrap(trainer.state_values, "logprob_passes", skip_inside=("forward_backward",))
        for name in ("gae", "whiten"):
            orig = getattr(credit_lib, name)
            setattr(credit_lib, name, watch.wrap(orig, "credit"))
            undo.append(lambda name=name, orig=orig: setattr(credit_lib, name, orig))
    else:
        trainer.compute_advantages = watch.wrap(trainer.compute_advantages, "credit")
    trainer._get_per_token_logps_and_entropies = watch.wrap(
        trainer._get_per_token_logps_and_entropies, "logprob_passes", skip_inside=("forward_backward",))

    compute_loss = watch.wrap(trainer.compute_loss, "forward_backward")

    def counted_loss(model: Any, inputs: dict, *args: Any, **kwargs: Any) -> Any:
        if watch.active and "completion_ids" in inputs:
            ids = [inputs["prompt_ids"], inputs["completion_ids"]]
            watch.tokens += sum(int(x.numel()) for x in ids)
            watch.real_tokens += int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = counted_loss
    trainer.accelerator.backward = watch.wrap(trainer.accelerator.backward, "forward_backward")
    gen = getattr(trainer, "vllm_generation", None)
    use_vllm = bool(getattr(trainer.args, "use_vllm", False)) and gen is not None
    if use_vllm:
        gen.sync_weights = watch.wrap(gen.sync_weights, "weight_sync")
    return use_vllm, undo


def matmul_ceiling(n: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """FLOP/s of a square ``n x n`` torch.matmul in ``dtype`` on the CPU (best of ``repeats``, after one warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def tiny_overrides(root: Path) -> list[str]:
    """Recipe overrides for a tiny random policy and tiny qwen-prm layout PRM saved under ``root``."""
    tok = testing.tiny_tokenizer()
    policy = testing.save_tiny(testing.tiny_causal_lm(tok), tok, root / "policy")
    prm = testing.save_tiny(testing.tiny_token_classifier(tok), tok, root / "prm")
    return [f"model={policy}", f"reward={{name: qwen-prm, args: {{model: '{prm}'}}}}",
            "training.max_completion_length=16", "data.num_train=64"]


def summarize(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The median step's parts (+ other), per-part medians and token counts of the measured steps."""
    totals = [s["step"] for s in steps]
    med = statistics.median_low(totals)
    pick = steps[totals.index(med)]
    parts = dict(pick["parts"])
    parts["other"] = pick["step"] - sum(parts.values())
    medians = {p: statistics.median(s["parts"][p] for s in steps) for p in PARTS}
    return {"step_s": pick["step"], "parts_s": parts, "part_medians_s": medians, "tokens": pick["tokens"],
            "real_tokens": pick["real_tokens"], "step_times_s": totals}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Build, instrument and train; print the report and return it (also written to ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", choices=sorted(RECIPES), default="grpo")
    ap.add_argument("--tiny", action="store_true", help="tiny random policy + PRM from rlkit.testing (seconds)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (one more runs first as warm-up)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, e.g. training.x=1")
    ap.add_argument("--matmul", type=int, default=0, help="matmul ceiling size (default 1024, --tiny 256)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="grpo_step_"))
    sets = tiny_overrides(tmp) if a.tiny else []
    probe = load_recipe(RECIPES[a.algo], sets + a.sets)
    tr = probe.training
    cycle = 1
    if a.algo == "ppo":
        cycle = int(tr.get("steps_per_generation", 1) or 1) * int(tr.get("num_iterations", 1) or 1)
    sets += [f"training.max_steps={(a.steps + 1) * cycle}", "training.save_strategy=no", "data.num_eval=0",
             "training.logging_steps=1000000"]
    recipe = load_recipe(RECIPES[a.algo], sets + a.sets)
    build = build_ppo_trainer if a.algo == "ppo" else build_grpo_trainer
    trainer = build(recipe, tmp / "run")
    watch = Stopwatch()
    use_vllm, undo = instrument(trainer, watch)
    trainer.add_callback(StepTimer(watch, cycle))
    try:
        trainer.train()
    finally:
        for u in undo:
            u()
    if len(watch.steps) < 2:
        raise SystemExit(f"only {len(watch.steps)} step(s) timed; need >= 2 (warm-up + 1)")
    rep = summarize(watch.steps[1:])
    n = a.matmul or (256 if a.tiny else 1024)
    ceilings = {"fp32": matmul_ceiling(n, torch.float32), "bf16": matmul_ceiling(n, torch.bfloat16)}
    params = sum(p.numel() for p in trainer.model.parameters())
    fb = rep["parts_s"]["forward_backward"]
    flops = 6.0 * params * rep["tokens"]
    achieved = flops / fb if fb > 0 else 0.0
    rep.update(algo=a.algo, recipe=RECIPES[a.algo], tiny=a.tiny, overrides=sets + a.sets, steps_measured=a.steps,
               optimizer_steps_per_step=cycle, weight_sync="vllm" if use_vllm else "n/a",
               params=params, fwd_bwd_flops=flops, fwd_bwd_flops_per_s=achieved, matmul_n=n,
               matmul_flops_per_s=ceilings, threads=torch.get_num_threads(),
               dtype=str(next(trainer.model.parameters()).dtype).replace("torch.", ""))
    report(rep)
    if a.json:
        a.json.write_text(json.dumps(rep, indent=2))
    return rep


def report(rep: dict[str, Any]) -> None:
    """Print the split, the sum check and the FLOP/s line."""
    step = rep["step_s"]
    print(f"{rep['algo']} step, {rep['recipe']}{' (tiny)' if rep['tiny'] else ''}: median of {rep['steps_measured']} "
          f"measured steps ({rep['optimizer_steps_per_step']} optimizer step(s) each), {rep['threads']} threads, "
          f"{rep['dtype']}; step times {', '.join(f'{t:.3f}' for t in rep['step_times_s'])} s")
    print(f"{'part':<18}{'seconds':>10}{'share':>9}{'median/step':>13}")
    for p, s in rep["parts_s"].items():
        med = rep["part_medians_s"].get(p)
        shown = "n/a" if p == "weight_sync" and rep["weight_sync"] == "n/a" else f"{s:.4f}"
        print(f"{p:<18}{shown:>10}{s / step:>9.1%}{'' if med is None else f'{med:.4f}':>13}")
    named = sum(v for k, v in rep["parts_s"].items() if k != "other")
    print(f"sum of parts {named:.4f} s + other {rep['parts_s']['other']:.4f} s = {named + rep['parts_s']['other']:.4f}"
          f" s; measured step {step:.4f} s")
    c = rep["matmul_flops_per_s"]
    print(f"forward+backward: 6 x {rep['params'] / 1e6:.2f}M params x {rep['tokens']} tokens "
          f"({rep['real_tokens']} not padding) = {rep['fwd_bwd_flops'] / 1e9:.2f} GFLOP in {rep['parts_s']['forward_backward']:.3f} s"
          f" -> {rep['fwd_bwd_flops_per_s'] / 1e9:.2f} GFLOP/s; matmul {rep['matmul_n']}^2 ceiling fp32 "
          f"{c['fp32'] / 1e9:.1f}, bf16 {c['bf16'] / 1e9:.1f} GFLOP/s ({rep['fwd_bwd_flops_per_s'] / c['fp32']:.1%} of fp32)")


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    run(argv)


if __name__ == "__main__":
    main()
