"""Child processes of the benchmark and what they cost, read from ``/proc``.

Every server is started in its own session (process group), so stopping it stops its workers
too; :class:`Processes` stops everything it started when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ")" is plain.
    return raw[raw.rindex(")") + 2 :].split()


def machine_cpu_seconds() -> float:
    """CPU time all cores spent in processes since boot (user, nice, system).

    Interrupt time is left out: with IRQ time accounting the loopback traffic of the benchmark
    itself shows up there, not in any process.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (values[0] + values[1] + values[2]) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU time of this process, its live descendants and its reaped children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return cpu_seconds(process_tree(os.getpid())) + children.ru_utime + children.ru_stime


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all cores busy during ``seconds`` (from /proc/stat), 0 to 1."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    total_1, idle_1 = sample()
    time.sleep(seconds)
    total_2, idle_2 = sample()
    total = total_2 - total_1
    return 1 - (idle_2 - idle_1) / total if total > 0 else 0.0


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat_fields(pid) is None:
            continue
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids`` (utime + stime in /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident set size of ``pids``, summed (shared pages count once per process)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    return total


def pss_bytes(pids: Sequence[int]) -> int:
    """Proportional set size of ``pids``, summed: shared pages split between their users."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total


@dataclass
class RssSampler:
    """Samples RSS and PSS of a process tree in a thread; ``peak``/``peak_pss``: largest."""

    root: int
    others: Sequence[int] = ()  # further roots (the gateway behind the instance)
    interval_s: float = 0.25
    peak: int = 0
    peak_pss: int = 0
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        pids = process_tree(self.root)
        for other in self.others:
            pids += process_tree(other)
        while not self._stop.wait(self.interval_s):
            value = rss_bytes(pids)
            self.samples.append(value)
            self.peak = max(self.peak, value)
            self.peak_pss = max(self.peak_pss, pss_bytes(pids))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


@dataclass
class Server:
    """A started server process (group leader) and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Starts servers in their own process groups and stops them all at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[Server] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Server:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        server = Server(name, process, log_path)
        self.servers.append(server)
        return server

    def stop(self, server: Server, timeout_s: float = 8.0) -> None:
        """SIGTERM the server's process group, SIGKILL it if it lingers."""
        if server in self.servers:
            self.servers.remove(server)
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=timeout_s)
        # Workers may outlive their parent: whatever is left of the group goes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=2)

    def stop_named(self, name: str) -> None:
        for server in [s for s in self.servers if s.name == name]:
            self.stop(server)

    def stop_all(self) -> None:
        for server in list(reversed(self.servers)):
            self.stop(server, timeout_s=4.0)


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET (any status; raises OSError when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (loopback)
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def http_post(
    url: str, body: bytes, headers: Mapping[str, str], timeout_s: float = 10.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_http(server: Server, url: str, timeout_s: float) -> None:
    """Wait until ``url`` answers 200, or raise RuntimeError (with the server's log tail)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited early:\n{server.log_tail()}")
        try:
            status, _ = http_get(url, timeout_s=1.0)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} did not answer {url} within {timeout_s:g} s:\n{server.log_tail()}"
    )
