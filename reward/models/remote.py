"""``remote``: step scores from an HTTP server (a PRM served elsewhere, e.g. on another GPU node).

Protocol (JSON, one POST per chunk of ``batch_size`` responses)::

    request:  {"prompts": [str], "responses": [str], "steps": [[str]], "references": [str | null] | null}
    response: {"scores": [[float, ...], ...]}     # one list per response, one float per step

Anything else (connection refused, timeout, HTTP error, non-JSON body, wrong shape, NaN/inf, strings) raises
a one-line :class:`RewardError` naming the URL and the cause. Connection errors, timeouts, HTTP 429 and 5xx
are retried ``retries`` times with exponential backoff (``backoff * 2**attempt`` seconds); other HTTP errors
and bad bodies fail at once.

``rlkit serve-reward`` (reward/serving/) is a server for this protocol. A server started with ``--token``
wants ``Authorization: Bearer <token>``: give it as ``headers`` or, to keep the secret out of the recipe (and
so out of the run folder's recipe.yaml), name an environment variable with ``token_env``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

from reward.base import RewardError, StepScores
from reward.models._common import ResponseAwareReward, is_finite_number
from reward.registry import register
from reward.steps import Step, StepSplitter


def _root_cause(e: BaseException) -> BaseException:
    """The innermost error behind a requests/urllib3 wrapper chain (e.g. ConnectionRefusedError)."""
    seen = {id(e)}
    while True:
        nxt = getattr(e, "reason", None) if isinstance(getattr(e, "reason", None), BaseException) else None
        nxt = nxt or e.__cause__ or e.__context__
        if nxt is None and e.args and isinstance(e.args[0], BaseException):
            nxt = e.args[0]
        if nxt is None or id(nxt) in seen:
            return e
        seen.add(id(nxt))
        e = nxt


@register("remote")
class RemoteReward(ResponseAwareReward):
    """Score steps by POSTing them to an HTTP server (see the module docstring for the JSON protocol).

    Args:
        url: the endpoint, e.g. ``http://prm-host:8000/score``.
        timeout: seconds per request (connect and read).
        retries: extra attempts after a retryable failure (0 = try once).
        backoff: first retry delay in seconds; doubles on every further retry.
        batch_size: responses per request (default: all in one request).
        headers: extra HTTP headers, e.g. ``{"Authorization": "Bearer <token>"}``.
        token_env: name of an environment variable holding a bearer token; sent as
            ``Authorization: Bearer <value>`` (unset or empty variable: ValueError at construction).
        probabilistic: whether the server's scores are probabilities in [0, 1] (default True).
        splitter: step splitting; the server gets the step texts and the full response.

    Example (recipe)::

        reward: {name: remote, args: {url: "http://10.0.0.5:8000/score", timeout: 60, retries: 3}}
        reward: {name: remote, args: {url: "http://10.0.0.5:8000/score", token_env: RLKIT_REWARD_TOKEN}}

    Example:
        >>> rm = RemoteReward("http://127.0.0.1:9/score", timeout=0.5, retries=0)
        >>> try:
        ...     rm.score(["q"], ["a"])
        ... except RewardError as e:
        ...     print(str(e)[:41])
        remote reward http://127.0.0.1:9/score: c
    """

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 batch_size: int | None = None, headers: dict[str, str] | None = None, probabilistic: bool = True,
                 splitter: StepSplitter | dict | None = None, token_env: str | None = None) -> None:
        super().__init__(splitter)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"remote reward url must start with http:// or https://, got {url!r}")
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("remote reward needs retries >= 0, timeout > 0, backoff >= 0")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.url, self.timeout, self.retries, self.backoff = url, float(timeout), int(retries), float(backoff)
        self.batch_size, self.headers = batch_size, dict(headers or {})
        if token_env:
            token = os.environ.get(token_env)
            if not token:
                raise ValueError(f"remote reward: environment variable {token_env} (token_env) is not set")
            self.headers["Authorization"] = f"Bearer {token}"
        self.probabilistic = bool(probabilistic)
        self.sleep = time.sleep  # swapped out in tests

    def _fail(self, why: str) -> RewardError:
        return RewardError(f"remote reward {self.url}: {why}".replace("\n", " "))

    def _post(self, payload: dict[str, Any]) -> Any:
        import requests

        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = requests.post(self.url, json=payload, timeout=self.timeout, headers=self.headers)
            except requests.Timeout:
                last = f"timed out after {self.timeout:g}s"
                continue
            except requests.ConnectionError as e:
                last = f"connection failed ({type(_root_cause(e)).__name__})"
                continue
            except requests.RequestException as e:
                raise self._fail(f"request failed: {type(e).__name__}: {str(e)[:200]}") from None
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code} {resp.reason}"
                continue
            if resp.status_code >= 400:
                raise self._fail(f"HTTP {resp.status_code} {resp.reason}: {resp.text[:200]!r}")
            try:
                return resp.json()
            except ValueError:
                raise self._fail(f"response is not JSON: {resp.text[:200]!r}") from None
        tries = self.retries + 1
        raise self._fail(f"{last} (server down or unreachable? {tries} attempt{'s' if tries > 1 else ''})")

    def _check(self, body: Any, steps: Sequence[Sequence[Step]], offset: int) -> list[list[float]]:
        if not isinstance(body, dict) or "scores" not in body:
            raise self._fail(f"response has no 'scores' field: {json.dumps(body)[:200]}")
        scores = body["scores"]
        if not isinstance(scores, list) or len(scores) != len(steps):
            n = len(scores) if isinstance(scores, list) else type(scores).__name__
            raise self._fail(f"expected {len(steps)} score lists, got {n}")
        out = []
        for i, (row, st) in enumerate(zip(scores, steps)):
            if not isinstance(row, list) or len(row) != len(st):
                n = len(row) if isinstance(row, list) else type(row).__name__
                raise self._fail(f"response {offset + i}: expected {len(st)} step scores, got {n}")
            bad = next((v for v in row if not is_finite_number(v)), None)
            if any(not is_finite_number(v) for v in row):
                raise self._fail(f"response {offset + i}: non-finite or non-numeric score {bad!r}")
            out.append([float(v) for v in row])
        return out

    def score_responses(self, prompts: Sequence[str], responses: Sequence[str], steps: Sequence[Sequence[Step]],
                        references: Sequence[str | None] | None = None) -> list[StepScores]:
        n = len(responses)
        size = self.batch_size or max(n, 1)
        out: list[StepScores] = []
        for a in range(0, n, size):
            b = min(a + size, n)
            payload = {"prompts": list(prompts[a:b]), "responses": list(responses[a:b]),
                       "steps": [[s.text for s in st] for st in steps[a:b]],
                       "references": list(references[a:b]) if references is not None else None}
            rows = self._check(self._post(payload), steps[a:b], a)
            out += [StepScores(list(st), row) for st, row in zip(steps[a:b], rows)]
        return out
