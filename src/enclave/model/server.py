"""llama.cpp's OpenAI-compatible HTTP server, in process, through the ``xllamacpp`` wheel.

``xllamacpp.Server(params)`` loads the model and starts llama.cpp's own server (the one behind
``llama-server``) on background threads; it returns once the model is loaded and the socket
listens, and stops when the object is freed. It serves ``/health``, ``/v1/models``,
``/v1/completions``, ``/v1/chat/completions`` (SSE with ``stream: true``) and ``/infill``, and
checks the API key itself (``401`` ``authentication_error`` for a wrong or missing key;
``/health`` stays open).

Hardening over llama.cpp's defaults: loopback unless told otherwise, API key required, offline
(no model downloads, no Hugging Face token), no web UI, no ``/slots`` (it shows prompts), no
settings changes through ``/props``, no CORS grant for browsers, a bounded
prompt cache and a default ``max_tokens``. llama.cpp writes its own plain-text (not JSON) log
lines to stderr; only warnings and errors unless the log level is ``debug``.
"""

from __future__ import annotations

import faulthandler
import ipaddress
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from enclave.common.logging import get_logger
from enclave.common.net import http_ok, wait_until

if TYPE_CHECKING:
    from enclave.config import ModelSettings

log = get_logger(__name__)

DEFAULT_N_PREDICT = 1024
"""Tokens generated for a request that gives no ``max_tokens`` (llama.cpp's default is "until
the context is full", which a small model reaches by rambling). An explicit ``max_tokens`` wins,
larger or not, so callers such as the gateway should always send one."""

DEFAULT_CACHE_RAM_MIB = 512
"""Host memory for llama.cpp's prompt cache (its default, 8 GiB, is far too much here)."""

_DRAIN_POLL_S = 0.05
_STOP_WATCHDOG_S = 30.0  # after the drain, freeing the server takes milliseconds

# llama.cpp's log thresholds: 1 error, 2 warning, 3 info (a few lines per request), 4 debug.
_LLAMA_VERBOSITY = {"debug": 3, "info": 2, "warning": 2, "error": 1}


class ModelServerError(RuntimeError):
    """The model server could not start; the message says why and what to do."""


class EmbeddedModelServer:
    """One llama.cpp server serving one GGUF under one model name, guarded by an API key.

    >>> server = EmbeddedModelServer(gguf, api_key=key)   # doctest: +SKIP
    >>> base_url = server.start()    # "http://127.0.0.1:<port>/v1"
    >>> server.stop()

    ``port=0`` lets the OS pick a free port at bind time (no race with other processes); the
    chosen port is in :attr:`port` and :attr:`base_url` after :meth:`start`.
    """

    def __init__(
        self,
        gguf: Path,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        served_name: str = "smollm2",
        threads: int = 1,
        ctx_size: int = 4096,
        parallel: int = 1,
        n_predict: int = DEFAULT_N_PREDICT,
        cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB,
        log_level: str = "info",
    ) -> None:
        if not api_key:
            raise ValueError("the embedded model needs an API key (see enclave.model.api_key)")
        if not served_name:
            raise ValueError("served_name must not be empty")
        if threads < 1 or ctx_size < 1 or parallel < 1:
            raise ValueError("threads, ctx_size and parallel must be at least 1")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 0-65535")
        self.gguf = Path(gguf)
        self.host = host
        self.requested_port = port
        self.served_name = served_name
        self.threads = threads
        self.ctx_size = ctx_size
        self.parallel = parallel
        self.n_predict = n_predict
        self.cache_ram_mib = cache_ram_mib
        self.log_level = log_level
        self._api_key = api_key
        self._server: Any = None  # xllamacpp.Server while running
        self._port: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: ModelSettings, *, gguf: Path, api_key: str, log_level: str = "info"
    ) -> EmbeddedModelServer:
        """Build from ``[model]`` settings; ``gguf`` is resolved by the caller (bundled default)."""
        return cls(
            gguf,
            api_key=api_key,
            host=settings.host,
            port=settings.port,
            served_name=settings.served_name,
            threads=settings.threads,
            ctx_size=settings.ctx_size,
            parallel=settings.parallel,
            log_level=log_level,
        )

    def __repr__(self) -> str:  # never shows the API key
        return (
            f"EmbeddedModelServer(gguf={str(self.gguf)!r}, host={self.host!r}, "
            f"port={self._port or self.requested_port}, served_name={self.served_name!r})"
        )

    # Lifecycle -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the model server is not started")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://host:port`` as a client connects to it (wildcard binds -> loopback)."""
        return f"http://{_connect_host(self.host)}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://host:port/v1``."""
        return f"{self.root_url}/v1"

    def start(self) -> str:
        """Load the model, start serving and return :attr:`base_url`. Blocks while the model
        loads (about 0.5 s for the bundled SmolLM2, milliseconds for the tiny test model)."""
        with self._lock:
            if self._server is not None:
                return self.base_url
            _check_gguf(self.gguf)
            import xllamacpp  # deferred: loading llama.cpp costs ~100 ms and most callers skip it

            params = self._params(xllamacpp)
            log.info(
                "model_starting",
                gguf=str(self.gguf),
                host=self.host,
                port=self.requested_port,
                served_name=self.served_name,
                threads=self.threads,
                ctx_size=self.ctx_size,
                parallel=self.parallel,
            )
            started = time.monotonic()
            try:
                server = xllamacpp.Server(params)
            except RuntimeError as exc:
                raise ModelServerError(self._explain_failure()) from exc
            # xllamacpp returns before llama.cpp's task loop runs, and freeing the server in that
            # window loses the stop request: the loop never ends and stop() hangs. The metrics
            # task is answered by that loop, so once it returns the loop runs.
            _in_flight(server)
            self._server = server
            self._port = _port_of(str(server.listening_address), self.requested_port)
            log.info(
                "model_started",
                url=self.base_url,
                served_name=self.served_name,
                load_ms=round((time.monotonic() - started) * 1000, 1),
            )
            return self.base_url

    def stop(self) -> None:
        """Stop serving and free the model. Idempotent.

        Requests in flight are finished first: llama.cpp's stop ends its task loop, and a
        request still waiting for that loop would then wait forever, and ``stop`` with it (its
        HTTP threads are joined while Python's GIL is held). Each request is bounded by
        ``max_tokens`` and the context size, so draining ends; stop callers first (the
        gateway) so that no new request arrives in the moment between the check and the stop.
        """
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            url = self.base_url
            busy = _in_flight(server)
            if busy:
                log.info("model_draining", url=url, requests=busy)
                while _in_flight(server):
                    time.sleep(_DRAIN_POLL_S)
            # xllamacpp stops the task loop and the HTTP server and joins their threads when
            # the object is freed; this was the only reference, so ``del`` frees it here.
            del server
            log.info("model_stopped", url=url)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Poll ``/health`` until it answers 200 (true) or ``timeout`` seconds pass (false)."""
        if self._server is None:
            return False
        health = f"{self.root_url}/health"
        return wait_until(lambda: http_ok(health, timeout=2.0), timeout=timeout, interval=0.05)

    def run_forever(self) -> None:
        """Start (if needed), serve until SIGINT or SIGTERM, then stop cleanly.

        The first signal drains in-flight requests and stops; a second one during the drain
        exits at once (like ``llama-server``). Must run on the main thread (Python delivers
        signals there); meant for a process that exits afterwards.
        """
        received: list[int] = []
        stop_requested = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            received.append(signum)
            if stop_requested.is_set():
                log.warning("model_stop_forced", signal=signal.Signals(signum).name)
                os._exit(1)  # in-flight requests are cut off; nothing else is left to do
            stop_requested.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            # A timed wait, not a bare wait(), so the loop wakes up to run the signal handler.
            while not stop_requested.wait(0.5):
                pass
            log.info("model_stopping", signal=signal.Signals(received[0]).name)
            # Last resort for the one race stop() cannot rule out (a request that arrives after
            # the drain): freeing the server would then block forever with the GIL held, so
            # only a watchdog thread outside Python can still end the process.
            faulthandler.dump_traceback_later(_STOP_WATCHDOG_S, exit=True)
            self.stop()
            faulthandler.cancel_dump_traceback_later()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def __enter__(self) -> EmbeddedModelServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Internals -------------------------------------------------------------------------------
    def _params(self, xllamacpp: Any) -> Any:
        p = xllamacpp.CommonParams()
        p.model.path = str(self.gguf)
        p.hostnames = [self.host]
        p.port = self.requested_port  # 0: llama.cpp binds a free port, listening_address says it
        p.api_keys = [self._api_key]
        p.model_alias = [self.served_name]  # a plain str would be split into characters
        p.cpuparams.n_threads = self.threads
        p.cpuparams_batch.n_threads = self.threads  # prompt processing uses the batch pool
        # n_ctx is shared by the slots; give every parallel request the full window.
        p.n_ctx = self.ctx_size * self.parallel
        p.n_parallel = self.parallel
        p.n_predict = self.n_predict
        p.cache_ram_mib = self.cache_ram_mib
        # Nothing may reach the network: no downloads, no remote tools, no web UI.
        p.offline = True
        p.hf_token = ""
        p.ui = False
        p.ui_mcp_proxy = False
        # /slots shows other users' prompts and POST /props changes settings: off. /metrics
        # (counters only, behind the API key) stays on: stop() reads in-flight requests there.
        p.endpoint_slots = False
        p.endpoint_metrics = True
        p.endpoint_props = False
        # An empty origin answers CORS checks with an empty Allow-Origin: browsers refuse it.
        p.cors_origins = ""
        # fit_params probes device memory by loading the model twice; pointless on CPU.
        p.fit_params = False
        p.verbosity = _LLAMA_VERBOSITY.get(self.log_level, 2)
        return p

    def _explain_failure(self) -> str:
        hint = "see llama.cpp's log lines above"
        if self.requested_port and _port_in_use(self.host, self.requested_port):
            hint = f"port {self.requested_port} on {self.host} is already in use; pick another"
        return (
            f"the embedded model could not start serving {self.gguf} on "
            f"{self.host}:{self.requested_port}: {hint}. Any llama.cpp-compatible GGUF works; "
            "check the file is complete and that there is enough memory."
        )


def _in_flight(server: Any) -> int:
    """Requests llama.cpp is processing or has queued, from its Prometheus metrics.

    The metrics task runs on llama.cpp's task loop, after every task queued before it."""
    text = str(server.handle_metrics())
    count = 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("llamacpp:requests_processing", "llamacpp:requests_deferred"):
            count += int(float(value))
    return count


def _check_gguf(path: Path) -> None:
    """Fail with a clear message before llama.cpp does (its errors are generic)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file {path} does not exist; set ENCLAVE_MODEL__GGUF (or `enclave model "
            "--gguf`) to a model file, or leave it unset for the bundled SmolLM2"
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelServerError(f"{path} is not a GGUF file (it does not start with 'GGUF')")


def _port_of(listening_address: str, requested: int) -> int:
    port = urlsplit(listening_address).port
    if port:
        return port
    if requested:
        return requested
    raise ModelServerError(f"cannot tell which port llama.cpp bound ({listening_address!r})")


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name such as localhost
    if address.is_unspecified:
        return "[::1]" if address.version == 6 else "127.0.0.1"
    return f"[{host}]" if address.version == 6 else host
