"""The micro-batcher on a real event loop: concurrent requests share model calls, a
full queue refuses at once with a wait to retry after, and a frame the models cannot
take fails alone."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.batching import MicroBatcher, Overloaded


def _run(coroutine):
    return asyncio.run(coroutine)


class Model:
    """Doubles numbers, a few milliseconds per call; refuses negative ones."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.calls: list[list[int]] = []
        self.seconds = seconds

    def __call__(self, jobs: list[int]) -> list[int]:
        self.calls.append(list(jobs))
        time.sleep(self.seconds)
        if any(j < 0 for j in jobs):
            raise ValueError("negative frame")
        return [2 * j for j in jobs]


def test_concurrent_requests_are_answered_in_order_from_shared_batches() -> None:
    model = Model()
    seen: list[int] = []

    async def main():
        batcher = MicroBatcher(
            model, max_batch=8, max_wait_s=0.005, capacity=64, on_batch=lambda n, s: seen.append(n)
        )
        await batcher.start()
        answers = await asyncio.gather(*(batcher.submit([i]) for i in range(24)))
        several = await batcher.submit([100, 101, 102])
        await batcher.stop()
        return answers, several

    answers, several = _run(main())
    assert answers == [[2 * i] for i in range(24)]
    assert several == [200, 202, 204]
    assert max(len(c) for c in model.calls) > 1  # requests did share calls
    assert all(len(c) <= 8 for c in model.calls)
    assert sum(seen) == 27


def test_a_full_queue_refuses_at_once_then_serves_again() -> None:
    model = Model(seconds=0.05)

    async def main():
        batcher = MicroBatcher(model, max_batch=2, max_wait_s=0, capacity=4)
        await batcher.start()
        results = await asyncio.gather(
            *(batcher.submit([i]) for i in range(20)), return_exceptions=True
        )
        with pytest.raises(Overloaded) as too_many:
            await batcher.submit(list(range(5)))  # more than the queue can ever hold
        after = await batcher.submit([7])
        await batcher.stop()
        return results, too_many.value, after

    results, too_many, after = _run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert refused and served
    assert all(r.retry_after_s >= 1 for r in refused)
    assert too_many.retry_after_s >= 1
    assert after == [14]


def test_a_frame_the_model_refuses_fails_alone() -> None:
    model = Model(seconds=0.01)

    async def main():
        batcher = MicroBatcher(model, max_batch=8, max_wait_s=0.01, capacity=16)
        await batcher.start()
        results = await asyncio.gather(
            *(batcher.submit([i]) for i in (1, -1, 3)), return_exceptions=True
        )
        await batcher.stop()
        return results

    good, bad, other = _run(main())
    assert good == [2] and other == [6]
    assert isinstance(bad, ValueError)


def test_one_slow_batch_does_not_inflate_retry_after() -> None:
    """Retry-After comes from the median of recent batches, and is at most 30 s."""
    model = Model(seconds=0.01)

    async def main():
        batcher = MicroBatcher(model, max_batch=1, max_wait_s=0, capacity=2)
        await batcher.start()
        for i in range(5):
            await batcher.submit([i])
        model.seconds = 3.0  # one huge frame
        await batcher.submit([9])
        model.seconds = 0.01
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(list(range(3)))
        await batcher.stop()
        return refused.value

    assert _run(main()).retry_after_s == 1


def test_work_on_the_inference_thread_runs_where_the_batches_run() -> None:
    """``on_inference_thread`` (the API's warm-up on a GPU: CUDA's libraries keep their
    choices per thread) runs on the thread the batches run on, and returns its result."""
    import threading

    threads: list[int] = []

    def model(jobs: list[int]) -> list[int]:
        threads.append(threading.get_ident())
        return jobs

    async def main():
        batcher = MicroBatcher(model, max_batch=4, max_wait_s=0.001, capacity=8)
        await batcher.start()
        await batcher.submit([1])
        warmed = await batcher.on_inference_thread(threading.get_ident)
        await batcher.submit([2])
        await batcher.stop()
        return warmed

    warmed = _run(main())
    assert threads == [warmed, warmed] and warmed != threading.get_ident()
