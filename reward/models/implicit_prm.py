"""``implicit-prm``: the implicit process reward of PRIME, read from a causal LM and a frozen reference.

A policy-shaped model pi_phi trained only on outcome labels gives every response token the reward

    r_t = beta * (log pi_phi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t))

and a step's score is the sum of ``r_t`` over the step's tokens: step ``i`` owns the tokens after step
``i - 1``'s last token up to its own last token (``reward/steps.py`` maps steps to tokens), the last step also
owns any trailing tokens, so the step scores of a response add up to its whole reward ``sum_t r_t``. Scores are
raw log-ratios, not probabilities (``probabilistic = False``).

Training needs no step labels: :func:`outcome_loss` is the binary cross-entropy of ``sigmoid(sum_t r_t)``
against the response's 0/1 outcome, and :meth:`ImplicitPRM.update` takes one optimizer step on it (for
online use beside an RL run). Under DeepSpeed the RL trainer hands pi_phi and its optimizer to an engine of
their own (:meth:`ImplicitPRM.attach_engine`), sharded like the policy: ZeRO-2 partitions the optimizer state
and gradients, ZeRO-3 the weights too; pi_ref stays a frozen replica on every rank.

Input layout: the chat template of [system?, user = prompt] with the generation prompt, then the response's
own tokens (the response is tokenized alone, so its tokens are the ones the step alignment sees).

Example:
    >>> from rlkit import testing
    >>> tok = testing.tiny_tokenizer()
    >>> rm = ImplicitPRM(testing.tiny_causal_lm(tok, seed=1), ref_model=testing.tiny_causal_lm(tok), tokenizer=tok)
    >>> s = rm.score(["2+2?"], ["2+2=4\\n\\nSo 4."])[0]
    >>> len(s.scores), abs(sum(s.scores) - s.meta["response_reward"]) < 1e-6
    (2, True)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from reward.base import RewardError, StepScores
from reward.batching import ForwardBatch, batched_forward, gather_positions, pad_sequences
from reward.models._common import ResponseAwareReward
from reward.models._hf import load_model, output_logits, pad_id_of, render_chat
from reward.registry import register
from reward.steps import Step, StepSplitter, step_token_spans, token_char_ends

OPTIMIZERS = ("adamw", "sgd")
ONLINE_STATE_FILE = "online_state.pt"  # optimizer state and update count, beside the saved pi_phi
ENGINE_TAG = "engine"  # with an engine attached: the DeepSpeed checkpoint (sharded optimizer state) of pi_phi


def outcome_loss(response_rewards: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PRIME's implicit-PRM loss: mean binary cross-entropy of ``sigmoid(response_rewards)`` against 0/1 ``labels``.

    ``response_rewards`` (B,) holds each response's summed token rewards ``beta * sum_t log(pi_phi/pi_ref)``.

    Example:
        >>> round(outcome_loss(torch.tensor([0.0, 2.0]), torch.tensor([1, 0])).item(), 4)   # (ln 2 + 2.1269) / 2
        1.41
    """
    if response_rewards.shape != labels.shape:
        raise RewardError(f"outcome_loss: {tuple(response_rewards.shape)} rewards for {tuple(labels.shape)} labels")
    return F.binary_cross_entropy_with_logits(response_rewards, labels.to(response_rewards.dtype))


def step_token_ranges(steps: Sequence[Step], char_ends: Sequence[int]) -> list[tuple[int, int]]:
    """Half-open token ranges [a, b) owned by each step: from the token after the previous step's last token
    to the step's own last token; the last step runs to the end (so the ranges cover every token once). A step
    whose end the tokens' text never reaches runs to the end too, leaving later steps empty ranges."""
    n = len(char_ends)
    lasts = [n - 1 if span is None else span[1] for span in step_token_spans(steps, char_ends)]
    out, a = [], 0
    for i, last in enumerate(lasts):
        b = n if i == len(lasts) - 1 else max(last + 1, a)
        out.append((a, b))
        a = b
    return out


@register("implicit-prm")
class ImplicitPRM(ResponseAwareReward):
    """PRIME implicit PRM: step score = beta * sum of log(pi_phi / pi_ref) over the step's tokens (raw, not a probability).

    Args:
        model: pi_phi, a causal LM (path / hub id, or a built module): the model trained on outcome labels.
        ref_model: pi_ref, the frozen reference (path / hub id / module); default a frozen copy of ``model``
            as built (so all rewards start at 0, as in PRIME where both start from the SFT policy).
        tokenizer: tokenizer or path; default the model's. Both models must share it.
        beta: the reward scale.
        system_prompt: optional system turn before the prompt.
        device, dtype: as for the other HF rewards (both models go to the same device).
        max_length: longest input in tokens (default: the model's ``max_position_embeddings``, at most 4096);
            the response is cut at the right and steps wholly beyond the cut score 0.0
            (``meta["unscored_steps"]``).
        token_budget, max_batch_size: batching of the scoring forwards (``reward/batching.py``).
        optimizer, lr: what :meth:`update` steps ("adamw" or "sgd"), built on first use.
        trust_remote_code: allow the checkpoints' own modelling code.
        splitter: step splitting.

    Example (recipe)::

        reward: {name: implicit-prm, args: {model: runs/prime/prm, ref_model: Qwen/Qwen2.5-Math-1.5B-Instruct,
                                            beta: 0.05}}
    """

    probabilistic = False

    def __init__(self, model: Any, ref_model: Any = None, tokenizer: Any = None, beta: float = 0.05,
                 system_prompt: str | None = None, device: str | None = None, dtype: str | None = "auto",
                 max_length: int | None = None, token_budget: int | None = None, max_batch_size: int | None = None,
                 optimizer: str = "adamw", lr: float = 1e-6, trust_remote_code: bool = False,
                 splitter: StepSplitter | dict | None = None) -> None:
        super().__init__(splitter)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r} (allowed: {', '.join(OPTIMIZERS)})")
        if not beta > 0 or not lr > 0:
            raise ValueError(f"implicit-prm needs beta > 0 and lr > 0, got beta={beta}, lr={lr}")
        self.model, self.tokenizer = load_model(model, "causal-lm", tokenizer=tokenizer, device=device, dtype=dtype,
                                                trust_remote_code=trust_remote_code)
        self.device = next(self.model.parameters()).device
        if ref_model is None:
            self.ref_model = copy.deepcopy(self.model)
        else:
            self.ref_model, _ = load_model(ref_model, "causal-lm", tokenizer=self.tokenizer, device=self.device,
                                           dtype=dtype, trust_remote_code=trust_remote_code)
        self.ref_model.requires_grad_(False)
        vocab = [m.get_output_embeddings().weight.shape[0] for m in (self.model, self.ref_model)
                 if hasattr(m, "get_output_embeddings") and m.get_output_embeddings() is not None]
        if len(set(vocab)) > 1:
            raise RewardError(f"implicit-prm: model and ref_model have different vocabularies ({vocab[0]} vs "
                              f"{vocab[1]} tokens); they must share the tokenizer")
        self.beta, self.system_prompt = float(beta), system_prompt
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None) or 4096
        self.max_length = int(max_length) if max_length else min(int(limit), 4096)
        self.token_budget, self.max_batch_size = token_budget, max_batch_size
        self.pad_token_id = pad_id_of(self.tokenizer, self.model)
        self.optimizer_name, self.lr = optimizer, float(lr)
        self.optimizer: torch.optim.Optimizer | None = None
        self.updates = 0  # optimizer steps taken by update()
        self.engine: Any = None  # a DeepSpeed engine that owns pi_phi and its optimizer (attach_engine)
        self._rounds: Callable[[int], int] | None = None  # ZeRO-3: forwards per scoring call agreed over ranks

    # ------------------------------------------------------------------------------------------ encoding
    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of the chat prefix (system?, user = prompt, then the assistant turn's opening)."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.encode(render_chat(self.tokenizer, messages, add_generation_prompt=True),
                                     add_special_tokens=False)

    def encode(self, prompt: str, response: str) -> tuple[list[int], int, list[int]]:
        """(input ids cut to ``max_length``, index of the first response token, all response token ids)."""
        head = self.prompt_ids(prompt)
        if len(head) >= self.max_length:
            raise RewardError(f"implicit-prm: the prompt alone is {len(head)} tokens >= max_length {self.max_length}")
        resp = self.tokenizer.encode(response, add_special_tokens=False)
        return (head + resp)[: self.max_length], len(head), resp

    # ------------------------------------------------------------------------------------------ scoring
    def token_log_ratios(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[list[float], list[int]]]:
        """Per response: log(pi_phi/pi_ref) of each kept response token (no beta), and all its token ids."""
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        seqs = [ids for ids, _, _ in encoded]
        positions = [list(range(start, len(ids))) for ids, start, _ in encoded]
        kw = dict(pad_token_id=self.pad_token_id, device=self.device, token_budget=self.token_budget,
                  max_batch_size=self.max_batch_size, positions=positions)
        phi = batched_forward(self.model, seqs, _log_prob_reducer, rounds=self._rounds, **kw)
        ref = batched_forward(self.ref_model, seqs, _log_prob_reducer, **kw)
        return [([a - b for a, b in zip(p or [], q or [])], resp) for p, q, (_, _, resp) in zip(phi, ref, encoded)]

    def score_responses(self, prompts: Sequence[str], responses: Sequence[str], steps: Sequence[Sequence[Step]],
                        references: Sequence[str | None] | None = None) -> list[StepScores]:
        if len(prompts) != len(responses):
            raise RewardError(f"{len(prompts)} prompts for {len(responses)} responses")
        ratios = self.token_log_ratios(prompts, responses)
        out = []
        for resp, st, (lr, resp_ids) in zip(responses, steps, ratios):
            ranges = step_token_ranges(st, token_char_ends(self.tokenizer, resp_ids, resp))
            scores = [self.beta * sum(lr[a:b]) for a, b in ranges]
            unscored = sum(1 for a, b in ranges if a >= len(lr) and b > a)
            meta = {"response_reward": self.beta * sum(lr), "response_tokens": len(resp_ids),
                    "unscored_steps": unscored}
            out.append(StepScores(list(st), scores, meta=meta))
        return out

    # ------------------------------------------------------------------------------------------ training
    def response_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """(B,) ``beta * sum_t log(pi_phi/pi_ref)`` per response, differentiable through pi_phi (one padded forward)."""
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        ids, mask = pad_sequences([e[0] for e in encoded], self.pad_token_id, "right")
        ids, mask = ids.to(self.device), mask.to(self.device)
        response = torch.zeros_like(mask, dtype=torch.bool)
        for row, (seq, start, _) in enumerate(encoded):
            response[row, start:len(seq)] = True
        pi_phi = self.engine if self.engine is not None else self.model  # an engine's forward prepares its backward
        phi = _token_log_probs(output_logits(pi_phi(input_ids=ids, attention_mask=mask)), ids)
        with torch.no_grad():
            ref = _token_log_probs(output_logits(self.ref_model(input_ids=ids, attention_mask=mask)), ids)
        return self.beta * ((phi - ref) * response).sum(dim=1)

    def update(self, batch: dict[str, Sequence[Any]],
               reduce_gradients: Callable[[list[torch.nn.Parameter]], None] | None = None) -> dict[str, float]:
        """One optimizer step on :func:`outcome_loss` for ``{"prompts", "responses", "labels" (0/1)}``.

        ``reduce_gradients(params)``, when given, runs between the backward pass and the step (an RL run with
        several ranks averages the gradients there, so every rank's copy takes the same step). With an engine
        attached, the engine's backward and step do it (gradients reduced and partitioned as ZeRO does).
        Returns ``{"loss", "reward_mean", "accuracy"}`` (accuracy: share of responses judged as their label says
        before the step, a reward >= 0 (sigmoid >= 0.5) meaning correct, as ``prm/verifier_agreement`` does).
        The model is in train mode during the step, as it was afterwards.
        """
        prompts, responses, labels = (list(batch.get(k) or []) for k in ("prompts", "responses", "labels"))
        if not responses or len(prompts) != len(responses) or len(labels) != len(responses):
            raise RewardError(f"implicit-prm update needs equally many prompts, responses and labels, got "
                              f"{len(prompts)}, {len(responses)}, {len(labels)}")
        if any(y not in (0, 1, True, False, 0.0, 1.0) for y in labels):
            raise RewardError(f"implicit-prm update: labels must be 0 or 1, got {labels}")
        optimizer = self.trainable_optimizer()
        was_training = self.model.training
        self.model.train()
        try:
            y = torch.tensor([float(v) for v in labels], device=self.device)
            rewards = self.response_rewards(prompts, responses)
            loss = outcome_loss(rewards.float(), y)
            if self.engine is not None:
                self.engine.backward(loss)
                self.engine.step()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if reduce_gradients is not None:
                    reduce_gradients([p for group in optimizer.param_groups for p in group["params"]])
                optimizer.step()
        finally:
            self.model.train(was_training)
        self.updates += 1
        acc = ((rewards.detach() >= 0).float() == y).float().mean()  # sigmoid(r) >= 0.5: judged correct
        return {"loss": float(loss.detach()), "reward_mean": float(rewards.detach().mean()), "accuracy": float(acc)}

    def trainable_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer :meth:`update` steps (built on first use over pi_phi's trainable parameters)."""
        if self.optimizer is None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.SGD
            self.optimizer = cls(params, lr=self.lr)
        return self.optimizer

    def trainable_module(self) -> torch.nn.Module:
        """pi_phi, the module :meth:`update` trains (what a distributed trainer hands to an engine)."""
        return self.model

    def attach_engine(self, engine: Any) -> None:
        """Train pi_phi through ``engine``, a DeepSpeed engine built over :meth:`trainable_module` and
        :meth:`trainable_optimizer` (``rlkit.distributed.online_reward_engine``). Every rank then takes part in
        each :meth:`update`, :meth:`save_online` and :meth:`load_online`; under ZeRO-3 in each scoring call too."""
        if engine.module is not self.model:
            raise RewardError("implicit-prm: the engine must wrap this reward's pi_phi (trainable_module())")
        self.engine, self.optimizer = engine, engine.optimizer
        dtype = next(self.model.parameters()).dtype  # the engine's precision (bf16 under DeepSpeed's bf16)
        if next(self.ref_model.parameters()).dtype != dtype:
            self.ref_model.to(dtype)  # pi_ref in pi_phi's precision, so equal models still give rewards of 0
        if engine.zero_optimization_partition_weights():
            self._rounds = lambda n: _max_over_ranks(n, self.device)

    def one_rank_copy(self, folder: str | Path) -> ImplicitPRM:
        """A plain copy whose pi_phi is loaded from a :meth:`save_online` folder, for scoring on one rank
        alone while pi_phi itself is sharded (the copy shares pi_ref and the tokenizer and cannot train)."""
        twin = copy.copy(self)
        twin.model, _ = load_model(str(folder), "causal-lm", tokenizer=self.tokenizer, device=self.device, dtype=None)
        twin.engine, twin.optimizer, twin._rounds = None, None, None
        return twin

    # ------------------------------------------------------------------------------------------ online state
    def save_online(self, folder: str | Path, with_optimizer: bool = True) -> None:
        """pi_phi as a loadable HF folder (weights, config, tokenizer: a later recipe's ``model:``), plus, with
        ``with_optimizer``, the optimizer state and update count a resumed run continues from.

        In a multi-process run every rank calls it and rank 0 writes the folder; with an engine attached the
        optimizer state is the engine's checkpoint (``engine/``, one shard per rank under ZeRO)."""
        folder = Path(folder)
        writer = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        state_dict = None
        if self.engine is not None and self.engine.zero_optimization_partition_weights():
            state_dict = self.engine._zero3_consolidated_16bit_state_dict()  # every rank gathers; rank 0 keeps it
        if writer:
            folder.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(str(folder), state_dict=state_dict)
            self.tokenizer.save_pretrained(str(folder))
        if not with_optimizer:
            return
        if self.engine is not None:
            self.engine.save_checkpoint(str(folder), tag=ENGINE_TAG, client_state={"updates": self.updates},
                                        save_latest=False)
        elif writer:
            state = {"updates": self.updates,
                     "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}
            torch.save(state, folder / ONLINE_STATE_FILE)

    def load_online(self, folder: str | Path) -> None:
        """Restore what :meth:`save_online` wrote: pi_phi's weights and, when saved, optimizer and update count
        (pi_ref stays as built: it is frozen). With an engine attached, every rank loads its shard of the
        engine's checkpoint (weights and optimizer together)."""
        folder = Path(folder)
        if self.engine is not None:
            if not (folder / ENGINE_TAG).is_dir():
                raise RewardError(f"{folder}: no {ENGINE_TAG}/ checkpoint of the sharded implicit-prm (saved by a "
                                  f"run without DeepSpeed, or by save_online(with_optimizer=False))")
            _, client = self.engine.load_checkpoint(str(folder), tag=ENGINE_TAG, load_lr_scheduler_states=False)
            self.updates = int((client or {}).get("updates", 0))
            return
        if not (folder / "config.json").is_file():
            raise RewardError(f"{folder}: no saved implicit-prm model (config.json missing)")
        saved, _ = load_model(str(folder), "causal-lm", tokenizer=self.tokenizer, device=self.device, dtype=None)
        self.model.load_state_dict(saved.state_dict())
        state_file = folder / ONLINE_STATE_FILE
        if state_file.is_file():
            state = torch.load(state_file, weights_only=True)
            self.updates = int(state["updates"])
            if state["optimizer"] is not None:
                self.trainable_optimizer().load_state_dict(state["optimizer"])


def _max_over_ranks(n: int, device: torch.device) -> int:
    """The largest ``n`` any rank holds (one all-reduce)."""
    t = torch.tensor([n], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _token_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T): entry t is log p(ids[t] | ids[<t]); entry 0 (no context) is 0."""
    logits = logits.float()
    lp = logits[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1) - logits[:, :-1].logsumexp(dim=-1)
    return F.pad(lp, (1, 0))


def _log_prob_reducer(b: ForwardBatch) -> list[list[float]]:
    return gather_positions(_token_log_probs(b.logits, b.input_ids), b.select)
