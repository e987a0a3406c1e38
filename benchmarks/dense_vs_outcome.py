"""Dense vs outcome credit from an SFT policy: process_grpo vs min_form vs outcome, same budget, several seeds.

    # the SFT policy (the quickstart's SFT stage; ~5 min on 2 cores):
    rlkit train sft_embedded --set training.max_steps=24 --set training.bf16=true --set data.num_eval=64 \
        --run-dir runs/sft24
    python benchmarks/dense_vs_outcome.py --policy runs/sft24/policy [--steps 12] [--eval-every 4] \
        [--seeds 0,1,2] [--arms process_grpo,min_form,outcome] [--out benchmarks/results]
    python benchmarks/dense_vs_outcome.py --tiny      # tiny random model, 2 steps, 2 seeds (smoke test)

Each (arm, seed) is the `grpo_prm_quickstart` recipe from the given policy, changing only `algorithm.credit`
and the trainer seed (the training and held-out problems are the same for every run), with the quickstart
chain's RL settings (12 steps, 128 new tokens, blank-line steps, bf16). A callback measures greedy held-out
accuracy (verifier, `--eval-size` problems) at step 0 (measured in the first run only: greedy decoding of the
same start policy gives every run the same step-0 answers) and every `--eval-every` steps. Writes
`dense_vs_outcome.json` (every run's curves and, per arm, mean and std over seeds of held-out accuracy at each
checkpoint, training reward and steps per response) and `dense_vs_outcome.png`, and prints the summary. The
steps-per-response curve is the sum-form incentive PURE reports (more, smaller steps under summed credit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import matplotlib
from transformers import TrainerCallback

from rlkit import report
from rlkit.config import load_recipe
from rlkit.distributed import write_run_files
from rlkit.launch import new_run_dir
from rlkit.recipe_glue import load_datasets
from rlkit.trainers.grpo_runner import build_grpo_trainer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _tiny import tiny_model_dir  # noqa: E402

RL_SETTINGS = ["training.max_completion_length=128", "training.learning_rate=5.0e-6", "training.bf16=true",
               "training.save_strategy=no", "reward.args.splitter.mode=double_newline"]
TINY_SETTINGS = ["training.max_completion_length=12", "training.num_generations=2",
                 "training.per_device_train_batch_size=4", "data.num_train=16", "training.save_strategy=no"]


class HeldOut(TrainerCallback):
    """Greedy held-out accuracy at step 0 and every ``every`` steps (and the last)."""

    def __init__(self, trainer, eval_ds, every: int, max_new_tokens: int, start: float | None = None):
        self.trainer, self.eval_ds, self.every, self.max_new_tokens = trainer, eval_ds, every, max_new_tokens
        self.start = start  # the start policy's accuracy when already measured (greedy: same for every run)
        self.points: list[tuple[int, float]] = []

    def measure(self, step: int) -> None:
        t = self.trainer
        r = report.evaluate_policy(t.model, t.processing_class, self.eval_ds, t.step_reward,
                                   max_new_tokens=self.max_new_tokens)
        t.model.train()
        self.points.append((step, r["accuracy"]))

    def on_train_begin(self, args, state, control, **kw):
        if self.start is None:
            self.measure(0)
        else:
            self.points.append((0, self.start))

    def on_step_end(self, args, state, control, **kw):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(state.global_step)


def one_run(sets: list[str], credit: str, seed: int, eval_every: int, start: float | None = None,
            monitors: tuple[str, ...] = (), name: str = "dvo") -> dict:
    """Train one arm with one seed; its curves (and those of the logged ``monitors``). ``start``: the start
    policy's held-out accuracy if known."""
    recipe = load_recipe("grpo_prm_quickstart", sets + [f"algorithm.credit={credit}", f"seed={seed}",
                                                        f"name={name}_{credit}_{seed}"])
    run_dir = new_run_dir(recipe, tempfile.mkdtemp(prefix="rlkit-dvo-"))
    write_run_files(recipe, run_dir)
    _, eval_ds = load_datasets(recipe)
    trainer = build_grpo_trainer(recipe, run_dir)
    cb = HeldOut(trainer, eval_ds, eval_every, int(recipe.training.get("max_completion_length", 128)), start)
    trainer.add_callback(cb)
    trainer.train()
    hist = trainer.state.log_history
    curves = {key: [(h["step"], h[key]) for h in hist if key in h]
              for key in ("reward", "prm/steps_per_response") + tuple(monitors)}
    return {"seed": seed, "heldout_accuracy": cb.points, "reward": curves.pop("reward"),
            "steps_per_response": curves.pop("prm/steps_per_response"), **{k: v for k, v in curves.items() if v}}


def mean_std(runs: list[dict], key: str) -> list[tuple[int, float, float]]:
    """(step, mean, population std) over seeds of a curve, at the steps every run has."""
    steps = sorted(set.intersection(*(set(s for s, _ in r[key]) for r in runs)))
    out = []
    for step in steps:
        vals = [dict(r[key])[step] for r in runs]
        out.append((step, statistics.fmean(vals), statistics.pstdev(vals)))
    return out


TITLES = {"heldout_accuracy": "held-out greedy accuracy", "reward": "training reward",
          "steps_per_response": "steps per sampled response"}


def plot(summary: dict, path: Path, titles: dict[str, str] = TITLES) -> None:
    """One panel per curve in ``titles`` (key -> title): each arm's mean over seeds with a +- std band."""
    fig, axes = plt.subplots(1, len(titles), figsize=(13, 3.6))
    for ax, (key, title) in zip(axes, titles.items()):
        for arm, curves in summary.items():
            if key not in curves:
                continue
            xs, ms, ss = zip(*curves[key])
            ax.plot(xs, ms, marker="o", ms=3, label=arm)
            ax.fill_between(xs, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)], alpha=0.2)
        ax.set_title(f"{title} (mean +- std over seeds)", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_run_args(ap: argparse.ArgumentParser, seeds: str = "0,1,2", eval_every: bool = True) -> None:
    """The options of the benchmarks that run RL from an SFT policy (this one, online_prm, merging_retention)."""
    ap.add_argument("--policy", help="the SFT policy folder every run starts from")
    ap.add_argument("--steps", type=int, default=12)
    if eval_every:
        ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--eval-size", type=int, default=64)
    ap.add_argument("--seeds", default=seeds)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")


def parse_run_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[int]]:
    """(args, seeds) of :func:`add_run_args`'s options; ``--policy`` is required unless ``--tiny``."""
    args = ap.parse_args(argv)
    if not args.tiny and not args.policy:
        ap.error("--policy PATH (an SFT policy folder) is required without --tiny")
    return args, [int(s) for s in args.seeds.split(",")]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap)
    ap.add_argument("--arms", default="process_grpo,min_form,outcome")
    args, seeds = parse_run_args(ap, argv)
    arms = [a.strip() for a in args.arms.split(",")]
    sets = [f"training.max_steps={args.steps}", f"data.num_eval={args.eval_size}"]
    sets += [f"model={tiny_model_dir()}"] + TINY_SETTINGS if args.tiny else [f"model={args.policy}"] + RL_SETTINGS

    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    start = None  # every run starts from the same policy with the same held-out problems: greedy step 0 once
    for arm in arms:
        for seed in seeds:
            runs[arm].append(one_run(sets, arm, seed, args.eval_every, start))
            start = runs[arm][-1]["heldout_accuracy"][0][1]
    summary = {arm: {k: mean_std(rs, k) for k in ("heldout_accuracy", "reward", "steps_per_response")}
               for arm, rs in runs.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python benchmarks/dense_vs_outcome.py " + " ".join(argv or sys.argv[1:]),
              "policy": args.policy or "tiny", "seeds": seeds, "steps": args.steps, "summary": summary, "runs": runs}
    (out / "dense_vs_outcome.json").write_text(json.dumps(result, indent=1))
    plot(summary, out / "dense_vs_outcome.png")
    for arm, curves in summary.items():
        (s0, m0, _), (s1, m1, sd1) = curves["heldout_accuracy"][0], curves["heldout_accuracy"][-1]
        rw = curves["reward"]
        print(f"{arm:>13}: held-out accuracy step {s0} {m0:.3f} -> step {s1} {m1:.3f} +- {sd1:.3f} "
              f"({len(seeds)} seeds); mean training reward {statistics.fmean(p[1] for p in rw):.3f}; "
              f"steps/response {curves['steps_per_response'][0][1]:.2f} -> {curves['steps_per_response'][-1][1]:.2f}")
    print(f"wrote {out / 'dense_vs_outcome.png'} and {out / 'dense_vs_outcome.json'}")
    return result


if __name__ == "__main__":
    main()
