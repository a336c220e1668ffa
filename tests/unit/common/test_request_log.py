"""The request line's own path (``log_request``) writes what the structlog pipeline writes."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from enclave.common import logging as logging_module
from enclave.common.logging import (
    REDACTED,
    REQUEST_FIELDS,
    configure_logging,
    get_logger,
    log_request,
    write_request_lines_per_loop_turn,
)
from enclave.common.request_id import new_request_id

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xIn0.c2lnbmF0dXJlLXZhbHVl"
PAT = "enclpat-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")


def _fields() -> dict[str, Any]:
    # A route and a request id holding secrets: both come from the client.
    return {"method": "POST", "route": f"/v1/x/{JWT}", "status": 200, "duration_ms": 0.512}


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]


@pytest.mark.usefixtures("restore_logging")
def test_the_request_line_is_the_pipelines_line_field_for_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("gateway", "info", "json")
    structlog.contextvars.bind_contextvars(
        request_id=f"id-{PAT}", session_token="s3cr3t", api_key="", credentials=["c"]
    )
    # A fresh name: loggers are cached on first use with the configuration of that time.
    get_logger("test.request_log.pipeline").info("request", **_fields())
    log_request(get_logger("test.request_log.fast"), _fields())
    through_structlog, own_path = _lines(capsys)
    # Same keys in the same order, same values (the timestamps differ by the time between).
    assert list(own_path) == list(through_structlog)
    assert TS.match(own_path["ts"]) and TS.match(through_structlog["ts"])
    assert {**own_path, "ts": ""} == {**through_structlog, "ts": ""}
    assert own_path["route"] == f"/v1/x/{REDACTED}"
    assert own_path["request_id"] == f"id-{REDACTED}"
    assert own_path["session_token"] == REDACTED
    assert own_path["api_key"] == "" and own_path["credentials"] == REDACTED
    assert own_path["component"] == "gateway"
    assert own_path["level"] == "info" and own_path["event"] == "request"


@pytest.mark.usefixtures("restore_logging")
def test_the_request_line_follows_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("gateway", "warning", "json")
    log_request(get_logger("test.request_log.level"), _fields())
    assert _lines(capsys) == []


@pytest.mark.usefixtures("restore_logging")
def test_captured_and_console_logs_get_the_request_line_through_structlog(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("gateway", "info", "json")
    with capture_logs() as logs:
        log_request(get_logger("test.request_log.captured"), _fields())
    assert [entry["event"] for entry in logs] == ["request"]
    assert _lines(capsys) == []

    configure_logging("gateway", "info", "console")
    log_request(get_logger("test.request_log.console"), _fields())
    text = capsys.readouterr().err
    assert "request" in text and "duration_ms=0.512" in text and JWT not in text


def test_request_ids_are_32_hex_characters_and_never_repeat() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)


@pytest.mark.usefixtures("restore_logging")
def test_every_line_of_a_request_carries_its_fields_as_they_grow(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("instance", "info", "json")
    fields: dict[str, Any] = {"request_id": "r-1"}
    token = REQUEST_FIELDS.set(fields)
    try:
        logger = get_logger("test.request_log.fields")
        logger.info("early")
        fields["model"] = "codestral"  # what annotate() does once the model is known
        logger.warning("gateway_timeout", model="own value wins", api_key=PAT)
        log_request(logger, {"method": "POST", "status": 200})
    finally:
        REQUEST_FIELDS.reset(token)
    logger.info("after")
    early, later, request, after = _lines(capsys)
    assert early["request_id"] == "r-1" and "model" not in early
    assert later["request_id"] == "r-1" and later["model"] == "own value wins"
    assert later["api_key"] == REDACTED
    assert request["model"] == "codestral" and request["request_id"] == "r-1"
    assert "request_id" not in after and "model" not in after


def _lines_per_loop_turn() -> Any:
    """JSON logging as a server's worker sets it up; its request-line writer."""
    configure_logging("gateway", "info", "json")
    write_request_lines_per_loop_turn()
    pipeline = logging_module._json_pipeline
    assert pipeline is not None and isinstance(pipeline.write, logging_module._LinesPerLoopTurn)
    return pipeline.write


@pytest.mark.usefixtures("restore_logging")
def test_a_servers_request_lines_leave_once_per_loop_turn_in_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    batched = _lines_per_loop_turn()
    write_request_lines_per_loop_turn()  # once is enough: a second call changes nothing
    assert logging_module._json_pipeline is not None
    assert logging_module._json_pipeline.write is batched
    writes: list[str] = []
    target = batched._write
    batched._write = lambda text: (writes.append(text), target(text))[1]
    logger = get_logger("test.request_log.batched")

    async def serve_three() -> list[str]:
        for status in (200, 201, 202):
            log_request(
                logger, {"method": "POST", "route": "/v2/code/completions", "status": status}
            )
        during = capsys.readouterr().err  # nothing yet: the turn is not over
        await asyncio.sleep(0)
        return [during, *writes]

    during, *calls = asyncio.run(serve_three())
    assert during == "" and len(calls) == 1
    assert [line["status"] for line in _lines(capsys)] == [200, 201, 202]

    # Outside a running loop a line is written at once.
    log_request(logger, {"method": "GET", "route": "/metrics", "status": 200})
    assert [line["route"] for line in _lines(capsys)] == ["/metrics"]


@pytest.mark.usefixtures("restore_logging")
def test_request_lines_waiting_for_their_turn_are_written_by_flush_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flush = _lines_per_loop_turn().flush

    async def log_and_flush() -> tuple[list[Any], list[Any]]:
        log_request(get_logger("test.request_log.exit"), {"method": "POST", "status": 200})
        flush()  # what the exit hook does for lines still waiting
        flushed = _lines(capsys)
        await asyncio.sleep(0)  # the turn's own flush finds nothing left
        return flushed, _lines(capsys)

    flushed, after_turn = asyncio.run(log_and_flush())
    assert [line["status"] for line in flushed] == [200] and after_turn == []
