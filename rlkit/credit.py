"""How step scores become per-token credit. Pure functions: tensors in, tensors out, no trainer state.

Shapes used throughout (B responses, S = most steps in a response, T = completion tokens):
    step_rewards  (B, S) float  score of step s of response b (padding anywhere where step_mask is False)
    step_mask     (B, S) bool   which entries are real steps
    step_ends     (B, S) long   index of the completion token that ends step s (in [0, T))
    token_mask    (B, T) bool/0-1  real completion tokens
Responses are in groups of ``group_size`` consecutive rows (the GRPO layout: one prompt, G samples).

Modes:
    process_grpo   DeepSeekMath process supervision. r~ = (r - mean_g) / (std_g + eps), with mean_g/std_g over
                   all steps of all responses of the group; A[b, t] = sum of r~[b, s] over steps s with
                   step_ends[b, s] >= t.
    min_form       PURE-style min-form credit. Same normalisation; A[b, t] = min of r~[b, s] over steps s with
                   step_ends[b, s] >= t. Splitting a step into several with the same score leaves each token's
                   minimum the same for fixed r~, but it adds entries to the group's step statistics, so
                   mean_g/std_g (and with them r~) do change.
    outcome        Usual GRPO: one reward per response R_b (any aggregation of its steps), A[b, t] =
                   (R_b - mean_g R) / (std_g R + eps) on every token.
std_g is the *population* std (divide by n). TRL's GRPO divides by n - 1 (Bessel, ``trl.trainer.utils.nanstd``),
so ``outcome`` credit equals TRL's group-scaled advantages times sqrt((G - 1) / G) (G = group size), and exactly
TRL's with ``scale=False``.

Outcome shaping (a verifier's 0/1 r_v mixed in, :func:`grpo_advantages` / :func:`ppo_token_rewards`):
    weighted   outcome credit: R_b = agg(steps) + w * r_v (added *after* aggregation, so ``min`` can neither
               drop it nor hide a low final step behind it). Step credit: A = A_steps + w * A_outcome(r_v),
               the verifier's own group-normalised advantage on every token. PPO: + w * r_v on the last token.
    qwen_math  the Qwen2.5-Math response reward sigmoid(0.5 r_m) + r_v - 1 on the response level, r_m the reward
               model's *raw* score of the response (a probability p enters as logit(p)). Outcome credit: it is
               R_b. Step credit: its group-normalised advantage is added to A_steps (once per response, not
               once per step). PPO: it is added on the last token. ``outcome_weight`` is not used.
Tokens after the last step's end get 0 (callers make the last step end on the last completion token).

Example:
    >>> import torch
    >>> r = torch.tensor([[1.0, 0.0], [1.0, 1.0]]); m = torch.ones(2, 2, dtype=torch.bool)
    >>> e = torch.tensor([[1, 3], [1, 3]]); tm = torch.ones(2, 4)
    >>> process_grpo(r, m, e, tm, group_size=2, eps=0.0)[0]   # mean 0.75, std sqrt(3)/4: r~ = [0.577, -1.732]
    tensor([-1.1547, -1.1547, -1.7321, -1.7321])
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

EPS = 1e-4


def _group_stats(values: torch.Tensor, mask: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std of the masked entries of each group of ``group_size`` rows, broadcast per row."""
    B = values.shape[0]
    if B % group_size:
        raise ValueError(f"batch of {B} responses is not a whole number of groups of {group_size}")
    v = values.reshape(B // group_size, -1)
    m = mask.reshape(B // group_size, -1).to(values.dtype)
    n = m.sum(dim=1).clamp(min=1)
    mean = (v * m).sum(dim=1) / n
    var = (((v - mean[:, None]) ** 2) * m).sum(dim=1) / n
    std = var.sqrt()
    return mean.repeat_interleave(group_size), std.repeat_interleave(group_size)


def normalize_steps(step_rewards: torch.Tensor, step_mask: torch.Tensor, group_size: int,
                    scale: bool = True, eps: float = EPS) -> torch.Tensor:
    """Group-normalised step rewards (padding entries set to 0)."""
    mask = step_mask.bool()
    mean, std = _group_stats(step_rewards, mask, group_size)
    out = step_rewards - mean[:, None]
    if scale:
        out = out / (std[:, None] + eps)
    return torch.where(mask, out, torch.zeros_like(out))


def _check(step_rewards, step_mask, step_ends, token_mask) -> None:
    if step_rewards.shape != step_mask.shape or step_rewards.shape != step_ends.shape:
        raise ValueError(f"step tensors disagree in shape: {tuple(step_rewards.shape)}, {tuple(step_mask.shape)}, "
                         f"{tuple(step_ends.shape)}")
    if token_mask.shape[0] != step_rewards.shape[0]:
        raise ValueError(f"{token_mask.shape[0]} token rows for {step_rewards.shape[0]} step rows")
    if not torch.isfinite(step_rewards[step_mask.bool()]).all():
        raise ValueError("step rewards contain NaN or inf")
    T = token_mask.shape[1]
    ends = step_ends[step_mask.bool()]
    if ends.numel() and (ends.min() < 0 or ends.max() >= T):
        raise ValueError(f"step end index out of range [0, {T})")


def process_grpo(step_rewards: torch.Tensor, step_mask: torch.Tensor, step_ends: torch.Tensor,
                 token_mask: torch.Tensor, group_size: int, scale: bool = True, eps: float = EPS) -> torch.Tensor:
    """(B, T) advantages: each token gets the sum of the normalised rewards of the steps ending at or after it."""
    _check(step_rewards, step_mask, step_ends, token_mask)
    norm = normalize_steps(step_rewards, step_mask, group_size, scale, eps)
    B, T = token_mask.shape
    at_end = torch.zeros(B, T, dtype=norm.dtype, device=norm.device)
    at_end.scatter_add_(1, step_ends.clamp(0, T - 1).long(), norm)  # padding adds 0
    # reverse cumulative sum: a token collects every step that ends at or after it
    adv = at_end.flip(1).cumsum(1).flip(1)
    return adv * token_mask.to(adv.dtype)


def min_form(step_rewards: torch.Tensor, step_mask: torch.Tensor, step_ends: torch.Tensor,
             token_mask: torch.Tensor, group_size: int, scale: bool = True, eps: float = EPS) -> torch.Tensor:
    """(B, T) advantages: each token gets the minimum normalised reward of the steps ending at or after it."""
    _check(step_rewards, step_mask, step_ends, token_mask)
    norm = normalize_steps(step_rewards, step_mask, group_size, scale, eps)
    B, T = token_mask.shape
    inf = torch.finfo(norm.dtype).max
    at_end = torch.full((B, T), inf, dtype=norm.dtype, device=norm.device)
    vals = torch.where(step_mask.bool(), norm, torch.full_like(norm, inf))
    at_end.scatter_reduce_(1, step_ends.clamp(0, T - 1).long(), vals, reduce="amin")
    # reverse cumulative minimum
    adv = at_end.flip(1).cummin(1).values.flip(1)
    adv = torch.where(adv >= inf, torch.zeros_like(adv), adv)
    return adv * token_mask.to(adv.dtype)


def outcome(response_rewards: torch.Tensor, token_mask: torch.Tensor, group_size: int, scale: bool = True,
            eps: float = EPS) -> torch.Tensor:
    """(B, T) advantages: the group-normalised response reward on every completion token.

    The group std is the population std; TRL's GRPO uses Bessel's n - 1 (see the module docstring)."""
    if not torch.isfinite(response_rewards).all():
        raise ValueError("response rewards contain NaN or inf")
    ones = torch.ones_like(response_rewards, dtype=torch.bool)
    mean, std = _group_stats(response_rewards, ones, group_size)
    adv = response_rewards - mean
    if scale:
        adv = adv / (std + eps)
    return adv[:, None] * token_mask.to(adv.dtype)


SHAPINGS = ("none", "weighted", "qwen_math")
AGGREGATIONS = ("min", "last", "product", "mean")


def aggregate_steps(step_rewards: torch.Tensor, step_mask: torch.Tensor, how: str = "min") -> torch.Tensor:
    """(B,) response scores from padded step rewards: min / last / product / mean of each row's real steps
    (0 for a row without steps), the tensor form of ``reward.base.aggregate``.

    Example:
        >>> aggregate_steps(torch.tensor([[0.9, 0.3], [0.5, 0.0]]), torch.tensor([[1, 1], [1, 0]]).bool(), "min")
        tensor([0.3000, 0.5000])
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r} (allowed: {', '.join(AGGREGATIONS)})")
    m = step_mask.bool()
    r = step_rewards.float()
    has = m.any(dim=1)
    if how == "min":
        out = torch.where(m, r, torch.full_like(r, float("inf"))).min(dim=1).values
    elif how == "last":
        out = r.gather(1, last_step_index(m)[:, None])[:, 0]
    elif how == "product":
        out = torch.where(m, r, torch.ones_like(r)).prod(dim=1)
    else:
        out = (r * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    return torch.where(has, out, torch.zeros_like(out))


def raw_score(response_scores: torch.Tensor, probabilistic: bool, eps: float = 1e-6) -> torch.Tensor:
    """A reward model's raw (logit-scale) score: logit(p) for probabilities (clamped to [eps, 1 - eps]), the
    score itself otherwise."""
    if not probabilistic:
        return response_scores.float()
    p = response_scores.float().clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


def qwen_math_reward(response_scores: torch.Tensor, verified: torch.Tensor, probabilistic: bool = True) -> torch.Tensor:
    """(B,) sigmoid(0.5 r_m) + r_v - 1 with r_m the raw response score: every verified-correct response (in
    (0, 1)) outranks every wrong one (in (-1, 0)), and the reward model orders responses within each class.

    Example:
        >>> qwen_math_reward(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))   # logit(0.5) = 0
        tensor([ 0.5000, -0.5000])
    """
    return torch.sigmoid(0.5 * raw_score(response_scores, probabilistic)) + verified.float() - 1.0


def shaped_response_reward(response_scores: torch.Tensor, verified: torch.Tensor | None, shaping: str = "none",
                           weight: float = 1.0, probabilistic: bool = True) -> torch.Tensor:
    """(B,) the response reward of ``outcome`` credit: the aggregated score with the verifier mixed in *after*
    aggregation (``weighted``: + weight * r_v; ``qwen_math``: :func:`qwen_math_reward`)."""
    _check_shaping(shaping, verified)
    if shaping == "none":
        return response_scores.float()
    if shaping == "weighted":
        return response_scores.float() + weight * verified.float()
    return qwen_math_reward(response_scores, verified, probabilistic)


def _check_shaping(shaping: str, verified: torch.Tensor | None) -> None:
    if shaping not in SHAPINGS:
        raise ValueError(f"unknown outcome shaping {shaping!r} (allowed: {', '.join(SHAPINGS)})")
    if shaping != "none" and verified is None:
        raise ValueError(f"outcome shaping {shaping!r} needs the verifier's results (a reference answer per prompt)")


def grpo_advantages(step_rewards: torch.Tensor, step_mask: torch.Tensor, step_ends: torch.Tensor,
                    token_mask: torch.Tensor, group_size: int, credit: str | Callable[..., torch.Tensor] = "process_grpo",
                    aggregation: str = "min", verified: torch.Tensor | None = None, shaping: str = "none",
                    weight: float = 1.0, probabilistic: bool = True, scale: bool = True,
                    eps: float = EPS) -> torch.Tensor:
    """(B, T) GRPO advantages for every (credit mode x outcome shaping) pair (see the module docstring).

    ``credit``: ``process_grpo``, ``min_form``, ``outcome``, a registered name (:func:`register_credit`), an
    import path ``package.module:function``, or a callable with :func:`process_grpo`'s signature.
    ``verified``: (B,) 0/1 verifier results, needed when ``shaping`` is not ``none``.

    Example: a correct answer whose last step scores low keeps that low step under ``min`` credit; the verifier
    comes in as its own advantage (+1 and -1 here: the group has one correct and one wrong answer), so the
    correct response with the bad last step still ends below the wrong one with good steps::

        >>> r = torch.tensor([[0.9, 0.3], [0.9, 0.9]]); m = torch.ones(2, 2).bool(); e = torch.tensor([[0, 1]] * 2)
        >>> grpo_advantages(r, m, e, torch.ones(2, 2), 2, "min_form", verified=torch.tensor([1.0, 0.0]),
        ...                 shaping="weighted", eps=0.0)
        tensor([[-0.7321, -0.7321],
                [-0.4226, -0.4226]])
    """
    _check_shaping(shaping, verified)
    if credit == "outcome":
        response = shaped_response_reward(aggregate_steps(step_rewards, step_mask, aggregation), verified, shaping,
                                          weight, probabilistic)
        return outcome(response, token_mask, group_size, scale, eps)
    fn = resolve_credit(credit)
    if fn in (process_grpo, min_form):
        adv = fn(step_rewards, step_mask, step_ends, token_mask, group_size, scale=scale, eps=eps)
    else:  # a user's credit function: the documented signature without eps
        adv = fn(step_rewards, step_mask, step_ends, token_mask, group_size, scale=scale)
    if shaping == "weighted":
        adv = adv + weight * outcome(verified.float(), token_mask, group_size, scale, eps)
    elif shaping == "qwen_math":
        response = qwen_math_reward(aggregate_steps(step_rewards, step_mask, aggregation), verified, probabilistic)
        adv = adv + outcome(response, token_mask, group_size, scale, eps)
    return adv


def last_step_index(step_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last real step of each row (0 for rows without steps)."""
    S = step_mask.shape[1]
    idx = torch.arange(S, device=step_mask.device).expand_as(step_mask)
    return torch.where(step_mask.bool(), idx, torch.zeros_like(idx)).max(dim=1).values


def pad_steps(step_scores: list[list[float]], step_end_tokens: list[list[int]],
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lists of per-response step scores / end tokens -> padded (rewards, mask, ends) tensors."""
    B = len(step_scores)
    S = max([len(s) for s in step_scores] + [1])
    rewards = torch.zeros(B, S, dtype=torch.float32, device=device)
    mask = torch.zeros(B, S, dtype=torch.bool, device=device)
    ends = torch.zeros(B, S, dtype=torch.long, device=device)
    for b, (sc, en) in enumerate(zip(step_scores, step_end_tokens)):
        if len(sc) != len(en):
            raise ValueError(f"response {b}: {len(sc)} step scores for {len(en)} step ends")
        if sc:
            rewards[b, : len(sc)] = torch.tensor(sc, dtype=torch.float32)
            ends[b, : len(en)] = torch.tensor(en, dtype=torch.long)
            mask[b, : len(sc)] = True
    return rewards, mask, ends


CREDIT_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {"process_grpo": process_grpo, "min_form": min_form}
CREDIT_MODES = (*CREDIT_FUNCTIONS, "outcome")


def register_credit(name: str) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: make a credit function (``process_grpo``'s signature) available by ``name`` in recipes
    (``algorithm.credit: name``), beside the built-in modes.

    Example::

        @register_credit("last_step_only")
        def last_step_only(step_rewards, step_mask, step_ends, token_mask, group_size, scale=True): ...
    """
    if name in CREDIT_MODES:
        raise ValueError(f"credit mode {name!r} is built in")

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        CREDIT_FUNCTIONS[name] = fn
        return fn
    return deco


def resolve_credit(credit: str | Callable[..., torch.Tensor]) -> str | Callable[..., torch.Tensor]:
    """``"outcome"``, a credit function by registered name, or by import path ``package.module:function``
    (importing the module runs any ``@register_credit`` in it). Raises ValueError naming the problem."""
    if callable(credit) or credit == "outcome":
        return credit
    if credit in CREDIT_FUNCTIONS:
        return CREDIT_FUNCTIONS[credit]
    if isinstance(credit, str) and ":" in credit:
        module, _, attr = credit.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"credit function {credit!r} cannot be imported ({e})") from None
        if not callable(fn):
            raise ValueError(f"credit function {credit!r} is not callable")
        return fn
    raise ValueError(f"unknown credit mode {credit!r} (allowed: {', '.join(CREDIT_FUNCTIONS)}, outcome, or "
                     f"package.module:function)")


def credit_problem(credit: str) -> str | None:
    """None when :func:`resolve_credit` finds ``credit``, else its one-line reason (for recipe validation)."""
    try:
        resolve_credit(credit)
    except ValueError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------------------------- PPO: token rewards, GAE

def place_step_rewards(step_rewards: torch.Tensor, step_mask: torch.Tensor, step_ends: torch.Tensor,
                       token_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) token rewards: each step's reward on the completion token that ends it, 0 elsewhere.

    Steps that end on the same token add up; padding steps add nothing. This is the dense PRM reward of PPO
    (Math-Shepherd style): r[b, step_ends[b, s]] += step_rewards[b, s].

    Example:
        >>> r = torch.tensor([[0.5, 1.0]]); m = torch.ones(1, 2, dtype=torch.bool); e = torch.tensor([[1, 3]])
        >>> place_step_rewards(r, m, e, torch.ones(1, 4))
        tensor([[0.0000, 0.5000, 0.0000, 1.0000]])
    """
    _check(step_rewards, step_mask, step_ends, token_mask)
    B, T = token_mask.shape
    vals = torch.where(step_mask.bool(), step_rewards, torch.zeros_like(step_rewards)).to(torch.float32)
    out = torch.zeros(B, T, dtype=vals.dtype, device=vals.device)
    out.scatter_add_(1, step_ends.clamp(0, T - 1).long(), vals)
    return out * token_mask.to(out.dtype)


def ppo_token_rewards(step_rewards: torch.Tensor, step_mask: torch.Tensor, step_ends: torch.Tensor,
                      token_mask: torch.Tensor, verified: torch.Tensor | None = None, shaping: str = "none",
                      weight: float = 1.0, aggregation: str = "min", probabilistic: bool = True) -> torch.Tensor:
    """(B, T) PPO token rewards before the KL penalty: each step's score on its step-end token
    (:func:`place_step_rewards`) plus the outcome term on each response's last real token: ``weighted``
    + weight * r_v, ``qwen_math`` + sigmoid(0.5 r_m) + r_v - 1 (r_m the raw aggregated response score).

    Example:
        >>> r = torch.tensor([[0.5, 1.0]]); m = torch.ones(1, 2, dtype=torch.bool); e = torch.tensor([[1, 2]])
        >>> ppo_token_rewards(r, m, e, torch.tensor([[1, 1, 1, 0]]), torch.tensor([1.0]), "weighted", 2.0)
        tensor([[0.0000, 0.5000, 3.0000, 0.0000]])
    """
    _check_shaping(shaping, verified)
    out = place_step_rewards(step_rewards, step_mask, step_ends, token_mask)
    if shaping == "none":
        return out
    if shaping == "weighted":
        term = weight * verified.float()
    else:
        term = qwen_math_reward(aggregate_steps(step_rewards, step_mask, aggregation), verified, probabilistic)
    m = token_mask.float()
    last = (m.sum(dim=1).long() - 1).clamp(min=0)
    has = m.sum(dim=1) > 0
    rows = torch.arange(out.shape[0], device=out.device)
    out[rows[has], last[has]] += term.to(out.dtype).to(out.device)[has]
    return out


def gae(token_rewards: torch.Tensor, values: torch.Tensor, token_mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95, next_values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion tokens: (advantages, returns), both (B, T).

    ``values[b, t]`` is the critic's value of the state *before* token t (prompt + tokens < t) and
    ``token_rewards[b, t]`` the reward for emitting token t. With m the token mask (real tokens first, padding
    after), and V_{t+1} = 0 after a response's last token (terminal) unless ``next_values[b]`` is given (the value
    of the state after the last token, to bootstrap a response that was cut off by the length limit):

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}        (A = 0 past the last token)
        R_t     = A_t + V_t                              (the value target)

    Padding positions get A = R = 0. gamma = lam = 1 makes A_t = (sum of rewards from t on) - V_t.

    Example:
        >>> r = torch.tensor([[0.0, 0.0, 1.0]]); v = torch.tensor([[0.5, 0.5, 0.5]])
        >>> gae(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0)[0]
        tensor([[0.5000, 0.5000, 0.5000]])
    """
    if token_rewards.shape != values.shape or token_rewards.shape != token_mask.shape:
        raise ValueError(f"gae: shapes disagree: rewards {tuple(token_rewards.shape)}, values "
                         f"{tuple(values.shape)}, mask {tuple(token_mask.shape)}")
    if not (torch.isfinite(token_rewards).all() and torch.isfinite(values).all()):
        raise ValueError("gae: rewards or values contain NaN or inf")
    m = token_mask.to(torch.float32)
    r = token_rewards.to(torch.float32) * m
    v = values.to(torch.float32) * m
    B, T = r.shape
    # V_{t+1} for every t: the next token's value where it is real, else 0 (or the bootstrap value at the last token)
    nxt = torch.zeros_like(v)
    if T > 1:
        nxt[:, :-1] = v[:, 1:] * m[:, 1:]
    if next_values is not None:
        nxt_m = torch.zeros_like(m)
        if T > 1:
            nxt_m[:, :-1] = m[:, 1:]
        is_last = m * (1.0 - nxt_m)                    # the last real token of each row
        nxt = nxt + is_last * next_values.to(torch.float32).reshape(B, 1)
    delta = (r + gamma * nxt - v) * m
    adv = torch.zeros_like(v)
    running = torch.zeros(B, dtype=v.dtype, device=v.device)
    for t in range(T - 1, -1, -1):
        running = delta[:, t] + gamma * lam * running * (m[:, t + 1] if t + 1 < T else 0.0)
        adv[:, t] = running * m[:, t]
    return adv, (adv + v) * m


def masked_mean_var(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance of the masked entries of ``x`` (0 and 0 when nothing is masked in)."""
    m = mask.to(torch.float32)
    n = m.sum().clamp(min=1.0)
    mean = (x.float() * m).sum() / n
    var = (((x.float() - mean) ** 2) * m).sum() / n
    return mean, var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           mean: torch.Tensor | float | None = None, var: torch.Tensor | float | None = None) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (padding stays 0).

    ``mean``/``var`` default to the masked statistics of ``x``; pass global ones to whiten a batch spread over
    ranks the same way as the whole. ``shift_mean=False`` only rescales (keeps the mean).
    """
    if mean is None or var is None:
        mean, var = masked_mean_var(x, mask)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    var = torch.as_tensor(var, dtype=torch.float32, device=x.device)
    out = (x.float() - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(out.dtype)
