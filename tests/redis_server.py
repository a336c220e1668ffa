"""A throwaway ``redis-server`` for the tests (Debian package ``redis-server``).

Started on a free 127.0.0.1 port with persistence off (``--save '' --appendonly no``: a test
Redis need not survive anything) and its working directory in a temporary folder; stopped at
the end of the session. ``ENCLAVE_TEST_REDIS=1`` makes a missing binary fail the run (CI must
not skip the shared-state tests silently); otherwise they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from enclave.common.net import free_port

ENV_SWITCH = "ENCLAVE_TEST_REDIS"
SWITCH = os.environ.get(ENV_SWITCH, "").strip().lower()


def redis_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def redis_wanted() -> tuple[bool, str]:
    """Whether to run the Redis variants, and why not when they are skipped."""
    if SWITCH in ("0", "false", "no", "off"):
        return False, f"{ENV_SWITCH}={SWITCH}"
    if redis_binary() is not None or SWITCH in ("1", "true", "yes", "on"):
        return True, ""
    return False, "redis-server not found; install the Debian package 'redis-server'"


@dataclass
class RedisServer:
    """A running redis-server; ``pause``/``resume`` freeze it (SIGSTOP) to test timeouts."""

    port: int
    process: subprocess.Popen[bytes]
    root: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """One command over a raw socket (RESP), for test set-up: FLUSHALL, DBSIZE."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            parts.append(f"${len(arg.encode())}\r\n{arg}\r\n".encode())
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"".join(parts))
            return sock.recv(65536)

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_redis(binary: str | None = None) -> RedisServer:
    binary = binary or redis_binary()
    if binary is None:
        raise RuntimeError(
            f"{ENV_SWITCH}=1 but redis-server was not found; install the Debian package "
            "'redis-server'"
        )
    root = Path(tempfile.mkdtemp(prefix="enclave-redis-"))
    port = free_port()
    options = {
        "--port": str(port),
        "--bind": "127.0.0.1",
        "--save": "",
        "--appendonly": "no",
        "--dir": str(root),
        "--logfile": str(root / "redis.log"),
        "--protected-mode": "yes",
    }
    process = subprocess.Popen(
        [binary, *(part for pair in options.items() for part in pair)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, process, root)
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError):
            if server.command("PING").startswith(b"+PONG"):
                return server
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            log = (root / "redis.log").read_text() if (root / "redis.log").exists() else ""
            raise RuntimeError(f"redis-server did not start on port {port}:\n{log}")
        time.sleep(0.05)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
