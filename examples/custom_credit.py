"""A custom credit function: discounted future step rewards instead of the plain sum.

Run:  python examples/custom_credit.py [--tiny]

A credit function takes the padded step tensors of a whole batch and returns (B, T) advantages; see
rlkit/credit.py for the built-in ones. A recipe names it by import path, no subclass needed:

    algorithm: {name: grpo, credit: custom_credit:discounted_process_credit}

(``package.module:function``; the module must be importable: here this file's folder is on sys.path because
the script runs from it). ``credit.register_credit("name")`` registers a function under a short name instead,
and ``PRMGRPOTrainer(credit=fn)`` takes the callable itself in Python.
"""

from __future__ import annotations

import torch
from _tiny import overrides, parse_args

from rlkit import credit


def discounted_process_credit(step_rewards, step_mask, step_ends, token_mask, group_size, scale=True,
                              gamma: float = 0.9):
    """A[b, t] = sum over steps s ending at or after t of gamma**(k) * r~[b, s], k = steps between t and s."""
    norm = credit.normalize_steps(step_rewards, step_mask, group_size, scale)
    B, T = token_mask.shape
    adv = torch.zeros(B, T)
    for b in range(B):
        steps = [(int(step_ends[b, s]), float(norm[b, s])) for s in range(norm.shape[1]) if step_mask[b, s]]
        for t in range(T):
            future = [r for end, r in steps if end >= t]
            adv[b, t] = sum(gamma ** k * r for k, r in enumerate(future))
    return adv * token_mask


def main() -> None:
    from rlkit.config import load_recipe
    from rlkit.launch import train

    args = parse_args(__doc__)
    recipe = load_recipe("grpo_prm_quickstart", overrides(args, "name=custom_credit",
                                                          "algorithm.credit=custom_credit:discounted_process_credit"))
    print("run folder:", train(recipe, args.output_dir))


if __name__ == "__main__":
    main()
