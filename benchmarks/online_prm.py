"""A fixed PRM vs an implicit PRM that learns online (PRIME), from the SFT policy, same budget.

    # the SFT policy and the fixed-PRM arm (the arithmetic step checker, process_grpo credit) come from
    # benchmarks/dense_vs_outcome.py (its process_grpo arm is this comparison's fixed arm, same settings):
    python benchmarks/online_prm.py --policy runs/sft24/policy [--fixed benchmarks/results/dense_vs_outcome.json] \
        [--seeds 0,1,2] [--steps 12] [--eval-every 4] [--out benchmarks/results]
    python benchmarks/online_prm.py --tiny     # tiny random model, 2 steps (smoke test; runs the fixed arm too)

Arms (everything else is the quickstart's RL stage, as in dense_vs_outcome: 12 GRPO steps of 8 samples, 128 new
tokens, lr 5e-6, bf16, process_grpo credit, the same 64 held-out problems):
- ``fixed``: the rule-based ``arithmetic`` step checker (blank-line steps, final step by the answer verifier),
  read from ``--fixed`` (a dense_vs_outcome.json) or run here when that file is absent or lacks a seed;
- ``online``: PRIME's setup: an ``implicit-prm`` (pi_phi and the frozen pi_ref both start as the SFT policy,
  PRIME's beta 0.05 and lr 1e-6, AdamW) that takes one step per rollout on the verifier's labels
  (``algorithm.reward_update: after_scoring``), its step scores as process credit plus the verifier's 0/1 with
  weight 1 (``algorithm.outcome_reward: weighted``).
The arms' training rewards are on different scales; the comparable numbers are held-out accuracy, the verifier's
accuracy of the samples (``outcome/accuracy``) and, for the online arm, how often the PRM's verdict agrees with
the verifier before each update (``online_reward/accuracy``) and its loss. Writes ``online_prm.json`` (every run,
mean and population std over seeds per arm) and ``online_prm.png``, and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dense_vs_outcome import (  # noqa: E402
    RL_SETTINGS, TINY_SETTINGS, add_run_args, mean_std, one_run, parse_run_args, plot)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _tiny import tiny_model_dir  # noqa: E402

MONITORS = ("outcome/accuracy", "prm/verifier_agreement", "online_reward/accuracy", "online_reward/loss")
CURVES = {"heldout_accuracy": "held-out greedy accuracy", "outcome/accuracy": "verifier accuracy of samples",
          "steps_per_response": "steps per sampled response"}


def online_sets(policy: str, tiny: bool) -> list[str]:
    """The online arm's recipe changes (before the RL settings, which set the splitter of whichever reward)."""
    beta_lr = "beta: 0.5, lr: 0.05, optimizer: sgd" if tiny else "beta: 0.05, lr: 1.0e-6"
    return [f"reward={{name: implicit-prm, args: {{model: {policy}, {beta_lr}}}}}",
            "algorithm.reward_update=after_scoring", "algorithm.outcome_reward=weighted"]


def fixed_runs(path: str | None, seeds: list[int]) -> dict[int, dict]:
    """The process_grpo runs of a dense_vs_outcome.json, by seed (empty when there is no such file)."""
    if not path or not Path(path).is_file():
        return {}
    return {r["seed"]: r for r in json.loads(Path(path).read_text())["runs"].get("process_grpo", [])
            if r["seed"] in seeds}


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    return {arm: {k: mean_std(rs, k) for k in CURVES if all(rs and r.get(k) for r in rs)}
            for arm, rs in runs.items() if rs}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap)
    ap.add_argument("--fixed", default="benchmarks/results/dense_vs_outcome.json",
                    help="a dense_vs_outcome.json whose process_grpo runs are the fixed arm")
    args, seeds = parse_run_args(ap, argv)
    policy = tiny_model_dir() if args.tiny else args.policy
    common = [f"training.max_steps={args.steps}", f"data.num_eval={args.eval_size}", f"model={policy}"]
    settings = TINY_SETTINGS if args.tiny else RL_SETTINGS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    reused = {} if args.tiny else fixed_runs(args.fixed, seeds)
    runs: dict[str, list[dict]] = {"fixed": [], "online": []}
    start = None
    for seed in seeds:
        fixed = reused.get(seed)
        if fixed is None:
            fixed = one_run(common + settings, "process_grpo", seed, args.eval_every, start, MONITORS, "opf")
        runs["fixed"].append(fixed)
        start = fixed["heldout_accuracy"][0][1]
        runs["online"].append(one_run(common + online_sets(policy, args.tiny) + settings, "process_grpo", seed,
                                      args.eval_every, start, MONITORS, "opo"))
        result = {"command": "python benchmarks/online_prm.py " + " ".join(argv or sys.argv[1:]),
                  "policy": "tiny" if args.tiny else args.policy, "steps": args.steps, "seeds": seeds,
                  "fixed_from": None if args.tiny else args.fixed, "summary": summarise(runs), "runs": runs}
        (out / "online_prm.json").write_text(json.dumps(result, indent=1))  # after every seed
    summary = result["summary"]
    plot(summary, out / "online_prm.png", CURVES)
    for arm, curves in summary.items():
        (s0, m0, _), (s1, m1, sd1) = curves["heldout_accuracy"][0], curves["heldout_accuracy"][-1]
        line = f"{arm:>6}: held-out accuracy step {s0} {m0:.3f} -> step {s1} {m1:.3f} +- {sd1:.3f} ({len(seeds)} seeds)"
        if "outcome/accuracy" in curves:
            line += f"; sample accuracy {statistics.fmean(p[1] for p in curves['outcome/accuracy']):.3f}"
        print(line)
    for r in runs["online"]:
        agree = [v for _, v in r.get("online_reward/accuracy", [])]
        if agree:
            print(f"online seed {r['seed']}: PRM-vs-verifier agreement before each update "
                  f"{agree[0]:.2f} -> {agree[-1]:.2f} (mean {statistics.fmean(agree):.2f})")
    print(f"wrote {out / 'online_prm.png'} and {out / 'online_prm.json'}")
    return result


if __name__ == "__main__":
    main()
