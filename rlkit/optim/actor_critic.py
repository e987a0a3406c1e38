"""One optimizer over two: the policy's (e.g. OnDARE/OnTIES) and the critic's AdamW, as PPO needs them.

Example:
    >>> opt = ActorCriticOptimizer(build_optimizer(policy, {"name": "ondare", "alpha": 0}, lr=1e-6),
    ...                            torch.optim.AdamW(critic.parameters(), lr=1e-5))
    >>> opt.step()                      # each param group goes to the optimizer it belongs to
"""

from __future__ import annotations

import torch


class ActorCriticOptimizer(torch.optim.Optimizer):
    """One optimizer object over two: the policy's (e.g. OnDARE/OnTIES) and the critic's AdamW.

    Its ``param_groups`` are the two optimizers' group dicts (the same objects, critic groups marked
    ``rlkit_role: critic``), and ``state`` is shared, so LR schedulers, DeepSpeed (which swaps groups' params for
    flat partitions and steps one group at a time) and ``state_dict``/``load_state_dict`` all see one optimizer;
    ``step`` hands each group to the optimizer it belongs to.
    """

    def __init__(self, actor: torch.optim.Optimizer, critic: torch.optim.Optimizer):
        for g in critic.param_groups:
            g["rlkit_role"] = "critic"
        self.actor, self.critic = actor, critic
        # torch.optim.Optimizer.__init__ adds the group dicts as they are (same objects)
        super().__init__(list(actor.param_groups) + list(critic.param_groups), dict(actor.defaults))

    def add_param_group(self, param_group: dict) -> None:
        # groups come complete from the inner optimizers: keep the dict object (no defaults filled in)
        if not hasattr(self, "param_groups"):
            self.param_groups = []
        if isinstance(param_group["params"], torch.Tensor):
            param_group["params"] = [param_group["params"]]
        self.param_groups.append(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt, want_critic in ((self.actor, False), (self.critic, True)):
            groups = [g for g in self.param_groups if (g.get("rlkit_role") == "critic") == want_critic]
            if not groups:
                continue
            saved = opt.param_groups
            opt.param_groups, opt.state = groups, self.state
            try:
                opt.step()
            finally:
                opt.param_groups = saved
        return loss


# ----------------------------------------------------------------------------------------------- trainer
