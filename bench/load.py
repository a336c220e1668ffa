"""Closed-loop HTTP load: wrk (compiled, preferred) or the bundled asyncio fallback.

Both run as a separate process, keep ``connections`` keep-alive connections busy for
``duration_s`` with one fixed POST, and report the same JSON summary (see ``wrk/post.lua``),
parsed into :class:`LoadResult`. While the load runs, the CPU time and peak RSS of the server's
process tree are measured from ``/proc``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from procs import (
    RssSampler,
    cpu_seconds,
    machine_cpu_seconds,
    own_cpu_seconds,
    process_tree,
)

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk" / "post.lua"
LOADGEN_SCRIPT = BENCH_DIR / "loadgen.py"
MARKER = "WRK_JSON "


@dataclass
class LoadResult:
    """One closed-loop run at a fixed number of connections."""

    connections: int
    duration_s: float
    requests: int
    rps: float
    errors: dict[str, int]
    latency_ms: dict[str, float]  # percentile ("50", "99", "99.9", ...) → milliseconds
    mean_ms: float
    max_ms: float
    server_cpu_s: float | None = None
    # The first server's own process tree only (for the instance target: the instance without
    # its gateway), so each role's share of the path shows.
    main_cpu_s: float | None = None
    server_peak_rss: int | None = None
    server_peak_pss: int | None = None
    # CPU used by processes outside this benchmark during the run, as a share of all cores.
    foreign_cpu_share: float | None = None
    tool: str = "wrk"

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def p(self, q: float) -> float:
        return self.latency_ms[f"{q:g}"]

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s * 1e6 / self.requests

    @property
    def main_cpu_us_per_request(self) -> float | None:
        if self.main_cpu_s is None or not self.requests:
            return None
        return self.main_cpu_s * 1e6 / self.requests

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_us_per_request"] = self.cpu_us_per_request
        data["main_cpu_us_per_request"] = self.main_cpu_us_per_request
        return data


@dataclass
class Request:
    """What the load generator sends: one URL, one body, fixed headers."""

    url: str
    body: bytes
    headers: Mapping[str, str]

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        body_path = directory / f"{name}.body.json"
        headers_path = directory / f"{name}.headers.txt"
        body_path.write_bytes(self.body)
        headers_path.write_text("".join(f"{k}: {v}\n" for k, v in self.headers.items()))
        return body_path, headers_path


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def ensure_wrk(log: Any) -> bool:
    """wrk on PATH, installing Debian's package when missing and we are root."""
    if have_wrk():
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log("wrk is missing and cannot be installed here (not root or no apt-get)")
        return False
    log("installing wrk (apt-get install -y wrk) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    # The package lists may be missing on a fresh machine: update once, then try again.
    for argv in (install, ["apt-get", "update", "-q"], install):
        try:
            subprocess.run(argv, env=env, check=False, capture_output=True, timeout=240)
        except subprocess.TimeoutExpired:
            log(f"{' '.join(argv)} timed out")
        if have_wrk():
            return True
    return False


def wrk_version() -> str:
    if not have_wrk():
        return "not installed"
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0].split(" [", 1)[0] if text else "wrk ?"


def _parse(output: str, connections: int, tool: str) -> LoadResult:
    line = next((ln for ln in output.splitlines() if ln.startswith(MARKER)), None)
    if line is None:
        raise RuntimeError(f"{tool} printed no summary:\n{output[-2000:]}")
    data = orjson.loads(line[len(MARKER) :])
    duration_s = data["duration_us"] / 1e6
    latency = data["latency_us"]
    return LoadResult(
        connections=connections,
        duration_s=duration_s,
        requests=int(data["requests"]),
        rps=data["requests"] / duration_s if duration_s else 0.0,
        errors={k: int(v) for k, v in data["errors"].items()},
        latency_ms={f"{q:g}": v / 1000 for q, v in latency["percentiles"]},
        mean_ms=latency["mean"] / 1000,
        max_ms=latency["max"] / 1000,
        tool=tool,
    )


def run_load(
    request: Request,
    body_path: Path,
    headers_path: Path,
    connections: int,
    duration_s: float,
    server_pid: int | None = None,
    use_wrk: bool = True,
    also_pids: Sequence[int] = (),
) -> LoadResult:
    """Run one load point; measure the server tree's CPU time and peak RSS meanwhile.

    ``also_pids``: further servers on the path (the gateway behind the instance) whose process
    trees count in the CPU time and the memory too.
    """
    seconds = max(1, round(duration_s))
    if use_wrk:
        argv = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(WRK_SCRIPT),
            request.url,
        ]
        tool = "wrk"
    else:
        argv = [
            sys.executable,
            str(LOADGEN_SCRIPT),
            "--url",
            request.url,
            "--connections",
            str(connections),
            "--duration",
            str(seconds),
        ]
        tool = "loadgen.py"
    env = {**os.environ, "WRK_BODY_FILE": str(body_path), "WRK_HEADERS_FILE": str(headers_path)}
    main_pids = process_tree(server_pid) if server_pid is not None else []
    pids = list(main_pids)
    for pid in also_pids:
        pids += process_tree(pid)
    cpu_before, main_before = cpu_seconds(pids), cpu_seconds(main_pids)
    machine_before, own_before, started = machine_cpu_seconds(), own_cpu_seconds(), time.monotonic()
    sampled = RssSampler(server_pid, also_pids) if server_pid is not None else _NoSampler()
    with sampled as sampler:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    cpu_after, main_after = cpu_seconds(pids), cpu_seconds(main_pids)
    own = own_cpu_seconds() - own_before
    machine = machine_cpu_seconds() - machine_before
    wall = time.monotonic() - started
    result = _parse(done.stdout + done.stderr, connections, tool)
    result.foreign_cpu_share = max(0.0, machine - own) / (wall * (os.cpu_count() or 1))
    if server_pid is not None:
        result.server_cpu_s = cpu_after - cpu_before
        result.main_cpu_s = main_after - main_before
        result.server_peak_rss = sampler.peak or None
        result.server_peak_pss = sampler.peak_pss or None
    return result


class _NoSampler:
    peak = 0
    peak_pss = 0

    def __enter__(self) -> _NoSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
