"""Run ``enclave <args>`` with cProfile switched on and off by signals.

    python bench/profile_gateway.py OUT.pstats gateway --port 5052
    kill -USR1 <pid>   # start profiling (and timing garbage collections)
    kill -USR2 <pid>   # stop; write OUT.pstats and OUT.gc.json

Used by ``run.py --profile`` (on by default): the 1-worker gateway is profiled under c=16 load
and :func:`summarise` turns the statistics into ``results/profile.txt``. cProfile slows the
gateway down (every Python call is counted), so read shares, not absolute times.
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import pstats
import signal
import sys
import time
from pathlib import Path
from typing import Any

Func = tuple[str, int, str]


def component(file: str) -> str:
    """Which part of the stack a profiled function belongs to, from its file."""
    if "/site-packages/" in file:
        rest = file.split("/site-packages/", 1)[1]
        name = rest.split("/", 1)[0]
        return name.removesuffix(".py").split(".", 1)[0]
    if "/src/enclave/" in file:
        return "enclave/" + file.split("/src/enclave/", 1)[1]
    if "/lib/python3" in file:
        rest = file.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return "stdlib " + rest.split("/", 1)[0].removesuffix(".py")
    return file


def by_component(raw: dict[Func, Any]) -> dict[str, float]:
    """Own time per component; a C function's time goes to the components that called it."""
    totals: dict[str, float] = {}
    for (file, _, _), (_, _, own, _, callers) in raw.items():
        if file != "~":
            name = component(file)
            totals[name] = totals.get(name, 0.0) + own
            continue
        edges = [(caller, edge[2]) for caller, edge in callers.items()]
        attributed = sum(t for _, t in edges)
        for caller, edge_own in edges:
            name = component(caller[0]) if caller[0] != "~" else "C (other)"
            totals[name] = totals.get(name, 0.0) + edge_own
        if own > attributed:  # no caller recorded (e.g. called before profiling started)
            totals["C (other)"] = totals.get("C (other)", 0.0) + own - attributed
    return totals


def summarise(
    stats_path: Path, requests: int, limit: int = 40, what: str = "Enclave gateway"
) -> tuple[str, dict[str, Any]]:
    """A text report and the numbers for results.json: components, top functions, GC."""
    stats = pstats.Stats(str(stats_path))
    raw: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    per_request = max(requests, 1)
    components = sorted(by_component(raw).items(), key=lambda kv: kv[1], reverse=True)
    buffer = io.StringIO()
    buffer.write(
        f"cProfile of the 1-worker {what} under c=16 load: {requests} requests,\n"
        f"{total:.2f} s of profiled time (profiling inflates every Python call).\n"
        f"Per request: {total / per_request * 1e6:.0f} µs under the profiler.\n\n"
    )
    gc_path = stats_path.with_suffix(".gc.json")
    gc_stats: dict[str, Any] = json.loads(gc_path.read_text()) if gc_path.exists() else {}
    if gc_stats:
        buffer.write(
            "Garbage collections during the profiled load (generation: count, total, max):\n"
        )
        for generation, entry in sorted(gc_stats.items()):
            buffer.write(
                f"  gen{generation}: {entry['count']:.0f}, {entry['total_s'] * 1000:.1f} ms, "
                f"longest {entry['max_s'] * 1000:.2f} ms\n"
            )
        buffer.write("\n")
    buffer.write("Own time by component (C functions count for their caller):\n")
    for name, own in components:
        if own / total < 0.002:
            break
        buffer.write(
            f"  {own / total * 100:5.1f} %  {own / per_request * 1e6:7.1f} µs/req  {name}\n"
        )
    buffer.write("\n")
    stats.strip_dirs()
    for order in ("tottime", "cumulative"):
        buffer.write(f"==== top {limit} by {order} ====\n")
        stats.stream = buffer  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(limit)
    stripped: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    rows = sorted(stripped.items(), key=lambda item: item[1][2], reverse=True)[:15]
    top = [
        {
            "function": f"{Path(file).name}:{line}({name})",
            "calls": calls,
            "own_s": own,
            "cumulative_s": cumulative,
            "own_share": own / total if total else 0.0,
            "own_us_per_request": own / per_request * 1e6,
        }
        for (file, line, name), (_, calls, own, cumulative, _) in rows
    ]
    summary = {
        "total_s": total,
        "components": [
            {
                "component": name,
                "own_s": own,
                "share": own / total if total else 0.0,
                "us_per_request": own / per_request * 1e6,
            }
            for name, own in components[:25]
        ],
        "top": top,
        "gc": gc_stats,
    }
    return buffer.getvalue(), summary


class GcTimer:
    """Times every garbage collection (``gc.callbacks``): count, total, longest per generation."""

    def __init__(self) -> None:
        self.stats: dict[int, dict[str, float]] = {}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        entry = self.stats.setdefault(
            info["generation"], {"count": 0, "total_s": 0.0, "max_s": 0.0}
        )
        entry["count"] += 1
        entry["total_s"] += pause
        entry["max_s"] = max(entry["max_s"], pause)


def main() -> int:
    out, args = Path(sys.argv[1]), sys.argv[2:]
    profiler = cProfile.Profile()
    gc_timer = GcTimer()
    state = {"on": False}

    def start(signum: int, frame: object) -> None:
        if not state["on"]:
            state["on"] = True
            gc.callbacks.append(gc_timer)
            profiler.enable()

    def stop(signum: int, frame: object) -> None:
        if state["on"]:
            profiler.disable()
            gc.callbacks.remove(gc_timer)
            state["on"] = False
            profiler.dump_stats(str(out))
            gc_path = out.with_suffix(".gc.json")
            gc_path.write_text(json.dumps({str(k): v for k, v in gc_timer.stats.items()}))

    # SIGUSR1 starts profiling, SIGUSR2 stops it and writes the statistics: start-up and
    # warm-up stay out of the profile.
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    # uvicorn re-raises the signal that stopped it once it has shut down; make that a no-op so
    # the process ends normally.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    from enclave.cli import app

    try:
        app(args, standalone_mode=False)
    except KeyboardInterrupt:
        pass
    finally:
        stop(0, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
