"""Subclassing PRMGRPOTrainer: override one hook to change how completions are scored.

Run:  python examples/trainer_subclass.py [--tiny]

Hooks: `score_completions` (text -> StepScores), `compute_advantages` (step tensors -> (B, T) advantages),
`log_step_metrics` (monitors). Here `score_completions` caps the number of steps that can earn credit, a simple
guard against "many tiny safe steps" reward hacking, and logs how often the cap bites.
"""

from __future__ import annotations

from _tiny import overrides, parse_args

from reward.base import StepScores
from rlkit.trainers.grpo_trainer import PRMGRPOTrainer


class CappedStepsGRPOTrainer(PRMGRPOTrainer):
    max_scored_steps = 6

    def score_completions(self, questions, completions, references):
        scored = super().score_completions(questions, completions, references)
        capped = []
        for s in scored:
            if len(s.steps) > self.max_scored_steps:  # steps past the cap earn nothing
                scores = s.scores[: self.max_scored_steps] + [0.0] * (len(s.steps) - self.max_scored_steps)
                s = StepScores(s.steps, scores, s.labels, {**s.meta, "capped": True})
            capped.append(s)
        self._capped = sum("capped" in s.meta for s in capped) / max(len(capped), 1)
        return capped

    def log_step_metrics(self, items, mode):
        super().log_step_metrics(items, mode)
        self._metrics[mode]["prm/capped_share"].append(getattr(self, "_capped", 0.0))


def main() -> None:
    from rlkit.config import load_recipe
    from rlkit.launch import train

    args = parse_args(__doc__)
    recipe = load_recipe("grpo_prm_quickstart", overrides(args, "name=trainer_subclass"))
    print("run folder:", train(recipe, args.output_dir, trainer_cls=CappedStepsGRPOTrainer))


if __name__ == "__main__":
    main()
