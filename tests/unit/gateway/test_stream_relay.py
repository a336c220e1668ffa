"""run_until_disconnect: the pump runs in the calling task, the client's leaving stops it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from enclave.gateway.streaming import run_until_disconnect

pytestmark = pytest.mark.anyio


class Client:
    """An ASGI ``receive`` whose disconnect comes when the test says so."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def watchers() -> set[asyncio.Task[Any]]:
    """The relay's watcher tasks still around (the test runner's own tasks are not)."""
    return {t for t in asyncio.all_tasks() if "watch" in repr(t.get_coro())}


async def test_a_finished_pump_leaves_nothing_running() -> None:
    client = Client()
    sent: list[str] = []

    async def pump() -> None:
        sent.append("head")
        await asyncio.sleep(0)
        sent.append("body")

    outcome = await run_until_disconnect(pump(), client.receive)
    assert (outcome.error, outcome.client_left) == (None, False)
    assert sent == ["head", "body"]
    await asyncio.sleep(0)  # the watcher's cancellation lands
    assert not watchers()


async def test_the_pump_starts_before_anything_else_scheduled_runs() -> None:
    # The answer's head and first chunk go out in the caller's turn of the loop, ahead of
    # callbacks already queued (a task of its own would start after them).
    order: list[str] = []

    async def pump() -> None:
        order.append("pump")

    asyncio.get_running_loop().call_soon(order.append, "queued")
    await run_until_disconnect(pump(), Client().receive)
    assert order[0] == "pump"


async def test_the_client_leaving_cancels_the_pump_not_the_caller() -> None:
    client = Client()
    reached: list[str] = []

    async def pump() -> None:
        reached.append("started")
        client.gone.set()
        await asyncio.sleep(30)  # a model that is slow to answer
        reached.append("never")

    async with asyncio.timeout(5):  # in this task (wait_for would make another)
        outcome = await run_until_disconnect(pump(), client.receive)
    assert (outcome.error, outcome.client_left) == (None, True)
    assert reached == ["started"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # the caller's clean-up can still await
    assert not watchers()


async def test_a_pump_that_swallows_the_cancellation_still_counts_as_left() -> None:
    client = Client()

    async def pump() -> None:
        client.gone.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)

    outcome = await run_until_disconnect(pump(), client.receive)
    assert outcome.client_left
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)


async def test_a_failing_pump_hands_its_error_back() -> None:
    async def pump() -> None:
        raise OSError("broken pipe")

    outcome = await run_until_disconnect(pump(), Client().receive)
    assert isinstance(outcome.error, OSError) and not outcome.client_left


async def test_a_cancellation_from_outside_goes_on() -> None:
    started = asyncio.Event()

    async def pump() -> None:
        started.set()
        await asyncio.sleep(30)

    relay = asyncio.ensure_future(run_until_disconnect(pump(), Client().receive))
    await started.wait()
    relay.cancel()
    with pytest.raises(asyncio.CancelledError):
        await relay
    await asyncio.sleep(0)
    assert not watchers()
