"""An HTTP server for any registered reward, with dynamic batching: what the ``remote`` reward talks to.

Requests that arrive within ``max_wait_ms`` of each other are scored together in one
:meth:`StepRewardModel.score_split` call (at most ``max_batch`` responses per call), in one worker thread
(reward models are not thread-safe), fed by an asyncio queue holding at most ``max_queue`` requests (more:
HTTP 503). FastAPI routes the requests and uvicorn serves them; on SIGTERM/SIGINT uvicorn stops accepting
connections and the batches already queued or being scored are finished before the process exits.

Endpoints (JSON; errors are ``{"error": "<one line>"}`` with a 4xx/5xx status):

    POST /score     {"prompts": [str], "responses": [str], "steps": [[str]] | null, "references": [str|null] | null}
                    -> {"scores": [[float per step] per response]}  (+ "steps" when the request left them out:
                    the server split the responses with the reward's own splitter)
    GET  /health    {"status": "ok", "queued": ..., "scoring": ..., "requests": ..., "batches": ...,
                    "largest_batch": ..., ...}   (counters of ServiceStats; no token needed)
    GET  /metadata  reward name, its arguments, batch settings, probabilistic

With ``token`` set, /score and /metadata need ``Authorization: Bearer <token>`` (401 otherwise); /health
stays open for load balancers. Bodies over ``max_body_bytes`` and requests with more than
``max_request_responses`` responses get 413.

Example (command line; see docs/rewards.md#serving-a-reward-rlkit-serve-reward)::

    rlkit serve-reward --reward arithmetic --port 8000 --max-batch 64 --max-wait-ms 5
    # recipe of the RL run:  reward: {name: remote, args: {url: "http://HOST:8000/score"}}

Example (in process, e.g. a test or a notebook):

    >>> from reward.registry import build_reward
    >>> from reward.models.remote import RemoteReward
    >>> with BackgroundServer(build_reward("arithmetic"), ServeSettings(port=0, log_level="warning")) as srv:
    ...     RemoteReward(srv.url + "/score").score(["q"], ["2 + 2 = 4\\n\\n2 + 2 = 5"])[0].scores
    [1.0, 0.0]
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, AsyncIterator, Sequence

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reward.base import RewardError, StepRewardModel, StepScores, wrap_scores
from reward.models._common import ResponseAwareReward
from reward.steps import Step

log = logging.getLogger("rlkit.serve")


@dataclass
class ServeSettings:
    """How the server listens, batches and refuses.

    ``max_batch`` counts responses per ``score`` call (a single request larger than that is scored alone, never
    split); ``max_batch=1`` scores one request at a time. ``max_queue`` counts requests waiting to be scored.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_body_bytes: int = 8 * 1024 * 1024
    max_request_responses: int = 1024
    token: str | None = None
    graceful_timeout_s: float = 30.0
    log_level: str = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_request_responses"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.token is not None and not self.token:
            raise ValueError("token must be non-empty when given")


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


@dataclass
class ServiceStats:
    """Counters shown by GET /health (and returned by :func:`serve` when the server stops)."""

    requests: int = 0
    responses: int = 0
    batches: int = 0
    largest_batch: int = 0
    rejected_full: int = 0
    failed: int = 0


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


@dataclass
class _Job:
    request: ScoreRequest
    future: asyncio.Future
    arrived: float


_STOP = object()


@dataclass
class RewardService:
    """The batching core, independent of HTTP: an asyncio queue drained into one worker thread.

    :meth:`submit` queues a request and waits for its scores. The batcher takes the first waiting request,
    adds every request arriving until ``max_wait_ms`` after that one arrived (or until ``max_batch`` responses),
    and scores them with one model call in the worker thread; a batch that fails is retried request by
    request, so one bad request cannot fail the others.
    """

    model: StepRewardModel
    settings: ServeSettings
    stats: ServiceStats = field(default_factory=ServiceStats)

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.closing = False
        self.scoring = 0  # requests in the batch being scored now

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()  # bounded by submit(), so the stop marker always fits
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlkit-reward")
        self._task = asyncio.create_task(self._run(), name="rlkit-reward-batcher")

    async def stop(self) -> None:
        """Refuse new requests, finish every queued one, then stop the worker thread."""
        self.closing = True
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, request: ScoreRequest) -> list[list[float]]:
        if self._queue is None or self.closing:
            raise ApiError(503, "server is shutting down")
        if not len(request):
            return []
        if self._queue.qsize() >= self.settings.max_queue:
            self.stats.rejected_full += 1
            raise ApiError(503, f"queue full ({self.settings.max_queue} requests waiting); retry later")
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), loop.time())
        self._queue.put_nowait(job)
        return await job.future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        wait = self.settings.max_wait_ms / 1000.0
        carry: Any = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            if first is _STOP:
                return
            batch, n = [first], len(first.request)
            deadline = first.arrived + wait
            while n < self.settings.max_batch:
                try:
                    if not self._queue.empty():
                        item = self._queue.get_nowait()
                    else:
                        left = deadline - loop.time()
                        if left <= 0:
                            break
                        item = await asyncio.wait_for(self._queue.get(), left)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if item is _STOP or n + len(item.request) > self.settings.max_batch:
                    carry = item
                    break
                batch.append(item)
                n += len(item.request)
            await self._score(batch, n)

    async def _score(self, batch: list[_Job], n: int) -> None:
        loop = asyncio.get_running_loop()
        self.stats.batches += 1  # model calls, retries of a failed batch included
        self.stats.largest_batch = max(self.stats.largest_batch, n)
        self.scoring = len(batch)
        try:
            results = await loop.run_in_executor(self._executor, score_requests, self.model,
                                                 [j.request for j in batch])
        except Exception as e:  # noqa: BLE001 - reported to the clients, the server keeps serving
            if len(batch) > 1:
                for job in batch:  # find the request that broke the batch; the others still get scores
                    await self._score([job], len(job.request))
                return
            self.stats.failed += 1
            status = 422 if isinstance(e, RewardError) else 500
            if status == 500:
                log.exception("scoring failed")
            _resolve(batch[0].future, exc=ApiError(status, f"reward failed: {type(e).__name__}: {e}"))
            return
        finally:
            self.scoring = 0
        for job, res in zip(batch, results):
            self.stats.requests += 1
            self.stats.responses += len(job.request)
            _resolve(job.future, result=res)


def _resolve(fut: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():  # the client went away and its handler was cancelled
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            raise ApiError(400, f"bad Content-Length header {length!r}") from None
        if size > limit:
            raise ApiError(413, f"request body of {size} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): _json_safe(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_json_safe(v) for v in value]
        return f"<{type(value).__name__}>"


def create_app(model: StepRewardModel, settings: ServeSettings, name: str | None = None,
               args: dict[str, Any] | None = None) -> FastAPI:
    """The FastAPI application serving ``model`` (``name``/``args`` are what GET /metadata reports)."""
    service = RewardService(model, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="rlkit reward server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service
    expected = f"Bearer {settings.token}".encode() if settings.token else None
    metadata = {"reward": name or model.name, "args": _json_safe(dict(args or {})),
                "probabilistic": bool(getattr(model, "probabilistic", True)), "max_batch": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms, "max_queue": settings.max_queue,
                "max_body_bytes": settings.max_body_bytes, "max_request_responses": settings.max_request_responses,
                "auth": expected is not None}

    def authorize(request: Request) -> None:
        if expected is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>'")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": one_line(f"{request.method} {request.url.path}: {exc.detail}")},
                            status_code=exc.status_code)

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        authorize(request)
        body = await _read_body(request, settings.max_body_bytes)
        req = parse_score_request(body, model, settings.max_request_responses)
        scores = await service.submit(req)
        out: dict[str, Any] = {"scores": scores}
        if req.split:
            out["steps"] = req.steps
        return JSONResponse(out)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "stopping" if service.closing else "ok", "queued": service.queued,
                "scoring": service.scoring, **asdict(service.stats)}

    @app.get("/metadata")
    async def get_metadata(request: Request) -> dict[str, Any]:
        authorize(request)
        return metadata

    return app


def _uvicorn_config(app: FastAPI, settings: ServeSettings) -> uvicorn.Config:
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                          access_log=settings.access_log, timeout_graceful_shutdown=int(settings.graceful_timeout_s),
                          lifespan="on")


def serve(model: StepRewardModel, settings: ServeSettings, name: str | None = None,
          args: dict[str, Any] | None = None) -> ServiceStats:
    """Serve ``model`` until SIGTERM/SIGINT; queued and in-flight batches are finished first.

    Returns the final counters. (uvicorn re-raises the signal it caught once it has shut down; here that
    lands on a no-op handler, so the caller decides the exit code.)
    """
    app = create_app(model, settings, name, args)
    server = uvicorn.Server(_uvicorn_config(app, settings))
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda sig, frame: caught.append(sig)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        if server.started:
            raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if not server.started:
        raise OSError(f"reward server could not start on {settings.host}:{settings.port} (port in use?)")
    return app.state.service.stats


class BackgroundServer:
    """A reward server in a background thread of this process (tests, benchmarks, notebooks).

    ``ServeSettings(port=0)`` picks a free port; :attr:`url` is ``http://host:port``. Leaving the ``with``
    block shuts the server down gracefully (queued requests are answered first).
    """

    def __init__(self, model: StepRewardModel, settings: ServeSettings | None = None, name: str | None = None,
                 args: dict[str, Any] | None = None, start_timeout: float = 30.0) -> None:
        self.settings = settings or ServeSettings(port=0, log_level="warning")
        self.app = create_app(model, self.settings, name, args)
        self.server = uvicorn.Server(_uvicorn_config(self.app, self.settings))
        self.start_timeout = start_timeout
        self._thread = threading.Thread(target=self.server.run, name="rlkit-reward-server", daemon=True)

    @property
    def service(self) -> RewardService:
        return self.app.state.service

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def start(self) -> "BackgroundServer":
        self._thread.start()
        end = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise OSError(f"reward server did not start on {self.settings.host}:{self.settings.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
