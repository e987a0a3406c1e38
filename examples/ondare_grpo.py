"""GRPO with the OnDARE online merging optimizer: RL updates are sparsified and merged with the SFT-minus-base
delta, so the policy gains reward while keeping what SFT taught.

Run:  python examples/ondare_grpo.py --base-model PATH_OR_HUB_ID     (the pretrained model the policy was SFT'd from)
      python examples/ondare_grpo.py --tiny                          (tiny random base + "SFT" pair, 2 steps)
      python examples/ondare_grpo.py --tiny --set optimizer.name=onties

The recipe equivalent is one block:
    optimizer: {name: ondare, args: {p: 0.1, alpha: 1.0e-7, base_model: PATH}}
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _tiny import TINY_OVERRIDES


def tiny_base_and_sft() -> tuple[str, str]:
    """A tiny random 'base' model and an 'SFT' model = base + a small perturbation, saved side by side."""
    import torch

    from rlkit import testing

    tok = testing.tiny_tokenizer()
    root = Path(tempfile.mkdtemp(prefix="rlkit-ondare-"))
    base = testing.tiny_causal_lm(tok, seed=0)
    base_dir = testing.save_tiny(base, tok, root / "base")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return base_dir, testing.save_tiny(base, tok, root / "sft")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--base-model", help="the pretrained model the recipe's policy was fine-tuned from")
    p.add_argument("--output-dir", default="runs/examples")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    if not args.tiny and not args.base_model:
        sys.exit("ondare_grpo.py: error: --base-model is required (or --tiny)")

    from rlkit.config import load_recipe
    from rlkit.launch import train

    sets = ["name=ondare_grpo", "optimizer.name=ondare", "optimizer.args.p=0.1", "optimizer.args.alpha=1.0e-7"]
    if args.tiny:
        base, sft = tiny_base_and_sft()
        sets += [f"model={sft}", f"optimizer.args.base_model={base}", *TINY_OVERRIDES]
    else:
        sets += [f"optimizer.args.base_model={args.base_model}"]
    recipe = load_recipe("grpo_prm_quickstart", sets + args.set)
    run_dir = train(recipe, args.output_dir)
    print("run folder:", run_dir)


if __name__ == "__main__":
    main()
