"""PRMPPOTrainer: PPO with a critic and dense process-reward-model rewards, built on TRL's GRPOTrainer.

TRL 1.16 has no PPOTrainer. This one reuses everything of TRL's GRPOTrainer that PPO shares with GRPO
(generation with HF generate or vLLM, the rollout buffer reused over mini-batches and epochs, the clipped
policy loss on (B, T) advantages, reference-model handling, DeepSpeed/PEFT plumbing) and of
:class:`rlkit.trainers.grpo.PRMGRPOTrainer` (step scoring by any ``reward.base.StepRewardModel``, each step's
score placed on the completion token that ends it, reward-hacking monitors). What PPO adds:

* a critic (value model): ``AutoModelForTokenClassification`` with one label, initialised from the policy's
  weights (or ``critic_model``), registered as the submodule ``rlkit_critic`` of the policy so one
  Trainer / DeepSpeed engine (ZeRO-2/3) shards, steps, checkpoints and resumes both;
* token rewards: the PRM score of each step on its step-end token (+ the verifier's 0/1 outcome on the last step
  with ``outcome_reward``), minus ``kl_coef * (log pi_old - log pi_ref)`` on every token;
* GAE(gamma, lam) advantages (whitened over the whole batch, all ranks), returns R_t = A_t + V(s_t) as the
  targets of V(s_t);
* loss = TRL's clipped policy loss + ``vf_coef`` * 0.5 * max((V - R)^2, (clip(V, V_old +- cliprange_value) - R)^2).

LoRA / PEFT (``peft_config``, as for TRL's GRPOTrainer): only the policy's adapter trains. The KL reference is
the policy with its adapter disabled (the base model; no reference copy is built). The critic is its own full
model, not LoRA-wrapped: backbone copied from the base weights (adapter weights left out) + a new 1-output
head, trained in full, so it costs one more full copy of the model and its AdamW state. ``save_model`` writes
the adapter folder (``adapter_config.json`` + ``adapter_model.safetensors`` pointing at the base model; load it
with ``peft.PeftModel.from_pretrained(base, dir)`` or ``AutoModelForCausalLM.from_pretrained(dir)``; nothing is
merged) and the critic at ``critic/``.

vLLM (``use_vllm``, colocate or server): TRL generates and syncs the policy's weights to vLLM after each
optimizer step; the critic is kept out of that sync.

Mini-epochs: one rollout (``per_device_train_batch_size * steps_per_generation`` completions per rank) is swept
``num_iterations`` times (PPO epochs), each time reshuffled and split into ``steps_per_generation`` mini-batches.
Values: ``state_values`` is the one place that reads the critic; column t is V(s_t), the state before completion
token t, for the rollout's old values, GAE, the returns and the clipped value loss alike.
The policy clip range is TRL's ``epsilon`` (``epsilon_high`` for an asymmetric clip).

The recipe's online-merging optimizer (OnDARE/OnTIES) acts on the policy's parameters only; the critic always
gets plain AdamW (in its own param groups, marked ``rlkit_role: critic``).

Example:
    >>> from reward.registry import build_reward
    >>> args = PRMPPOConfig(output_dir="out", max_steps=10, kl_coef=0.05, vf_coef=0.1, gamma=1.0, lam=0.95)
    >>> trainer = PRMPPOTrainer(model="path/to/policy", processing_class=tok, args=args, train_dataset=ds,
    ...                         step_reward=build_reward("arithmetic", verify_final=True))
    >>> trainer.train()
    >>> trainer.save_model("out/policy")        # policy at out/policy, critic at out/policy/critic
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file
from trl import GRPOTrainer
from trl.trainer.utils import (
    shuffle_sequence_dict,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
    use_adapter,
)

from rlkit import credit as credit_lib
from rlkit.optim.actor_critic import ActorCriticOptimizer
from rlkit.optim.trainer_hook import RecipeOptimizerMixin
from rlkit.trainers.ppo_config import PRMPPOConfig
from rlkit.trainers.ppo_critic import (
    CRITIC_ATTR,
    CRITIC_DIR,
    build_critic,
    critic_detached,
    critic_holder,
    has_path,
    policy_path,
)
from rlkit.trainers.scoring import StepScoringMixin, pad_scored, verified_tensor

logger = logging.getLogger(__name__)


class PRMPPOTrainer(StepScoringMixin, RecipeOptimizerMixin, GRPOTrainer):
    """PPO with a critic and dense PRM step rewards (see the module docstring).

    Args:
        args: a :class:`PRMPPOConfig`.
        critic: an already built value model (``build_critic``); default from ``args.critic_model`` or the policy.
        step_reward, aggregation, outcome_reward, outcome_weight, steps_growth_warning, optimizer_cfg: as in
            :class:`rlkit.trainers.scoring.StepScoringMixin` (``outcome_reward`` adds the outcome term on the last
            token; ``aggregation`` feeds it, logging and the PRM verdict). Everything else goes to
            ``trl.GRPOTrainer``.

    Hooks a subclass may override: :meth:`score_completions`, :meth:`token_rewards` (step scores -> (B, T) token
    rewards before the KL penalty), :meth:`log_step_metrics`.
    """

    def __init__(self, *, model: Any, args: PRMPPOConfig, critic: Any = None, **kwargs: Any) -> None:
        if not isinstance(args, PRMPPOConfig):
            raise TypeError(f"PRMPPOTrainer needs a PRMPPOConfig, got {type(args).__name__}")
        for grpo_only in ("credit", "scale_rewards"):  # GRPO's credit settings: PPO's credit is GAE
            kwargs.pop(grpo_only, None)
        # TRL builds the reference model from the policy's path; an in-memory policy without one gets a copy here
        # (a PEFT policy needs none: its reference is the policy with the adapter disabled, as in TRL)
        peft = kwargs.get("peft_config") is not None or hasattr(model, "peft_config")
        own_ref = args.kl_coef > 0 and not peft and not isinstance(model, str) and not has_path(model)
        if own_ref:
            args.beta = 0.0
        super().__init__(model=model, args=args, **kwargs)
        args.beta = args.kl_coef
        self.beta = 0.0  # the KL penalty goes into the reward (below), never into TRL's loss
        self.kl_coef = args.kl_coef
        if own_ref:
            if self.is_deepspeed_enabled:
                raise ValueError("kl_coef > 0 under DeepSpeed needs the policy as a path (the reference model is "
                                 "loaded from it)")
            self.ref_model = copy.deepcopy(self.model).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        if critic is None:
            src = args.critic_model or (policy_path(self.model) or self.model)
            critic = build_critic(src, seed=args.seed, dtype=self.model.dtype)
        if not self.is_deepspeed_enabled:
            critic.to(self.accelerator.device)
        self.model.add_module(CRITIC_ATTR, critic)
        self._rollout: dict[str, Any] | None = None  # the current rollout, re-split into mini-batches per epoch
        self._rollout_epoch: int | None = None
        if getattr(self, "vllm_generation", None) is not None:
            self._keep_critic_out_of_vllm_sync()

    def _keep_critic_out_of_vllm_sync(self) -> None:
        """TRL pushes every parameter of the model to vLLM by name after each optimizer step (colocate:
        ``load_weights``; server: over NCCL). The critic is no part of the policy vLLM serves, so it is taken off
        the model for the sync."""
        gen = self.vllm_generation
        sync = gen.sync_weights

        def sync_policy_only() -> None:
            with critic_detached(gen.model):
                sync()

        gen.sync_weights = sync_policy_only

    # ------------------------------------------------------------------ pieces
    @property
    def critic(self):
        """The value model (a submodule of the policy, so one engine trains and checkpoints both)."""
        return self._critic_of(self.model)

    def _critic_of(self, model):
        return critic_holder(self.accelerator.unwrap_model(model))._modules[CRITIC_ATTR]

    def state_values(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     n_completion: int) -> torch.Tensor:
        """(B, n_completion + 1) critic values of the completion's states, the one convention of the rollout,
        GAE, the value targets and the value loss: column t is V(s_t), the value of the state *before*
        completion token t (prompt + completion tokens < t, read at the position of the token before it), and
        column n_completion the value after the last column (used to bootstrap a truncated response)."""
        out = self._critic_of(model)(input_ids=input_ids, attention_mask=attention_mask)
        return out.logits[:, -(n_completion + 1):, 0].float()

    def _ref_logps(self, input_ids, attention_mask, n_keep: int, batch_size: int | None) -> torch.Tensor:
        if self.ref_model is not None:
            return self._get_per_token_logps_and_entropies(self.ref_model, input_ids, attention_mask, n_keep,
                                                           batch_size=batch_size)[0]
        unwrapped = self.accelerator.unwrap_model(self.model)  # PEFT: the base model is the reference
        with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
            return self._get_per_token_logps_and_entropies(self.model, input_ids, attention_mask, n_keep,
                                                           batch_size=batch_size)[0]

    def token_rewards(self, step_rewards: torch.Tensor, step_mask: torch.Tensor, step_ends: torch.Tensor,
                      token_mask: torch.Tensor, verified: torch.Tensor | None) -> torch.Tensor:
        """Hook: (B, T) token rewards from padded step tensors (before the KL penalty): step scores on their
        step-end tokens, the outcome term on the last token (``rlkit.credit.ppo_token_rewards``)."""
        return credit_lib.ppo_token_rewards(
            step_rewards, step_mask, step_ends, token_mask,
            verified=verified if self.outcome_reward != "none" else None, shaping=self.outcome_reward,
            weight=self.outcome_weight, aggregation=self.aggregation,
            probabilistic=self.probabilistic_scores)

    def _global_mean_var(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = mask.float()
        s = torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]).to(self.accelerator.device)
        s = self.accelerator.reduce(s, reduction="sum") if self.accelerator.num_processes > 1 else s
        n = s[2].clamp(min=1.0)
        mean = s[0] / n
        return mean.cpu(), (s[1] / n - mean * mean).clamp(min=0.0).cpu()

    # ------------------------------------------------------------------ rollout
    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)  # TRL's rollout; its advantages unused
        mode = "train" if self.model.training else "eval"
        local = self.take_scored()
        prompt_ids, prompt_mask = out["prompt_ids"], out["prompt_mask"]
        completion_ids, cmask = out["completion_ids"], out["completion_mask"]
        B, T = completion_ids.shape
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attn = torch.cat([prompt_mask, cmask], dim=1)
        bs = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        with torch.no_grad():
            old_logps = out.get("old_per_token_logps")
            if old_logps is None and self.kl_coef > 0:
                old_logps = self._get_per_token_logps_and_entropies(self.model, input_ids, attn, T,
                                                                    batch_size=bs)[0]
            ref_logps = self._ref_logps(input_ids, attn, T, bs) if self.kl_coef > 0 else None
            values_all = torch.cat([self.state_values(self.model, input_ids[i:i + bs], attn[i:i + bs], T)
                                    for i in range(0, B, bs)], dim=0)
        device = completion_ids.device
        m = cmask.float()
        rewards, smask, ends = pad_scored(local)
        ends = ends.clamp(max=T - 1)
        score_r = self.token_rewards(rewards, smask, ends, m.cpu(), verified_tensor(local)).to(device)
        kl = torch.zeros_like(m) if ref_logps is None else (old_logps - ref_logps).float() * m
        token_r = score_r - self.kl_coef * kl
        values = values_all[:, :T] * m
        lengths = m.sum(1).long()
        next_values = None
        if self.args.bootstrap_truncated:
            eos = torch.tensor(self.eos_token_ids if isinstance(self.eos_token_ids, list) else [self.eos_token_ids],
                               device=device)
            last_tok = completion_ids.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
            truncated = ~torch.isin(last_tok, eos) & (lengths > 0)
            next_values = values_all.gather(1, lengths[:, None])[:, 0] * truncated.float()
        adv, returns = credit_lib.gae(token_r, values, m, self.args.gamma, self.args.lam, next_values)
        raw_adv = adv
        if self.args.whiten_advantages:
            mean, var = self._global_mean_var(adv, m)
            adv = credit_lib.whiten(adv, m, mean=mean.to(device), var=var.to(device))
        out["advantages"] = adv
        out["old_values"] = values.detach()
        out["returns"] = returns.detach()

        metrics = self._metrics[mode]
        n_resp = torch.tensor(float(B), device=device)

        def gmean(x_sum: torch.Tensor, count: torch.Tensor) -> float:
            t = torch.stack([x_sum.float(), count.float()]).to(self.accelerator.device)
            if self.accelerator.num_processes > 1:
                t = self.accelerator.reduce(t, reduction="sum")
            return (t[0] / t[1].clamp(min=1.0)).item()

        metrics["ppo/kl"].append(gmean(kl.sum(), n_resp))                      # per response (sum over tokens)
        metrics["ppo/score_reward"].append(gmean(score_r.sum(), n_resp))
        metrics["ppo/total_reward"].append(gmean(token_r.sum(), n_resp))
        metrics["ppo/value_mean"].append(gmean((values * m).sum(), m.sum()))
        metrics["ppo/returns_mean"].append(gmean((returns * m).sum(), m.sum()))
        metrics["ppo/advantages_mean_raw"].append(gmean((raw_adv * m).sum(), m.sum()))
        self.log_step_metrics(gather_object(local), mode)
        return out

    # ------------------------------------------------------------------ mini-batches
    def _prepare_inputs(self, generation_batch):
        """TRL's buffering with one change: the rollout is reshuffled into new mini-batches at every PPO epoch
        (TRL shuffles once per rollout and sweeps the same mini-batches ``num_iterations`` times)."""
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        spg = self.args.steps_per_generation
        generate_every = spg * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None or self._rollout is None:
            self._rollout = split_pixel_values_by_grid(self._generate_and_score_completions(generation_batch))
            self._rollout_epoch = None
        epoch = (self._step % generate_every) // spg
        if epoch != self._rollout_epoch:
            batches = split_tensor_dict(shuffle_sequence_dict(self._rollout), spg)
            self._buffered_inputs = [unsplit_pixel_values_by_grid(b) for b in batches]
            self._rollout_epoch = epoch
        return self._buffered_inputs[self._step % spg]

    # ------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs):
        policy_loss = super()._compute_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        completion_ids, mask = inputs["completion_ids"], inputs["completion_mask"].float()
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        T = completion_ids.size(1)
        values = self.state_values(model, input_ids, attn, T)[:, :T]  # V(s_t), as at the rollout
        old, ret = inputs["old_values"], inputs["returns"]
        clipped = old + (values - old).clamp(-self.args.cliprange_value, self.args.cliprange_value)
        vf_losses = torch.max((values - ret) ** 2, (clipped - ret) ** 2)
        n_tok = mask.sum().clamp(min=1.0)
        vf_loss = 0.5 * (vf_losses * mask).sum() / n_tok
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = policy_loss + self.args.vf_coef * vf_loss / normalizer

        with torch.no_grad():
            clipfrac = (((values - ret) ** 2 < (clipped - ret) ** 2).float() * mask).sum() / n_tok
            stats = torch.stack([vf_loss.detach(), clipfrac, policy_loss.detach() * normalizer])
            if self.accelerator.num_processes > 1:
                stats = self.accelerator.reduce(stats, reduction="mean")
        metrics = self._metrics[mode]
        metrics["value_loss"].append(stats[0].item())
        metrics["ppo/vf_clipfrac"].append(stats[1].item())
        metrics["ppo/policy_loss"].append(stats[2].item())
        return loss

    # ------------------------------------------------------------------ optimizer: merging acts on the policy only
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        policy = self.model if model is None else model
        with critic_detached(policy) as critic:
            actor_opt = super().create_optimizer(model)  # the recipe's optimizer (or AdamW) over the policy alone
        a = self.args
        lr = a.critic_learning_rate if a.critic_learning_rate is not None else a.learning_rate
        decay = set(self.get_decay_parameter_names(critic))
        named = [(n, p) for n, p in critic.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if n in decay], "weight_decay": a.weight_decay, "lr": lr},
                  {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0, "lr": lr}]
        groups = [g for g in groups if g["params"]]
        if type(actor_opt) is torch.optim.AdamW:
            for g in groups:
                actor_opt.add_param_group({**g, "rlkit_role": "critic"})
            self.optimizer = actor_opt
        else:
            critic_opt = torch.optim.AdamW(groups, lr=lr, betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon)
            self.optimizer = ActorCriticOptimizer(actor_opt, critic_opt)
        return self.optimizer

    # ------------------------------------------------------------------ saving / resuming
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The policy at ``output_dir`` without critic keys: a plain HF folder, or for a LoRA policy the adapter
        folder PEFT writes (``adapter_config.json`` + ``adapter_model.safetensors``, not merged); the critic (a full
        HF folder) at ``output_dir/critic``."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        given = state_dict is not None
        if state_dict is None:
            state_dict = self.model.state_dict()
        prefixes = [f"{CRITIC_ATTR}.", f"base_model.model.{CRITIC_ATTR}."]
        critic_sd, policy_sd = {}, {}
        for k, v in state_dict.items():
            pre = next((p for p in prefixes if k.startswith(p)), None)
            if pre is None:
                policy_sd[k] = v
            else:
                critic_sd[k[len(pre):]] = v
        with critic_detached(self.accelerator.unwrap_model(self.model)) as critic:
            super()._save(output_dir, state_dict=policy_sd if (given or critic_sd) else None)
        if critic_sd or not given:
            critic.save_pretrained(os.path.join(output_dir, CRITIC_DIR), state_dict=critic_sd or None)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Without DeepSpeed: the policy from the checkpoint folder, the critic from its ``critic/`` subfolder
        (under DeepSpeed the engine checkpoint restores both)."""
        with critic_detached(model if model is not None else self.model) as critic:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, CRITIC_DIR, "model.safetensors")
        if os.path.isfile(path):
            critic.load_state_dict(load_file(path))
        else:
            logger.warning("checkpoint %s has no critic (%s/); the critic starts from its initialisation",
                           resume_from_checkpoint, CRITIC_DIR)

