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

import contextlib
import hmac
import json
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reward.base import StepRewardModel
from reward.serving.batcher import RewardService, ServiceStats
from reward.serving.protocol import ApiError, one_line, parse_score_request


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
    service = RewardService(model, settings.max_batch, settings.max_wait_ms, settings.max_queue)

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
