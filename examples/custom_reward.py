"""A custom step reward model in ~15 lines, registered so a recipe can name it.

Run:  python examples/custom_reward.py [--tiny]

The reward below trusts the arithmetic checker on steps with equations, and rewards short, concrete steps
elsewhere. Registering it under a name is all it takes: `reward: {name: concise-arithmetic}` in any recipe.
"""

from __future__ import annotations

from _tiny import overrides, parse_args

from reward.base import StepRewardModel
from reward.models.arithmetic import check_equations
from reward.registry import register


@register("concise-arithmetic")
class ConciseArithmetic(StepRewardModel):
    """1/0 for steps whose equations are right/wrong; steps without equations score by brevity."""

    def __init__(self, max_chars: int = 120, splitter=None):
        super().__init__(splitter)
        self.max_chars = max_chars

    def score_steps(self, prompts, steps, references=None):
        out = []
        for response in steps:
            scores = []
            for step in response:
                eqs = check_equations(step.text)
                scores.append(float(all(eqs)) if eqs else max(0.0, 1 - len(step.text) / self.max_chars))
            out.append(scores)
        return out


def main() -> None:
    from rlkit.config import load_recipe
    from rlkit.launch import train

    args = parse_args(__doc__)
    recipe = load_recipe("grpo_prm_quickstart", overrides(args, "reward={name: concise-arithmetic}",
                                                          "name=custom_reward"))
    print("run folder:", train(recipe, args.output_dir))


if __name__ == "__main__":
    main()
