"""Does online merging keep what SFT taught? RL from an SFT policy with AdamW vs OnDARE vs OnTIES, equal steps.

    # the SFT policy (the quickstart's SFT stage, all six problem families; ~5 min on 2 cores):
    rlkit train sft_embedded --set training.max_steps=24 --set training.bf16=true --set data.num_eval=64 \
        --run-dir runs/sft24
    python benchmarks/merging_retention.py --policy runs/sft24/policy [--base embedded:smollm2-135m-instruct] \
        [--steps 12] [--seeds 0,1] [--optimizers adamw,ondare,onties] [--held-family share] [--out benchmarks/results]
    python benchmarks/merging_retention.py --tiny     # tiny random model, 2 steps (smoke test)

The SFT policy was taught every family of ``builtin:arithmetic``. RL (the ``grpo_prm_quickstart`` recipe with
the quickstart chain's RL settings: 12 steps, 128 new tokens, blank-line steps, bf16, process_grpo credit)
then trains on every family *except* ``--held-family``, so that family is SFT-taught but never rewarded. The
default holds out ``share`` (the only family that divides), chosen before any run. The three arms differ only
in ``optimizer.name``; OnDARE/OnTIES take their paper defaults (p 0.01, alpha 1e-7) with ``base_model`` the
policy before SFT, so tau = SFT - base.

Measured for the SFT policy (once) and after each run, on held-out problems (different seeds from training):
- reward: greedy accuracy on ``--eval-size`` problems of the rewarded families, and the training reward
  (mean of the first and of the last three logged steps);
- what SFT taught that is kept: greedy accuracy on ``--eval-size`` problems of the held-out family, and the
  mean per-token loss (NLL of the worked solution, completion tokens only) on held-out SFT data of both kinds.
Writes ``merging_retention.json`` (every run, and per optimizer the mean and population std over seeds of each
change from the SFT policy) and ``merging_retention.png``, and prints the summary table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import matplotlib
import torch
from transformers import AutoModelForCausalLM

from reward.registry import build_reward
from rlkit import report
from rlkit.config import load_recipe
from rlkit.data import ARITHMETIC_FAMILIES, arithmetic_problems, load_prompts, worked_solution
from rlkit.distributed import write_run_files
from rlkit.launch import new_run_dir
from rlkit.models import load_tokenizer
from rlkit.trainers.grpo_runner import build_grpo_trainer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dense_vs_outcome import RL_SETTINGS as DVO_RL_SETTINGS  # noqa: E402
from dense_vs_outcome import TINY_SETTINGS, add_run_args, parse_run_args  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _tiny import tiny_model_dir  # noqa: E402

RL_SETTINGS = [*DVO_RL_SETTINGS, "data.num_train=256"]  # dense_vs_outcome's RL stage on the training families
EVAL_SEED = 10_000  # the seed `builtin:arithmetic` uses for its held-out split (train uses 0)
METRICS = ("rewarded_accuracy", "held_accuracy", "rewarded_nll", "held_nll")


def family_split(n: int, seed: int, held: str) -> tuple[list[dict], list[dict]]:
    """The first ``n`` generated problems (seed ``seed``) outside family ``held``, and the first ``n`` in it."""
    rows = arithmetic_problems(n * len(ARITHMETIC_FAMILIES) * 3, seed=seed)
    rewarded = [r for r in rows if r["family"] != held][:n]
    held_rows = [r for r in rows if r["family"] == held][:n]
    if len(rewarded) < n or len(held_rows) < n:
        raise SystemExit(f"could not draw {n} problems of each kind for held family {held!r}")
    return rewarded, held_rows


def write_jsonl(rows: list[dict], path: Path) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@torch.no_grad()
def completion_nll(model, tok, dataset) -> float:
    """Mean per-token negative log-likelihood of each row's worked solution after its chat prompt (the SFT
    loss on completion tokens), over all completion tokens of ``dataset``."""
    model.eval()
    total, count = 0.0, 0
    for r in dataset:
        prompt = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(r["prompt"] + [{"role": "assistant", "content": worked_solution(r["answer"])}],
                                       tokenize=False)
        n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
        ids = tok(full, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
        logits = model(ids).logits[0, :-1].float()
        start = n_prompt - 1  # logits at position t predict token t + 1: the completion starts at the prompt's end
        total += float(torch.nn.functional.cross_entropy(logits[start:], ids[0, 1:][start:], reduction="sum"))
        count += ids.shape[1] - n_prompt
    return total / max(count, 1)


def measure(model, tok, evals: dict, step_reward, max_new_tokens: int) -> dict[str, float]:
    """Greedy held-out accuracy and completion loss on the rewarded and the held-out family."""
    out = {}
    for kind, ds in evals.items():
        out[f"{kind}_accuracy"] = report.evaluate_policy(model, tok, ds, step_reward, max_new_tokens)["accuracy"]
        out[f"{kind}_nll"] = completion_nll(model, tok, ds)
    model.train()
    return out


def one_run(sets: list[str], optimizer: str, base: str, seed: int, evals: dict) -> dict:
    """Train one optimizer with one seed; its end measurements and training reward."""
    opt_sets = [f"optimizer.name={optimizer}"] + ([f"optimizer.args.base_model={base}"] if optimizer != "adamw" else [])
    recipe = load_recipe("grpo_prm_quickstart", sets + opt_sets + [f"seed={seed}", f"name=mr_{optimizer}_{seed}"])
    run_dir = new_run_dir(recipe, tempfile.mkdtemp(prefix="rlkit-mr-"))
    write_run_files(recipe, run_dir)
    trainer = build_grpo_trainer(recipe, run_dir)
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    after = measure(trainer.model, trainer.processing_class, evals, trainer.step_reward,
                    int(recipe.training.get("max_completion_length", 128)))
    return {"seed": seed, "after": after, "reward": rewards,
            "reward_first3": statistics.fmean(rewards[:3]), "reward_last3": statistics.fmean(rewards[-3:])}


def summarise(runs: dict[str, list[dict]], sft: dict[str, float]) -> dict[str, dict]:
    """Per optimizer: mean and population std over seeds of each metric's change from the SFT policy, and of the
    training reward gained (last three steps minus first three)."""
    out = {}
    for opt, rs in runs.items():
        rows = {m: [r["after"][m] - sft[m] for r in rs] for m in METRICS}
        rows["reward_gain"] = [r["reward_last3"] - r["reward_first3"] for r in rs]
        out[opt] = {m: (statistics.fmean(v), statistics.pstdev(v)) for m, v in rows.items()}
    return out


def plot(summary: dict, path: Path) -> None:
    titles = {"reward_gain": "training reward gained", "rewarded_accuracy": "acc. change, rewarded families",
              "held_accuracy": "acc. change, held-out family", "held_nll": "SFT-data loss change, held family"}
    fig, axes = plt.subplots(1, len(titles), figsize=(3.4 * len(titles), 3.2))
    opts = list(summary)
    for ax, (key, title) in zip(axes, titles.items()):
        ax.bar(opts, [summary[o][key][0] for o in opts], yerr=[summary[o][key][1] for o in opts], capsize=4,
               color=["#888", "#4a7", "#47a"][:len(opts)])
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(f"{title}\n(mean +- std over seeds)", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap, seeds="0,1", eval_every=False)
    ap.add_argument("--base", default="embedded:smollm2-135m-instruct", help="the policy before SFT (tau's base)")
    ap.add_argument("--optimizers", default="adamw,ondare,onties")
    ap.add_argument("--held-family", default="share", choices=ARITHMETIC_FAMILIES)
    args, seeds = parse_run_args(ap, argv)
    optimizers = [o.strip() for o in args.optimizers.split(",")]
    policy = tiny_model_dir() if args.tiny else args.policy
    base = tiny_model_dir() if args.tiny else args.base

    data_dir = Path(tempfile.mkdtemp(prefix="rlkit-mr-data-"))
    train_rows, _ = family_split(512, 0, args.held_family)
    rewarded_eval, held_eval = family_split(args.eval_size, EVAL_SEED, args.held_family)
    train_file = write_jsonl(train_rows, data_dir / "train.jsonl")
    evals = {kind: load_prompts(write_jsonl(rows, data_dir / f"{kind}.jsonl"), n=args.eval_size)
             for kind, rows in (("rewarded", rewarded_eval), ("held", held_eval))}
    sets = [f"model={policy}", f"training.max_steps={args.steps}", f"data.train={train_file}", "data.num_eval=0"]
    sets += TINY_SETTINGS if args.tiny else RL_SETTINGS

    recipe = load_recipe("grpo_prm_quickstart", sets)
    max_new = int(recipe.training.get("max_completion_length", 128))
    start_model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    sft = measure(start_model, load_tokenizer(policy), evals, build_reward(recipe.reward.name, **recipe.reward.args),
                  max_new)
    del start_model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {opt: [] for opt in optimizers}
    for seed in seeds:  # every optimizer once per seed, so a run cut short still holds comparable arms
        for opt in optimizers:
            runs[opt].append(one_run(sets, opt, base, seed, evals))
            done = {o: rs for o, rs in runs.items() if rs}
            result = {"command": "python benchmarks/merging_retention.py " + " ".join(argv or sys.argv[1:]),
                      "policy": "tiny" if args.tiny else args.policy, "base": "tiny" if args.tiny else args.base,
                      "held_family": args.held_family, "seeds": seeds, "steps": args.steps,
                      "eval_size": args.eval_size, "sft": sft, "summary": summarise(done, sft), "runs": done}
            (out / "merging_retention.json").write_text(json.dumps(result, indent=1))  # after every run
    summary = result["summary"]
    plot(summary, out / "merging_retention.png")
    print(f"SFT policy: rewarded-family accuracy {sft['rewarded_accuracy']:.3f}, held-out family "
          f"({args.held_family}) {sft['held_accuracy']:.3f}, loss {sft['rewarded_nll']:.4f} / {sft['held_nll']:.4f}")
    print("changes from the SFT policy, mean +- std over seeds " + ",".join(map(str, seeds)) + ":")
    for opt, s in summary.items():
        print(f"{opt:>7}: reward gain {s['reward_gain'][0]:+.3f} +- {s['reward_gain'][1]:.3f}; "
              f"accuracy rewarded {s['rewarded_accuracy'][0]:+.3f} +- {s['rewarded_accuracy'][1]:.3f}, "
              f"held family {s['held_accuracy'][0]:+.3f} +- {s['held_accuracy'][1]:.3f}; "
              f"loss rewarded {s['rewarded_nll'][0]:+.4f} +- {s['rewarded_nll'][1]:.4f}, "
              f"held family {s['held_nll'][0]:+.4f} +- {s['held_nll'][1]:.4f}")
    print(f"wrote {out / 'merging_retention.png'} and {out / 'merging_retention.json'}")
    return result


if __name__ == "__main__":
    main()
