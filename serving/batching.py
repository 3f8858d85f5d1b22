"""Micro-batching: concurrent requests' frames go through the models together.

Requests put frames on a bounded queue and wait. One loop takes the first waiting frame,
whatever else is already waiting (up to ``max_batch``, waiting at most ``max_wait_s``
for more), and runs them in one call on a single inference thread; while that batch
runs, the next one gathers. A full queue is refused at once (``Overloaded``, 503 with
Retry-After) rather than letting every request's wait grow without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 30  # longer and a client may as well give up; the queue drains faster

Job = TypeVar("Job")
Answer = TypeVar("Answer")
T = TypeVar("T")


class Overloaded(RuntimeError):
    """The queue has no room for the request's frames."""

    def __init__(self, queued: int, capacity: int, retry_after_s: int) -> None:
        super().__init__(
            f"{queued} frames are waiting for the models (capacity {capacity}): "
            f"retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class MicroBatcher(Generic[Job, Answer]):
    def __init__(
        self,
        run: Callable[[list[Job]], list[Answer]],
        max_batch: int,
        max_wait_s: float,
        capacity: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self._on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        # seconds per frame of the last batches, for Retry-After: their median, so that
        # one slow batch (a huge frame, a model swap) does not tell every client to wait
        self._recent: collections.deque[float] = collections.deque([0.05], maxlen=32)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.capacity)
        self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(Overloaded(0, self.capacity, 1))
        self._executor.shutdown(wait=True)

    async def on_inference_thread(self, work: Callable[[], T]) -> T:
        """``work()`` run on the inference thread, between batches. For a warm-up: torch
        keeps cuDNN's chosen execution plans per thread and per shape (a ``thread_local``
        cache in ATen's ``Conv_v8.cpp``), so a warm-up on another thread leaves each
        batch size's first call on this one to choose them again."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def submit(self, jobs: list[Job]) -> list[Answer]:
        """The answers to ``jobs``; all of them are queued, or none (Overloaded)."""
        if self._queue is None:
            raise RuntimeError("the micro-batcher is not started")
        free = self.capacity - self._queue.qsize()
        if len(jobs) > free:
            wait = math.ceil((self._queue.qsize() + len(jobs)) * statistics.median(self._recent))
            raise Overloaded(
                self._queue.qsize(), self.capacity, min(MAX_RETRY_AFTER_S, max(1, wait))
            )
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in jobs]
        for job, future in zip(jobs, futures, strict=True):
            self._queue.put_nowait((job, future))
        return list(await asyncio.gather(*futures))

    async def _gather(self) -> list[tuple]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [(job, future) for job, future in batch if not future.done()]  # gone: cancelled

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            jobs = [job for job, _ in batch]
            started = time.perf_counter()
            try:
                answers = await loop.run_in_executor(self._executor, self._run_safely, jobs)
            except Exception as error:  # _run_safely already isolates per frame
                answers = [error] * len(jobs)
            seconds = time.perf_counter() - started
            self._recent.append(seconds / len(jobs))
            if self._on_batch is not None:
                self._on_batch(len(jobs), seconds)
            for (_, future), answer in zip(batch, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    def _run_safely(self, jobs: list[Job]) -> list[Answer | Exception]:
        """The batch's answers; when the batch fails, each frame again on its own, so one
        frame the models cannot take fails alone."""
        try:
            return list(self._run(jobs))
        except Exception as error:
            if len(jobs) == 1:
                log.exception("inference failed on a frame")
                return [error]
            log.warning(
                "a batch of %d failed (%s); running its frames one by one", len(jobs), error
            )
        out: list[Answer | Exception] = []
        for job in jobs:
            out += self._run_safely([job])
        return out
