"""JSON logs, one object per line, with secrets redacted by one shared filter.

Every log line has ``ts``, ``level``, ``event`` and ``component``; request lines add
``request_id``, ``method``, ``route``, ``status`` and ``duration_ms``. The redaction filter runs
last on every line, whatever logged it, so an API key or token that slips into an event never
reaches the output. The request line itself takes a shorter way to the same output
(:func:`log_request`).
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import functools
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

# Keys whose values are secrets whatever they hold.
_SECRET_KEYS = re.compile(
    r"(api[_-]?key|token|secret|password|authorization|private[_-]?token|cookie|credential)",
    re.IGNORECASE,
)
# Values that look like secrets wherever they appear: JWTs, bearer headers, our PATs and keys.
_SECRET_VALUES = re.compile(
    r"(eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"  # JWT
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"  # Authorization: Bearer ...
    r"|encl(?:pat|key)-[A-Za-z0-9_-]{8,}"  # Enclave PATs and model API keys
    r"|glpat-[A-Za-z0-9_-]{8,}"  # PATs in GitLab's format (the ones Enclave issues now)
    r"|sk-[A-Za-z0-9_-]{16,})"  # OpenAI-style keys
)
REDACTED = "[REDACTED]"


# Every alternative of _SECRET_VALUES starts with eyJ, encl, glpat-, sk- or bearer (any case):
# a text holding none of them cannot match, and that test is a few substring checks instead of
# a regex scan. Most log values (routes, ids, statuses) take this way out.


def _may_hold_secret(text: str) -> bool:
    return (
        "eyJ" in text
        or "encl" in text
        or "glpat-" in text
        or "sk-" in text
        or "bearer" in text.lower()
    )


def redact_text(text: str) -> str:
    """Replace anything in ``text`` that looks like a token or key."""
    if not _may_hold_secret(text):
        return text
    return _SECRET_VALUES.sub(REDACTED, text)


# Log keys are a small set named in code: remember the verdict per key (bounded, in case
# a logged mapping brings keys from elsewhere).
@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return _SECRET_KEYS.search(key) is not None


def is_secret_key(key: str) -> bool:
    """True when a field named ``key`` holds a secret (``max_tokens`` style counts do not)."""
    return _secret_key(key) and not key.lower().endswith("tokens")


_PLAIN: frozenset[type] = frozenset({int, float, bool, type(None)})


def redact(value: Any, key: str | None = None) -> Any:
    """Redact a log value: secret keys lose their values, strings lose secret-looking parts."""
    if (
        key is not None
        and _secret_key(key)
        and value not in (None, "", [], {})
        # ``token_lifetime_s`` style numbers are not secrets.
        and not isinstance(value, bool | int | float)
    ):
        return REDACTED
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind in _PLAIN:  # most values: no ABC isinstance checks for them
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _redact_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = redact(event_dict[key], key)
    return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


class _LinesPerLoopTurn:
    """Request lines gathered during one turn of the event loop, written at its end in one
    call: under load a turn finishes several requests, and a ``write(2)`` per line cost more
    than building it. Outside a running loop (or from another thread while lines wait) a
    line is written at once. The wait is one loop turn; lines still waiting at exit are
    written then."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._lines: list[str] = []
        self._thread = 0  # the loop's thread while lines wait

    def __call__(self, line: str) -> None:
        lines = self._lines
        if lines:
            if threading.get_ident() == self._thread:
                lines.append(line)
            else:
                self._write(line)
            return
        try:
            # Once per turn, not per line: asyncio checks the process id on every call.
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(line)
            return
        self._thread = threading.get_ident()
        lines.append(line)
        loop.call_soon(self.flush)

    def flush(self) -> None:
        lines = self._lines
        if lines:
            self._lines = []
            self._write("\n".join(lines))


@dataclass(frozen=True, slots=True)
class _JsonPipeline:
    """What :func:`configure_logging` installed for JSON lines, for :func:`log_request`."""

    processors: list[Any]  # structlog's list, as installed (tests swap its contents)
    renderer: Any
    write: Callable[[str], None]  # one line or several, without the last newline
    info_enabled: bool

    def installed(self) -> bool:
        """Whether structlog still runs this pipeline (``capture_logs`` swaps it in tests)."""
        processors = structlog.get_config()["processors"]
        return processors is self.processors and processors[-1] is self.renderer


_json_pipeline: _JsonPipeline | None = None


class _UtcStamp:
    """``ts`` as TimeStamper(fmt="iso", utc=True) writes it; the date part formatted once a
    second (a datetime per line cost more than the rest of the request line)."""

    def __init__(self) -> None:
        # (second, its formatted date and time), replaced as one object: safe from threads.
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        cached = self._cached
        if cached[0] != second:
            cached = self._cached = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
            )
        micro = int((now - second) * 1_000_000)
        return f"{cached[1]}.{micro:06d}Z" if micro else f"{cached[1]}Z"


_utc_stamp = _UtcStamp()


# The fields of the request being served (its id, then feature, model, token counts as the
# endpoint learns them): one dict per request, set once by the request middleware and added
# to in place, so an endpoint's annotation costs a dict update instead of a context variable
# per field. Every line logged while the request runs carries them (merge_request_fields).
REQUEST_FIELDS: ContextVar[dict[str, Any] | None] = ContextVar(
    "enclave_request_fields", default=None
)


def merge_request_fields(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add the current request's fields to a line (the line's own values win)."""
    fields = REQUEST_FIELDS.get()
    if fields:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict


# structlog's context variables by name ("structlog_component", ...); its merge_contextvars
# walks every context variable of the context instead (private: read only when present).
_STRUCTLOG_VARS: Mapping[str, ContextVar[Any]] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)
_STRUCTLOG_PREFIX_LEN = len(structlog.contextvars.STRUCTLOG_KEY_PREFIX)


def _merge_structlog_context(fields: dict[str, Any]) -> None:
    """structlog's ``merge_contextvars``; with one variable ever bound (``component``, the
    usual case) read directly, since then the order of keys cannot differ."""
    context_vars = _STRUCTLOG_VARS
    if context_vars is None or len(context_vars) != 1:
        structlog.contextvars.merge_contextvars(None, "info", fields)
        return
    for name, var in context_vars.items():
        value = var.get(Ellipsis)
        if value is not Ellipsis:
            fields.setdefault(name[_STRUCTLOG_PREFIX_LEN:], value)


def log_request(logger: Any, fields: dict[str, Any]) -> None:
    """Write a request's ``request`` line: the line the structlog pipeline writes, built once.

    The access log is one line per request, and structlog's general path (bound-logger
    proxy, level wrapper, five processors) cost more than the rest of it. With the JSON
    pipeline of :func:`configure_logging` installed, this builds the same fields in the same
    order (``fields``, ``event``, the context variables, ``level``, ``ts``), redacts them with
    the shared filter and renders them with the same renderer; otherwise (console format,
    tests capturing logs, not configured) it goes through ``logger`` as any other line.
    ``fields`` is taken over (filled in, then dropped).
    """
    pipeline = _json_pipeline
    if pipeline is None or not pipeline.installed():
        logger.info("request", **fields)
        return
    if not pipeline.info_enabled:
        return
    fields["event"] = "request"
    _merge_structlog_context(fields)
    merge_request_fields(None, "info", fields)
    for key, value in fields.items():
        kind = type(value)
        if kind is str:
            # What redact() does to a string, without its two calls per field.
            if value and _secret_key(key):
                fields[key] = REDACTED
            elif _may_hold_secret(value):
                fields[key] = _SECRET_VALUES.sub(REDACTED, value)
        elif kind not in _PLAIN:  # numbers and None never change (status, duration_ms)
            fields[key] = redact(value, key)
    # Written here, not received: nothing to redact in them.
    fields["level"] = "info"
    fields["ts"] = _utc_stamp()
    pipeline.write(pipeline.renderer(None, "info", fields))


def write_request_lines_per_loop_turn() -> None:
    """Make :func:`log_request` gather the lines of one event-loop turn into one write.

    For the servers' worker processes (their app factories call it after
    :func:`configure_logging`); code that reads the log right after a request in the same
    loop turn (tests with an in-process client) keeps the line-by-line writes.
    """
    global _json_pipeline
    pipeline = _json_pipeline
    if pipeline is None or isinstance(pipeline.write, _LinesPerLoopTurn):
        return
    batched = _LinesPerLoopTurn(pipeline.write)
    atexit.register(batched.flush)
    _json_pipeline = dataclasses.replace(pipeline, write=batched)


def configure_logging(component: str, level: str = "info", fmt: str = "json") -> None:
    """Configure structlog and the standard library for one process."""
    global _json_pipeline
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        merge_request_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors = [*shared, _redact_processor, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # WriteLogger writes line and newline in one call (one write(2) per line; print()
        # made two, and the request line is one per request).
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _json_pipeline = (
        _JsonPipeline(
            processors=structlog.get_config()["processors"],
            renderer=renderer,
            # A WriteLogger on the same file: the same per-file lock as structlog's lines.
            write=structlog.WriteLogger(file=sys.stderr).msg,
            info_enabled=numeric <= logging.INFO,
        )
        if fmt == "json"
        else None
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(component=component)

    # Route the standard library (uvicorn, alembic, aiohttp) through the same JSON pipeline.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, _add_component(component)],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _redact_processor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # uvicorn's access log is replaced by our own request log line.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def _add_component(component: str) -> Any:
    def processor(
        logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("component", component)
        return event_dict

    return processor


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
