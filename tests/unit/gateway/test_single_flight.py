"""A shared fetch logs under none of the requests that wait for it."""

from __future__ import annotations

import asyncio

import pytest

from enclave.common.logging import REQUEST_FIELDS
from enclave.gateway.single_flight import SingleFlight

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_the_shared_work_runs_without_the_starting_requests_fields() -> None:
    seen: list[object] = []

    async def work() -> bool:
        seen.append(REQUEST_FIELDS.get())
        await asyncio.sleep(0)
        return True

    flight = SingleFlight(work)
    token = REQUEST_FIELDS.set({"request_id": "first-caller"})
    try:
        assert await flight.join() is True
        assert REQUEST_FIELDS.get() == {"request_id": "first-caller"}  # the caller keeps its own
    finally:
        REQUEST_FIELDS.reset(token)
        await flight.aclose()
    assert seen == [None]
