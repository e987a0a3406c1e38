"""Dense (process_grpo) vs outcome credit: GRPO on the embedded SmolLM2, same seed, same budget.

    python benchmarks/dense_vs_outcome.py [--steps 20] [--eval-every 5] [--out benchmarks/results]
    python benchmarks/dense_vs_outcome.py --tiny          # tiny random model, seconds (smoke test)

Runs the quickstart recipe twice, changing only `algorithm.credit`, with a callback that measures greedy
held-out accuracy (verifier) every `--eval-every` steps. Writes `dense_vs_outcome.png` (training reward,
sample accuracy and held-out accuracy per step, both runs) and `dense_vs_outcome.json`, and prints the final
numbers. On CPU with a 135M model the differences are small and noisy: treat one run as one sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--eval-size", type=int, default=16)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    from transformers import TrainerCallback

    from rlkit import report
    from rlkit.config import load_recipe
    from rlkit.distributed import write_run_files
    from rlkit.launch import new_run_dir
    from rlkit.recipe_glue import load_datasets
    from rlkit.trainers.grpo_runner import build_grpo_trainer

    class HeldOut(TrainerCallback):
        """Greedy held-out accuracy every k steps (and at step 0)."""

        def __init__(self, trainer, eval_ds, every):
            self.trainer, self.eval_ds, self.every, self.points = trainer, eval_ds, every, []

        def measure(self, step):
            t = self.trainer
            r = report.evaluate_policy(t.model, t.processing_class, self.eval_ds, t.step_reward,
                                       max_new_tokens=t.args.max_completion_length)
            t.model.train()
            self.points.append((step, r["accuracy"]))

        def on_train_begin(self, args, state, control, **kw):
            self.measure(0)

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % self.every == 0 or state.global_step == state.max_steps:
                self.measure(state.global_step)

    sets = [f"training.max_steps={args.steps}", f"data.num_eval={args.eval_size}", "seed=7"]
    if args.tiny:
        from _tiny import tiny_model_dir

        sets += [f"model={tiny_model_dir()}", "training.max_completion_length=12", "training.num_generations=2",
                 "training.per_device_train_batch_size=4", "data.num_train=16"]
    results = {}
    for credit in ("process_grpo", "outcome"):
        recipe = load_recipe("grpo_prm_quickstart", sets + [f"algorithm.credit={credit}", f"name=bench_{credit}"])
        run_dir = new_run_dir(recipe, tempfile.mkdtemp(prefix="rlkit-bench-"))
        write_run_files(recipe, run_dir)
        _, eval_ds = load_datasets(recipe)
        trainer = build_grpo_trainer(recipe, run_dir)
        cb = HeldOut(trainer, eval_ds, args.eval_every)
        trainer.add_callback(cb)
        trainer.train()
        hist = trainer.state.log_history
        results[credit] = {
            "reward": [(h["step"], h["reward"]) for h in hist if "reward" in h],
            "sample_accuracy": [(h["step"], h["outcome/accuracy"]) for h in hist if "outcome/accuracy" in h],
            "heldout_accuracy": cb.points,
        }
        print(f"{credit:>13}: held-out accuracy {cb.points[0][1]:.3f} -> {cb.points[-1][1]:.3f}; "
              f"mean training reward {sum(v for _, v in results[credit]['reward']) / max(len(results[credit]['reward']), 1):.3f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dense_vs_outcome.json").write_text(json.dumps(results, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("reward", "sample_accuracy", "heldout_accuracy"),
                              ("training reward (min step score)", "accuracy of sampled responses",
                               "held-out greedy accuracy")):
        for credit, res in results.items():
            pts = res[key]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=credit)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "dense_vs_outcome.png", dpi=110)
    print(f"wrote {out / 'dense_vs_outcome.png'} and {out / 'dense_vs_outcome.json'}")


if __name__ == "__main__":
    main()
