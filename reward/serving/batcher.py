"""Dynamic batching: an asyncio queue of score requests drained into one worker thread.

Used by the HTTP server (server.py); independent of HTTP, so any asyncio code can drive it.

Example:
    >>> import asyncio
    >>> from reward.registry import build_reward
    >>> async def two_requests():
    ...     service = RewardService(build_reward("arithmetic"), max_batch=8, max_wait_ms=10)
    ...     await service.start()
    ...     reqs = [ScoreRequest(["q"], [f"1 + 1 = {k}"], [[f"1 + 1 = {k}"]], None) for k in (2, 3)]
    ...     out = await asyncio.gather(*(service.submit(r) for r in reqs))
    ...     await service.stop()
    ...     return out, service.stats.batches
    >>> asyncio.run(two_requests())       # both arrived together: one model call
    ([[[1.0]], [[0.0]]], 1)
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from reward.base import RewardError, StepRewardModel
from reward.serving.protocol import ApiError, ScoreRequest, score_requests

log = logging.getLogger("rlkit.serve")


@dataclass
class ServiceStats:
    """Counters shown by GET /health (and returned by :func:`serve` when the server stops)."""

    requests: int = 0
    responses: int = 0
    batches: int = 0
    largest_batch: int = 0
    rejected_full: int = 0
    failed: int = 0


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
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
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
        if self._queue.qsize() >= self.max_queue:
            self.stats.rejected_full += 1
            raise ApiError(503, f"queue full ({self.max_queue} requests waiting); retry later")
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), loop.time())
        self._queue.put_nowait(job)
        return await job.future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        wait = self.max_wait_ms / 1000.0
        carry: Any = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            if first is _STOP:
                return
            batch, n = [first], len(first.request)
            deadline = first.arrived + wait
            while n < self.max_batch:
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
                if item is _STOP or n + len(item.request) > self.max_batch:
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
