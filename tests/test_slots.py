"""A freed call slot goes to the releasing client's own waiters first, within a bound."""

from __future__ import annotations

import asyncio

from rag_llm.slots import _MAX_PASSED, Slots


async def _queue(slots: Slots, owners: list[str]) -> tuple[list[str], list[asyncio.Task[bool]]]:
    """Queue one waiter per owner, in order; returns the order they get slots in."""
    order: list[str] = []

    async def wait(owner: str) -> bool:
        got = await slots.acquire(5.0, owner=owner)
        order.append(owner)
        return got

    tasks = []
    for owner in owners:
        tasks.append(asyncio.create_task(wait(owner)))
        await asyncio.sleep(0)  # queued in this order
    return order, tasks


async def test_a_slot_goes_to_the_releasing_clients_waiter_first() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    order, tasks = await _queue(slots, ["b", "a", "b"])
    slots.release("a")
    await asyncio.sleep(0)
    assert order == ["a"]
    slots.release("c")  # nobody of c's waits: first come, first served
    await asyncio.sleep(0)
    slots.release(None)
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "b"]


async def test_the_longest_waiter_is_passed_over_a_bounded_number_of_times() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    order, tasks = await _queue(slots, ["b", *["a"] * (_MAX_PASSED + 2)])
    for _ in range(_MAX_PASSED + 1):
        slots.release("a")
        await asyncio.sleep(0)
    assert order == ["a"] * _MAX_PASSED + ["b"]
    for _ in range(2):
        slots.release("b")
        await asyncio.sleep(0)
    slots.release(None)
    assert all(await asyncio.gather(*tasks))
    assert slots.taken == 0
    assert slots.waiting == 0


def test_an_uncontended_release_ignores_the_owner() -> None:
    slots = Slots(2)
    assert slots.try_acquire()
    slots.release("a")
    assert slots.taken == 0
