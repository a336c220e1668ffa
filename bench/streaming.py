"""Streaming measurements: time to first frame, gaps between frames, lost or merged frames.

The fake upstream sends ``frames`` frames ``gap`` apart; frame *i* carries the text
``<iiii>`` (see :func:`upstream.frame_text`). A client here reads the answer and notes when
each frame arrives:

* ``raw`` answers (Enclave's ``/v2/code/completions`` with ``stream: true``: raw text deltas
  without SSE framing, one HTTP chunk per delta): the unit is one HTTP chunk;
* ``sse`` answers (the upstream itself, LiteLLM): the unit is one ``data:`` event.

A unit carrying two sequence numbers is a *merged* frame; a number that never arrives is
*lost*; one that arrives after a higher one is *reordered*. Time to first byte is measured
from sending the request to the arrival of the unit holding frame 0.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

_TOKEN = re.compile(r"<(\d{4})>")


@dataclass
class StreamOutcome:
    ok_status: bool
    ttfb_ms: float | None = None
    gaps_ms: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    merged: int = 0  # units that carried more than one frame
    coalesced_chunks: int = 0  # SSE only: HTTP chunks that carried more than one event
    error: str | None = None


@dataclass
class StreamStats:
    """Aggregate of many streams of one target."""

    streams: int
    concurrency: int
    frames_per_stream: int
    failed: int
    lost: int
    merged: int
    reordered: int
    coalesced_chunks: int
    ttfb_ms: list[float]
    gaps_ms: list[float]
    errors: list[str]

    @property
    def intact(self) -> bool:
        return self.failed == 0 and self.lost == 0 and self.merged == 0 and self.reordered == 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["intact"] = self.intact
        data["ttfb_ms"] = summary(self.ttfb_ms)
        data["gaps_ms"] = summary(self.gaps_ms)
        return data


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(q / 100 * len(ordered) + 0.999999) - 1))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def _sse_texts(event: bytes) -> list[str]:
    texts: list[str] = []
    for line in event.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]" or not data:
            continue
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        for choice in payload.get("choices") or ():
            text = choice.get("text")
            if text is None:
                text = (choice.get("delta") or {}).get("content")
            if isinstance(text, str):
                texts.append(text)
    return texts


async def one_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    fmt: str,
    timeout_s: float,
) -> StreamOutcome:
    """Read one streamed answer and note when each frame arrived."""
    arrivals: list[float] = []
    outcome = StreamOutcome(ok_status=False)

    def note(tokens: list[str], at: float) -> None:
        if not tokens:
            return
        if len(tokens) > 1:
            outcome.merged += 1
        outcome.received.extend(int(t) for t in tokens)
        arrivals.append(at)

    started = time.perf_counter()
    try:
        async with session.post(
            url, data=body, headers=dict(headers), timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            if response.status != 200:
                outcome.error = f"HTTP {response.status}: {(await response.read())[:200]!r}"
                return outcome
            outcome.ok_status = True
            pending = b""
            async for data, end_of_chunk in response.content.iter_chunks():
                pending += data
                if fmt == "raw":
                    if not end_of_chunk:
                        continue
                    note(_TOKEN.findall(pending.decode("utf-8", "replace")), time.perf_counter())
                    pending = b""
                else:
                    now = time.perf_counter()
                    events = 0
                    while b"\n\n" in pending:
                        event, pending = pending.split(b"\n\n", 1)
                        texts = _sse_texts(event)
                        if texts:
                            events += 1
                        note(_TOKEN.findall("".join(texts)), now)
                    if events > 1:
                        outcome.coalesced_chunks += 1
            if pending:
                if fmt == "raw":
                    note(_TOKEN.findall(pending.decode("utf-8", "replace")), time.perf_counter())
                else:
                    note(_TOKEN.findall("".join(_sse_texts(pending))), time.perf_counter())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    if arrivals and outcome.received and outcome.received[0] == 0:
        outcome.ttfb_ms = (arrivals[0] - started) * 1000
    outcome.gaps_ms = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    return outcome


def aggregate(outcomes: list[StreamOutcome], frames: int, concurrency: int) -> StreamStats:
    stats = StreamStats(
        streams=len(outcomes),
        concurrency=concurrency,
        frames_per_stream=frames,
        failed=0,
        lost=0,
        merged=0,
        reordered=0,
        coalesced_chunks=0,
        ttfb_ms=[],
        gaps_ms=[],
        errors=[],
    )
    for outcome in outcomes:
        if not outcome.ok_status or outcome.error:
            stats.failed += 1
            if outcome.error and len(stats.errors) < 5:
                stats.errors.append(outcome.error)
        received = outcome.received
        stats.lost += len(set(range(frames)) - set(received))
        stats.merged += outcome.merged
        stats.reordered += sum(1 for a, b in itertools.pairwise(received) if b <= a)
        stats.coalesced_chunks += outcome.coalesced_chunks
        if outcome.ttfb_ms is not None:
            stats.ttfb_ms.append(outcome.ttfb_ms)
        stats.gaps_ms.extend(outcome.gaps_ms)
    return stats


async def measure(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    fmt: str,
    frames: int,
    sequential: int,
    concurrency: int,
    rounds: int,
    timeout_s: float = 30.0,
) -> dict[str, StreamStats]:
    """``sequential`` streams one after another, then ``rounds`` × ``concurrency`` at once."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        await one_stream(session, url, body, headers, fmt, timeout_s)  # warm the connection
        outcomes = [
            await one_stream(session, url, body, headers, fmt, timeout_s) for _ in range(sequential)
        ]
        result = {"sequential": aggregate(outcomes, frames, 1)}
        parallel: list[StreamOutcome] = []
        for _ in range(rounds):
            parallel.extend(
                await asyncio.gather(
                    *(
                        one_stream(session, url, body, headers, fmt, timeout_s)
                        for _ in range(concurrency)
                    )
                )
            )
        result["concurrent"] = aggregate(parallel, frames, concurrency)
    return result


def run(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    fmt: str,
    frames: int,
    sequential: int,
    concurrency: int,
    rounds: int,
) -> dict[str, StreamStats]:
    coroutine = measure(url, body, headers, fmt, frames, sequential, concurrency, rounds)
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)
