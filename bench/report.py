"""Turn the benchmark's raw numbers (results.json) into report.md and latency.png.

python bench/report.py [bench/results/results.json]   # re-render from saved numbers
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import orjson

MiB = 2**20
P99_LIMIT_MS = 20.0
FOREIGN_WARN = 0.10  # a load point is "disturbed" when other processes used > 10 % of the CPU
KIND_ORDER = {"direct": 0, "enclave": 1, "openai": 2, "instance": 3, "litellm": 4}
COLOURS = {
    "direct": "#555555",
    "enclave": "#1f77b4",
    "openai": "#2ca02c",
    "instance": "#9467bd",
    "litellm": "#d62728",
}
PLOT_PERCENTILES = ("50", "75", "90", "95", "99", "99.9", "99.99")

# Goals from the issues, checked on the 1-worker figures.
GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_P99_MS = 5.0
GOAL_RPS_FACTOR = 30.0  # gateway RPS at c=16 / LiteLLM's
GOAL_CPU_FRACTION = 35.0  # LiteLLM's CPU per request / the gateway's
GOAL_ADDED_P50_FRACTION = 20.0  # LiteLLM's added p50 at c=1 / the gateway's
GOAL_TTFB_ADDED_MS = 1.0
GOAL_INSTANCE_RPS_FACTOR = 8.0  # instance → gateway path RPS at c=16 / LiteLLM's
GOAL_INSTANCE_HOP_P50_MS = 1.0  # instance path p50 at c=1 − the gateway's alone


# -- figures ----------------------------------------------------------------------------------


def _errors(load: dict[str, Any]) -> int:
    return int(sum(load["errors"].values()))


def figures(target: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one measured target (None where not measured)."""
    loads: list[dict[str, Any]] = target.get("loads") or []
    by_c = {load["connections"]: load for load in loads}
    c1, c16, c64 = by_c.get(1), by_c.get(16), by_c.get(64)
    good = [ld for ld in loads if _errors(ld) == 0 and ld["latency_ms"]["99"] <= P99_LIMIT_MS]
    best = max(good, key=lambda ld: ld["rps"], default=None)
    largest = max((ld["connections"] for ld in loads), default=0)
    stream = target.get("streaming") or {}
    seq = stream.get("sequential") or {}
    conc = stream.get("concurrent") or {}

    def frames(key: str) -> int:
        return int(seq.get(key, 0)) + int(conc.get(key, 0))

    return {
        "p50_c1": c1["latency_ms"]["50"] if c1 else None,
        "p99_c1": c1["latency_ms"]["99"] if c1 else None,
        "rps_c1": c1["rps"] if c1 else None,
        "rps_c16": c16["rps"] if c16 else None,
        "rps_c64": c64["rps"] if c64 else None,
        "p99_c16": c16["latency_ms"]["99"] if c16 else None,
        "p99_c64": c64["latency_ms"]["99"] if c64 else None,
        "max_rps": best["rps"] if best else None,
        "max_rps_c": best["connections"] if best else None,
        "max_rps_open": bool(best and best["connections"] == largest),
        "cpu_us_c16": c16.get("cpu_us_per_request") if c16 else None,
        "cpu_us_c1": c1.get("cpu_us_per_request") if c1 else None,
        # The first server alone (the instance target: the instance without its gateway).
        "main_cpu_us_c16": c16.get("main_cpu_us_per_request") if c16 else None,
        "rss_idle": (target.get("rss") or {}).get("idle"),
        "rss_load": (target.get("rss") or {}).get("load_peak"),
        "rss_after": (target.get("rss") or {}).get("after"),
        "pss_load": (target.get("pss") or {}).get("load_peak"),
        "ttfb_p50": (seq.get("ttfb_ms") or {}).get("p50"),
        "ttfb_p99": (seq.get("ttfb_ms") or {}).get("p99"),
        "gap_p99": (seq.get("gaps_ms") or {}).get("p99"),
        "gap_p99_concurrent": (conc.get("gaps_ms") or {}).get("p99"),
        "ttfb_p50_concurrent": (conc.get("ttfb_ms") or {}).get("p50"),
        "streams": int(seq.get("streams", 0)) + int(conc.get("streams", 0)),
        "lost": frames("lost"),
        "merged": frames("merged"),
        "reordered": frames("reordered"),
        "failed_streams": frames("failed"),
        "load_errors": sum(_errors(ld) for ld in loads),
        "foreign_max": max((ld.get("foreign_cpu_share") or 0.0 for ld in loads), default=0.0),
    }


def _ms(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _mib(value: int | None) -> str:
    return "—" if not value else f"{value / MiB:.0f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _times(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value:.3g}×"
    return f"{value:.1f}×" if value < 100 else f"{value:,.0f}×"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _share(value: float | None) -> str:
    if value is None:
        return "—"
    text = f"{value * 100:.0f} %"
    return f"**{text}** ⚠" if value > FOREIGN_WARN else text


def _check(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


# -- markdown ---------------------------------------------------------------------------------


def _measured(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in results["targets"] if t.get("status") == "ok"}


def _goals(results: dict[str, Any]) -> list[str]:
    ok = _measured(results)
    direct, enclave, litellm = ok.get("direct-1w"), ok.get("enclave-1w"), ok.get("litellm-1w")
    rows = ["| goal (1 worker) | target | measured | result |", "|---|---|---|---|"]
    if not (direct and enclave):
        rows.append("| all | — | Enclave or direct not measured | n/a |")
        return rows
    fd, fe = figures(direct), figures(enclave)
    added_p50 = _diff(fe["p50_c1"], fd["p50_c1"])
    added_p99 = _diff(fe["p99_c1"], fd["p99_c1"])
    ttfb_added = _diff(fe["ttfb_p50"], fd["ttfb_p50"])
    rows.append(
        f"| added latency p50 at c=1 | ≤ {GOAL_ADDED_P50_MS:g} ms | {_ms(added_p50)} ms | "
        f"{_check(None if added_p50 is None else added_p50 <= GOAL_ADDED_P50_MS)} |"
    )
    rows.append(
        f"| added latency p99 at c=1 | ≤ {GOAL_ADDED_P99_MS:g} ms | {_ms(added_p99)} ms | "
        f"{_check(None if added_p99 is None else added_p99 <= GOAL_ADDED_P99_MS)} |"
    )
    if litellm:
        factor = _ratio(fe["rps_c16"], figures(litellm)["rps_c16"])
        rows.append(
            f"| RPS at c=16 vs LiteLLM | ≥ {GOAL_RPS_FACTOR:g}× | {_times(factor)} | "
            f"{_check(None if factor is None else factor >= GOAL_RPS_FACTOR)} |"
        )
    else:
        rows.append(f"| RPS at c=16 vs LiteLLM | ≥ {GOAL_RPS_FACTOR:g}× | LiteLLM not run | n/a |")
    rows.append(
        f"| streaming: added time to first byte (p50) | ≤ {GOAL_TTFB_ADDED_MS:g} ms | "
        f"{_ms(ttfb_added)} ms | "
        f"{_check(None if ttfb_added is None else ttfb_added <= GOAL_TTFB_ADDED_MS)} |"
    )
    if litellm:
        fl = figures(litellm)
        cpu_factor = _ratio(fl["cpu_us_c16"], fe["cpu_us_c16"])
        rows.append(
            f"| CPU per request: LiteLLM / gateway | ≥ {GOAL_CPU_FRACTION:g}× | "
            f"{_times(cpu_factor)} | "
            f"{_check(None if cpu_factor is None else cpu_factor >= GOAL_CPU_FRACTION)} |"
        )
        p50_factor = _ratio(_diff(fl["p50_c1"], fd["p50_c1"]), added_p50)
        rows.append(
            f"| added p50 at c=1: LiteLLM / gateway | ≥ {GOAL_ADDED_P50_FRACTION:g}× | "
            f"{_times(p50_factor)} | "
            f"{_check(None if p50_factor is None else p50_factor >= GOAL_ADDED_P50_FRACTION)} |"
        )
    instance = ok.get("instance-1w")
    if instance:
        fi = figures(instance)
        hop = _diff(fi["p50_c1"], fe["p50_c1"])
        rows.append(
            f"| instance hop added over the gateway alone, p50 at c=1 | "
            f"≤ {GOAL_INSTANCE_HOP_P50_MS:g} ms | {_ms(hop)} ms | "
            f"{_check(None if hop is None else hop <= GOAL_INSTANCE_HOP_P50_MS)} |"
        )
        if litellm:
            factor = _ratio(fi["rps_c16"], figures(litellm)["rps_c16"])
            rows.append(
                f"| instance → gateway RPS at c=16 vs LiteLLM | "
                f"≥ {GOAL_INSTANCE_RPS_FACTOR:g}× | {_times(factor)} | "
                f"{_check(None if factor is None else factor >= GOAL_INSTANCE_RPS_FACTOR)} |"
            )
    else:
        rows.append("| instance hop, instance path vs LiteLLM | — | instance not run | n/a |")
    enclaves = [t for t in ok.values() if t["kind"] in ("enclave", "openai", "instance")]
    bad = sum(figures(t)["lost"] + figures(t)["merged"] + figures(t)["reordered"] for t in enclaves)
    failed = sum(figures(t)["failed_streams"] for t in enclaves)
    streams = sum(figures(t)["streams"] for t in enclaves)
    rows.append(
        f"| streaming: lost / merged / reordered frames (all Enclave runs) | 0 | "
        f"{bad} in {streams} streams ({failed} failed) | {_check(bad == 0 and failed == 0)} |"
    )
    return rows


def _ratios(results: dict[str, Any], workers: list[int]) -> list[str]:
    ok = _measured(results)
    header = "| ratio | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in workers) + " |"
    rows = [header, "|---|" + "---|" * len(workers)]

    def row(label: str, cell: Any) -> None:
        cells = []
        for w in workers:
            d, e, lt = (ok.get(f"{k}-{w}w") for k in ("direct", "enclave", "litellm"))
            fd = figures(d) if d else None
            fe = figures(e) if e else None
            fl = figures(lt) if lt else None
            cells.append(cell(fd, fe, fl))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    def need(*values: Any) -> bool:
        return all(v is not None for v in values)

    row(
        "Enclave − direct: added p50 / p99 at c=1 (ms)",
        lambda d, e, _: (
            f"{_signed(_diff(e['p50_c1'], d['p50_c1']))} / "
            f"{_signed(_diff(e['p99_c1'], d['p99_c1']))}"
            if need(d, e)
            else "—"
        ),
    )
    for c in (16, 64):
        row(
            f"Enclave / direct: RPS at c={c}",
            lambda d, e, _, c=c: (
                _times(_ratio(e[f"rps_c{c}"], d[f"rps_c{c}"])) if need(d, e) else "—"
            ),
        )
    row(
        f"Enclave / direct: max RPS with p99 ≤ {P99_LIMIT_MS:g} ms",
        lambda d, e, _: _times(_ratio(e["max_rps"], d["max_rps"])) if need(d, e) else "—",
    )
    row(
        "Enclave − direct: stream first byte p50 (ms)",
        lambda d, e, _: _signed(_diff(e["ttfb_p50"], d["ttfb_p50"])) if need(d, e) else "—",
    )

    def openai_row(label: str, cell: Any) -> None:
        """A row about the gateway's OpenAI-compatible API (d: direct, e: GitLab path, o: it)."""
        cells = []
        for w in workers:
            d, e, o = (ok.get(f"{k}-{w}w") for k in ("direct", "enclave", "openai"))
            cells.append(cell(*(figures(t) if t else None for t in (d, e, o))) if o else "not run")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    if any(t["kind"] == "openai" for t in ok.values()):
        openai_row(
            "OpenAI API − direct: added p50 / p99 at c=1 (ms)",
            lambda d, e, o: (
                f"{_signed(_diff(o['p50_c1'], d['p50_c1']))} / "
                f"{_signed(_diff(o['p99_c1'], d['p99_c1']))}"
                if need(d, o)
                else "—"
            ),
        )
        for c in (16, 64):
            openai_row(
                f"OpenAI API / direct: RPS at c={c}",
                lambda d, e, o, c=c: (
                    _times(_ratio(o[f"rps_c{c}"], d[f"rps_c{c}"])) if need(d, o) else "—"
                ),
            )
        openai_row(
            f"OpenAI API / direct: max RPS with p99 ≤ {P99_LIMIT_MS:g} ms",
            lambda d, e, o: _times(_ratio(o["max_rps"], d["max_rps"])) if need(d, o) else "—",
        )
        openai_row(
            "OpenAI API − direct: stream first byte p50 (ms)",
            lambda d, e, o: _signed(_diff(o["ttfb_p50"], d["ttfb_p50"])) if need(d, o) else "—",
        )
        openai_row(
            "OpenAI API − GitLab path: p50 / p99 at c=1 (ms)",
            lambda d, e, o: (
                f"{_signed(_diff(o['p50_c1'], e['p50_c1']))} / "
                f"{_signed(_diff(o['p99_c1'], e['p99_c1']))}"
                if need(e, o)
                else "—"
            ),
        )
        for c in (16, 64):
            openai_row(
                f"OpenAI API / GitLab path: RPS at c={c}",
                lambda d, e, o, c=c: (
                    _times(_ratio(o[f"rps_c{c}"], e[f"rps_c{c}"])) if need(e, o) else "—"
                ),
            )
        openai_row(
            "OpenAI API / GitLab path: CPU per request (c=16)",
            lambda d, e, o: _times(_ratio(o["cpu_us_c16"], e["cpu_us_c16"])) if need(e, o) else "—",
        )
        openai_row(
            "OpenAI API − GitLab path: stream first byte p50 (ms)",
            lambda d, e, o: _signed(_diff(o["ttfb_p50"], e["ttfb_p50"])) if need(e, o) else "—",
        )

    def instance_row(label: str, cell: Any) -> None:
        """A row about the instance → gateway path (e: the gateway alone, i: the path)."""
        cells = []
        for w in workers:
            d, e, i, lt = (
                ok.get(f"{k}-{w}w") for k in ("direct", "enclave", "instance", "litellm")
            )
            figs = (figures(t) if t else None for t in (d, e, i, lt))
            cells.append(cell(*figs) if i else "not run")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    if any(t["kind"] == "instance" for t in ok.values()):
        instance_row(
            "**Instance hop added over the gateway alone**: p50 / p99 at c=1 (ms)",
            lambda d, e, i, lt: (
                f"{_signed(_diff(i['p50_c1'], e['p50_c1']))} / "
                f"{_signed(_diff(i['p99_c1'], e['p99_c1']))}"
                if need(e, i)
                else "—"
            ),
        )
        instance_row(
            "Instance hop: CPU µs per request (instance path − gateway alone, c=16)",
            lambda d, e, i, lt: (
                _num(_diff(i["cpu_us_c16"], e["cpu_us_c16"])) if need(e, i) else "—"
            ),
        )
        instance_row(
            "CPU µs per request at c=16, instance process / its gateway (measured per role)",
            lambda d, e, i, lt: (
                f"{_num(i['main_cpu_us_c16'])} / "
                f"{_num(_diff(i['cpu_us_c16'], i['main_cpu_us_c16']))}"
                if i.get("main_cpu_us_c16") is not None and i.get("cpu_us_c16") is not None
                else "—"
            ),
        )
        instance_row(
            "Instance hop added over the gateway alone: stream first byte p50 (ms)",
            lambda d, e, i, lt: _signed(_diff(i["ttfb_p50"], e["ttfb_p50"])) if need(e, i) else "—",
        )
        instance_row(
            "Instance path − direct: added p50 / p99 at c=1 (ms)",
            lambda d, e, i, lt: (
                f"{_signed(_diff(i['p50_c1'], d['p50_c1']))} / "
                f"{_signed(_diff(i['p99_c1'], d['p99_c1']))}"
                if need(d, i)
                else "—"
            ),
        )
        instance_row(
            "Instance path / gateway alone: RPS at c=16",
            lambda d, e, i, lt: _times(_ratio(i["rps_c16"], e["rps_c16"])) if need(e, i) else "—",
        )
        instance_row(
            "Instance path / LiteLLM: RPS at c=16",
            lambda d, e, i, lt: _times(_ratio(i["rps_c16"], lt["rps_c16"])) if need(i, lt) else "—",
        )
        instance_row(
            "LiteLLM / instance path: CPU per request (c=16)",
            lambda d, e, i, lt: (
                _times(_ratio(lt["cpu_us_c16"], i["cpu_us_c16"])) if need(i, lt) else "—"
            ),
        )
    row(
        "LiteLLM / Enclave: added p50 at c=1",
        lambda d, e, lt: (
            _times(_ratio(_diff(lt["p50_c1"], d["p50_c1"]), _diff(e["p50_c1"], d["p50_c1"])))
            if need(d, e, lt)
            else "—"
        ),
    )
    row(
        "LiteLLM / Enclave: added p99 at c=1",
        lambda d, e, lt: (
            _times(_ratio(_diff(lt["p99_c1"], d["p99_c1"]), _diff(e["p99_c1"], d["p99_c1"])))
            if need(d, e, lt)
            else "—"
        ),
    )
    for c in (16, 64):
        row(
            f"Enclave / LiteLLM: RPS at c={c}",
            lambda d, e, lt, c=c: (
                _times(_ratio(e[f"rps_c{c}"], lt[f"rps_c{c}"])) if need(e, lt) else "—"
            ),
        )
    row(
        f"Enclave / LiteLLM: max RPS with p99 ≤ {P99_LIMIT_MS:g} ms",
        lambda d, e, lt: (
            (
                _times(_ratio(e["max_rps"], lt["max_rps"]))
                if lt["max_rps"]
                else "LiteLLM never met it"
            )
            if need(e, lt)
            else "—"
        ),
    )
    row(
        "LiteLLM / Enclave: CPU per request (c=16)",
        lambda d, e, lt: _times(_ratio(lt["cpu_us_c16"], e["cpu_us_c16"])) if need(e, lt) else "—",
    )
    row(
        "LiteLLM / Enclave: RSS under load",
        lambda d, e, lt: _times(_ratio(lt["rss_load"], e["rss_load"])) if need(e, lt) else "—",
    )
    row(
        "LiteLLM − Enclave: stream first byte p50 (ms)",
        lambda d, e, lt: _signed(_diff(lt["ttfb_p50"], e["ttfb_p50"])) if need(e, lt) else "—",
    )
    return rows


def _figures_table(results: dict[str, Any]) -> list[str]:
    rows = [
        "| target | workers | p50 / p99 at c=1 (ms) | max RPS, p99 ≤ 20 ms (at c) | RPS c=16 | "
        "RPS c=64 | CPU µs/req (c=16) | RSS MiB idle / load / after | PSS MiB load | "
        "stream TTFB p50 (ms) | gap p99 (ms) seq / conc | lost / merged / reordered | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target in _ordered(results["targets"]):
        if target.get("status") != "ok":
            rows.append(
                f"| {target['kind']} | {target['workers']} | {target.get('status')}: "
                f"{(target.get('note') or '').splitlines()[0][:120]} ||||||||||| "
            )
            continue
        f = figures(target)
        open_end = ", limit not reached" if f["max_rps_open"] else ""
        at = (
            f"{_num(f['max_rps'])} (c={f['max_rps_c']}{open_end})"
            if f["max_rps"] is not None
            else "never (p99 > 20 ms at c=1)"
        )
        disturbed = " ⚠" if f["foreign_max"] > FOREIGN_WARN else ""
        rows.append(
            f"| {target['label']}{disturbed} | {target['workers']} | "
            f"{_ms(f['p50_c1'])} / {_ms(f['p99_c1'])} | "
            f"{at} | {_num(f['rps_c16'])} | {_num(f['rps_c64'])} | {_num(f['cpu_us_c16'])} | "
            f"{_mib(f['rss_idle'])} / {_mib(f['rss_load'])} / {_mib(f['rss_after'])} | "
            f"{_mib(f['pss_load'])} | {_ms(f['ttfb_p50'])} | "
            f"{_ms(f['gap_p99'])} / {_ms(f['gap_p99_concurrent'])} | "
            f"{f['lost']} / {f['merged']} / {f['reordered']} | "
            f"{f['load_errors'] + f['failed_streams']} |"
        )
    return rows


def _sweep(results: dict[str, Any]) -> list[str]:
    rows = [
        "| target | c | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | CPU µs/req | "
        "other processes' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target in _ordered(results["targets"]):
        for load in target.get("loads") or []:
            lat = load["latency_ms"]
            rows.append(
                f"| {target['key']} | {load['connections']} | {load['rps']:,.0f} | "
                f"{lat['50']:.2f} | {lat['90']:.2f} | {lat['99']:.2f} | {lat['99.9']:.2f} | "
                f"{_errors(load)} | {_num(load.get('cpu_us_per_request'))} | "
                f"{_share(load.get('foreign_cpu_share'))} |"
            )
    return rows


def _ordered(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(targets, key=lambda t: (t["workers"], KIND_ORDER.get(t["kind"], 9)))


def _profile(results: dict[str, Any]) -> list[str]:
    profile = results.get("profile")
    if not profile:
        return ["Not run (`--profile` is off in quick runs; see the notes otherwise)."]
    lines = [
        f"cProfile of the 1-worker gateway at c=16 ({profile['requests']:,} requests, "
        f"{profile['rps_under_profiler']:,.0f} req/s under the profiler, which slows every "
        "Python call: read shares). Full listing in `profile.txt`.",
        "",
        "| component (own time; C functions count for their caller) | share | µs/request |",
        "|---|---|---|",
    ]
    for row in (profile.get("components") or [])[:12]:
        lines.append(
            f"| `{row['component']}` | {row['share'] * 100:.1f} % | {row['us_per_request']:.0f} |"
        )
    lines += [
        "",
        "| function | calls | own s | share | own µs/request |",
        "|---|---|---|---|---|",
    ]
    for row in profile["top"][:10]:
        lines.append(
            f"| `{row['function']}` | {row['calls']:,} | {row['own_s']:.2f} | "
            f"{row['own_share'] * 100:.1f} % | {row['own_us_per_request']:.1f} |"
        )
    gc_stats = profile.get("gc") or {}
    if gc_stats:
        parts = [
            f"gen{gen}: {entry['count']:.0f} ({entry['total_s'] * 1000:.0f} ms in all, longest "
            f"{entry['max_s'] * 1000:.1f} ms)"
            for gen, entry in sorted(gc_stats.items())
        ]
        lines += ["", "Garbage collections during the profiled load: " + "; ".join(parts) + "."]
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    workers = sorted({t["workers"] for t in results["targets"]})
    metrics = env.get("gateway_metrics_endpoint")
    out = [
        "# Enclave gateway and instance benchmark",
        "",
        f"{env['date']} · {env['cpu']} ({env['cores']} cores) · Linux {env['kernel']} · "
        f"Python {env['python']} · {env['load_generator']} · Enclave {env['enclave']} "
        f"({env['commit']}) · LiteLLM {env.get('litellm') or 'not run'}"
        + (" · **quick run**" if env.get("quick") else ""),
        "",
        "Everything on 127.0.0.1 in one run: a fake OpenAI-compatible upstream "
        f"(answer after {env['upstream_latency_ms']:g} ms), the same upstream behind Enclave's "
        "gateway (RS256 token with a warm key cache, scope check, prompt rendering, egress "
        f"check, access log at `{env['gateway_log_level']}`; GitLab's `POST "
        "/v2/code/completions`, and the OpenAI-compatible `POST /v1/completions` with an "
        "instance-issued user token and the feature→model routes in memory), behind "
        "Enclave's instance and its gateway (PAT, `POST /api/v4/code_suggestions/completions`; "
        "with 1 worker per role both roles on one core) and behind LiteLLM's proxy "
        "(master key, no database, logging off). Closed-loop load, "
        f"{env['duration_s']:g} s per point at c=1/16/64, {env['sweep_duration_s']:g} s for the "
        "other sweep points; streams of "
        f"{env['stream_frames']} frames {env['stream_gap_ms']:g} ms apart. All servers, the "
        "load generator and the upstream share the machine's cores: read ratios, not "
        "absolute numbers. `make bench` regenerates this file; bench/README.md explains each "
        "figure.",
        "",
        "## Goals",
        "",
        *_goals(results),
        "",
        "## Ratios",
        "",
        *_ratios(results, workers),
        "",
        "## Figures",
        "",
        *_figures_table(results),
        "",
        "![latency](latency.png)",
        "",
        "## Concurrency sweep",
        "",
        *_sweep(results),
        "",
        "## Where the gateway's time goes",
        "",
        *_profile(results),
        "",
        "## Notes",
        "",
    ]
    notes = list(results.get("notes") or [])
    disturbed = [
        t["key"]
        for t in _ordered(results["targets"])
        if t.get("status") == "ok" and figures(t)["foreign_max"] > FOREIGN_WARN
    ]
    busy = max(env.get("busy_before", 0.0), env.get("busy_after", 0.0))
    if disturbed or busy > 0.15:
        notes.insert(
            0,
            "**Other processes were using the CPU** ("
            + (f"during the load on {', '.join(disturbed)} (⚠); " if disturbed else "")
            + f"{env.get('busy_before', 0) * 100:.0f} % of all cores before the run, "
            f"{env.get('busy_after', 0) * 100:.0f} % after): those figures are noisier than "
            "usual; rerun `make bench` on an idle machine.",
        )
    if metrics is not None and metrics != 200:
        notes.append(
            f"The gateway answered GET /metrics with HTTP {metrics}: no metrics endpoint yet, "
            "so metrics are not part of the measured path."
        )
    notes.append(f"Run took {results.get('elapsed_s', 0):.0f} s.")
    out.extend(f"- {note}" for note in notes)
    return "\n".join(out) + "\n"


# -- plot -------------------------------------------------------------------------------------


def _tail_x(q: float) -> float:
    return -math.log10(1 - q / 100)


def render_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [t for t in _ordered(results["targets"]) if t.get("status") == "ok"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    for target in measured:
        colour = COLOURS.get(target["kind"], "#2ca02c")
        style = "-" if target["workers"] == 1 else "--"
        label = f"{target['kind']} {target['workers']}w"
        c1 = next((ld for ld in target["loads"] if ld["connections"] == 1), None)
        if c1 is not None:
            qs = [q for q in PLOT_PERCENTILES if q in c1["latency_ms"]]
            left.plot(
                [_tail_x(float(q)) for q in qs],
                [max(c1["latency_ms"][q], 0.001) for q in qs],
                style,
                color=colour,
                marker="o",
                markersize=3,
                label=label,
            )
        loads = sorted(target["loads"], key=lambda ld: ld["connections"])
        right.plot(
            [ld["rps"] for ld in loads],
            [max(ld["latency_ms"]["99"], 0.001) for ld in loads],
            style,
            color=colour,
            marker="o",
            markersize=3,
            label=label,
        )
        for ld in loads:
            right.annotate(
                str(ld["connections"]),
                (ld["rps"], max(ld["latency_ms"]["99"], 0.001)),
                fontsize=6,
                color=colour,
                xytext=(2, 2),
                textcoords="offset points",
            )
    ticks = [float(q) for q in PLOT_PERCENTILES]
    left.set_xticks([_tail_x(q) for q in ticks], [f"p{q:g}" for q in ticks])
    left.set_yscale("log")
    left.set_ylabel("latency (ms, log)")
    left.set_title("Latency distribution at concurrency 1")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    right.axhline(P99_LIMIT_MS, color="#999999", linestyle=":", linewidth=1)
    right.text(right.get_xlim()[0], P99_LIMIT_MS * 1.05, "p99 = 20 ms", fontsize=7)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("requests/s (log)")
    right.set_ylabel("p99 latency (ms, log)")
    right.set_title("p99 vs throughput (labels: concurrency)")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "report.md").write_text(render_markdown(results))
    render_plot(results, out_dir / "latency.png")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path(__file__).resolve().parent / "results" / "results.json"
    results = orjson.loads(path.read_bytes())
    write_report(results, path.parent)
    print(f"wrote {path.parent / 'report.md'} and {path.parent / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
