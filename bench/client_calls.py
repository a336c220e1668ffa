"""CPU per outbound call: the lean client (``enclave.common.http1``) against aiohttp.

    python bench/client_calls.py [--calls 8000] [--rounds 3]

Starts ``upstream.py`` on a loopback port, then makes ``--calls`` sequential POSTs of a small
completion on one pooled keep-alive connection with each client, alternating, ``--rounds``
times; prints this process's CPU time per call (user + system: the socket calls count) for
each client and the ratio. Both clients send the same body and headers and read the whole
answer. Loopback only, bounded, stops by itself.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Final

import aiohttp
import orjson
import uvloop

from enclave.common.http1 import Http1Client, Timeouts

BENCH_DIR: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from procs import free_port  # noqa: E402

BODY: Final = orjson.dumps({"model": "m", "prompt": "def add(a, b):\n    ", "max_tokens": 16})
HEADERS: Final = {"Content-Type": "application/json", "Authorization": "Bearer " + "k" * 32}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def lean(url: str, calls: int) -> float:
    timeouts = Timeouts(connect=5, total=30)
    async with Http1Client(headers={"User-Agent": "bench"}) as client:
        for _ in range(100):  # warm: connection open, caches filled
            response = await client.post(url, body=BODY, headers=HEADERS, timeouts=timeouts)
            await response.read()
        started = cpu_s()
        for _ in range(calls):
            response = await client.post(url, body=BODY, headers=HEADERS, timeouts=timeouts)
            await response.read()
        return (cpu_s() - started) / calls * 1e6


async def with_aiohttp(url: str, calls: int) -> float:
    # Tuned as the gateway had it: no cookie jar, no proxies, per-call deadline.
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
    async with aiohttp.ClientSession(
        headers={"User-Agent": "bench"}, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    ) as session:

        async def call() -> None:
            response = await session.post(
                url, data=BODY, headers=HEADERS, timeout=timeout, allow_redirects=False
            )
            await response.read()
            response.release()

        for _ in range(100):
            await call()
        started = cpu_s()
        for _ in range(calls):
            await call()
        return (cpu_s() - started) / calls * 1e6


def wait_up(port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per client")
    args = parser.parse_args(argv)
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_up(port)
        url = f"http://127.0.0.1:{port}/v1/completions"
        figures: dict[str, list[float]] = {"enclave.common.http1": [], "aiohttp": []}
        for round_number in range(1, args.rounds + 1):
            figures["enclave.common.http1"].append(uvloop.run(lean(url, args.calls)))
            figures["aiohttp"].append(uvloop.run(with_aiohttp(url, args.calls)))
            print(
                f"round {round_number}/{args.rounds}: "
                + ", ".join(f"{name} {values[-1]:.0f} µs" for name, values in figures.items()),
                flush=True,
            )
    finally:
        upstream.terminate()
        upstream.wait(10)
    best = {name: min(values) for name, values in figures.items()}
    print(f"\nCPU per call (best of {args.rounds}, {args.calls} sequential POSTs, one connection):")
    for name, value in best.items():
        print(f"  {name:<22} {value:6.1f} µs")
    print(f"  ratio aiohttp / lean   {best['aiohttp'] / best['enclave.common.http1']:6.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
