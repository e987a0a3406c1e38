"""rlkit: RLHF for reasoning models with process reward models.

Entry points: the `rlkit` CLI (rlkit/cli.py), recipes (rlkit/config.py), trainers (rlkit/trainers/), credit
assignment (rlkit/credit.py), online merging optimizers (rlkit/optim/). Step-level reward models live in the
sibling package `reward`. See docs/design.md.
"""

__version__ = "0.1.0"
