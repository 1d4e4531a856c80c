"""The coarse deadline timer: fires within a tick, tells its own cancellation from others'."""

from __future__ import annotations

import asyncio
import time

import pytest

from rag_llm.calls.deadlines import TICK, watch_deadline


async def test_a_passed_deadline_cancels_its_task_within_a_tick() -> None:
    began = time.monotonic()
    deadline = watch_deadline(0.1)
    with pytest.raises(asyncio.CancelledError) as caught:
        await asyncio.sleep(1)
    assert deadline.expired_with(caught.value)
    assert 0.1 <= time.monotonic() - began < 0.1 + TICK + 0.05
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_deadline_done_in_time_never_fires() -> None:
    deadline = watch_deadline(0.05)
    deadline.done()
    await asyncio.sleep(0.1)
    assert not deadline.expired
    assert not deadline.expired_with(None)


async def test_someone_elses_cancellation_is_not_taken_for_the_deadline() -> None:
    verdicts: list[bool] = []

    async def call() -> None:
        deadline = watch_deadline(10)
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError as exc:
            verdicts.append(deadline.expired_with(exc))
            raise

    task = asyncio.create_task(call())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert verdicts == [False]


async def test_many_deadlines_share_one_watch_and_each_fires_once() -> None:
    fired = 0

    async def call(seconds: float) -> None:
        nonlocal fired
        deadline = watch_deadline(seconds)
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError as exc:
            fired += deadline.expired_with(exc)
        else:
            deadline.done()

    await asyncio.gather(*(call(0.05 if i % 2 else 5.0) for i in range(100)))
    assert fired == 50
