"""The wire format of POST /score: validating a request body, and scoring validated requests in one call.

The schema is the one the ``remote`` reward (reward/models/remote.py) sends::

    {"prompts": [str], "responses": [str], "steps": [[str]] | null, "references": [str | null] | null}

Example:
    >>> from reward.registry import build_reward
    >>> rm = build_reward("arithmetic")
    >>> req = parse_score_request(b'{"prompts": ["q"], "responses": ["1 + 1 = 2"], "steps": [["1 + 1 = 2"]]}', rm, 8)
    >>> score_requests(rm, [req, req])
    [[[1.0]], [[1.0]]]
    >>> try:
    ...     parse_score_request(b'{"prompts": [], "responses": ["a"]}', rm, 8)
    ... except ApiError as e:
    ...     print(e.status, e.message)
    422 0 prompts for 1 responses
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from reward.base import RewardError, StepRewardModel, StepScores, wrap_scores
from reward.models._common import ResponseAwareReward
from reward.steps import Step


@dataclass
class ScoreRequest:
    """One validated POST /score body; ``split`` is True when the server split the responses itself."""

    prompts: list[str]
    responses: list[str]
    steps: list[list[str]]
    references: list[str | None] | None
    split: bool = False

    def __len__(self) -> int:
        return len(self.responses)


class ApiError(Exception):
    """An HTTP error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, one_line(message)


def one_line(msg: Any, limit: int = 300) -> str:
    text = " ".join(str(msg).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _str_list(value: Any, field_name: str, allow_none: bool = False) -> list:
    if not isinstance(value, list):
        raise ApiError(422, f"'{field_name}' must be a list, got {type(value).__name__}")
    for i, v in enumerate(value):
        if not (isinstance(v, str) or (allow_none and v is None)):
            want = "a string or null" if allow_none else "a string"
            raise ApiError(422, f"'{field_name}[{i}]' must be {want}, got {type(v).__name__}")
    return value


def parse_score_request(body: bytes, model: StepRewardModel, max_responses: int) -> ScoreRequest:
    """Validate a POST /score body; raises :class:`ApiError` (400 bad JSON, 422 wrong shape, 413 too many)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"body must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"prompts", "responses", "steps", "references"})
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r} (allowed: prompts, responses, steps, references)")
    for key in ("prompts", "responses"):
        if key not in data:
            raise ApiError(422, f"missing field '{key}'")
    prompts = _str_list(data["prompts"], "prompts")
    responses = _str_list(data["responses"], "responses")
    n = len(responses)
    if n > max_responses:
        raise ApiError(413, f"{n} responses in one request exceed the limit of {max_responses}")
    if len(prompts) != n:
        raise ApiError(422, f"{len(prompts)} prompts for {n} responses")
    refs = data.get("references")
    if refs is not None:
        refs = _str_list(refs, "references", allow_none=True)
        if len(refs) != n:
            raise ApiError(422, f"{len(refs)} references for {n} responses")
    steps = data.get("steps")
    if steps is None:
        split = [model.splitter.split(r) for r in responses]
        return ScoreRequest(prompts, responses, [[s.text for s in st] for st in split], refs, split=True)
    if not isinstance(steps, list) or len(steps) != n:
        got = len(steps) if isinstance(steps, list) else type(steps).__name__
        raise ApiError(422, f"'steps' must be a list of {n} lists of strings (one per response), got {got}")
    for i, st in enumerate(steps):
        _str_list(st, f"steps[{i}]")
    return ScoreRequest(prompts, responses, steps, refs)


def locate_steps(response: str, texts: Sequence[str]) -> list[Step]:
    """Steps with their character spans, found in order inside ``response``.

    A step text that is not in the response (the client split differently) gets a span right after the
    previous step; rewards score the step text, spans only matter for token alignment on the client.
    """
    out, pos = [], 0
    for t in texts:
        i = response.find(t, pos)
        i = pos if i < 0 else i
        out.append(Step(t, i, i + len(t)))
        pos = i + len(t)
    return out


def score_requests(model: StepRewardModel, batch: Sequence[ScoreRequest]) -> list[list[list[float]]]:
    """Score several requests with one model call; per request, one list of step scores per response.

    The client's step texts are used as they are (the server never re-splits them), so every response gets
    exactly as many scores as it sent steps. Rewards that read the whole response get the original text.
    """
    prompts = [p for r in batch for p in r.prompts]
    responses = [x for r in batch for x in r.responses]
    steps = [locate_steps(resp, st) for r in batch for resp, st in zip(r.responses, r.steps)]
    refs: list[str | None] | None = [x for r in batch for x in (r.references or [None] * len(r))]
    if all(x is None for x in refs):
        refs = None
    if isinstance(model, ResponseAwareReward):
        scored: list[StepScores] = wrap_scores(model.name, steps, model.score_responses(prompts, responses, steps, refs))
    else:
        scored = model.score_split(prompts, steps, refs)
    if len(scored) != len(responses):
        raise RewardError(f"reward returned {len(scored)} results for {len(responses)} responses")
    out, pos = [], 0
    for r in batch:
        out.append([s.scores for s in scored[pos: pos + len(r)]])
        pos += len(r)
    return out
