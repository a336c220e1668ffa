"""Enclave's benchmark: one command, bounded, loopback only. ``make bench`` runs it.

Starts a fake OpenAI-compatible upstream and a fake token issuer on 127.0.0.1, then measures,
in the same run and against the same upstream:

* ``direct``: load generator → upstream (the physical limit of this machine);
* ``enclave``: load generator → Enclave's gateway (``python -m enclave gateway``, production
  path: JWT verification with a warm key cache, scope check, prompt rendering, egress check,
  access log) → upstream;
* ``instance``: load generator → Enclave's instance (PAT, ``POST
  /api/v4/code_suggestions/completions``) → its own gateway → upstream, the path GitLab's editor
  extensions take (1-worker roles pinned to one core);
* ``openai``: load generator → the same gateway's OpenAI-compatible API (``POST
  /v1/completions`` with an instance-signed user token carrying ``enclave_surface: openai``,
  routed by the feature→model table the gateway reads from the fake issuer's
  ``/api/v4/internal/ai/gateway_routes``) → upstream;
* ``litellm``: load generator → LiteLLM proxy (pinned, own virtualenv, no database) → upstream,
  when it can be installed;

each with 1 and with 2 server workers. See bench/README.md for the figures and
bench/results/report.md for the last report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

import streaming
from issuer import jwks, mint_openai_token, mint_token, new_signing_key, routes_document
from load import LoadResult, Request, ensure_wrk, run_load, wrk_version
from procs import (
    Processes,
    Server,
    free_port,
    http_get,
    http_post,
    machine_busy,
    process_tree,
    pss_bytes,
    rss_bytes,
    wait_http,
)
from report import write_report
from upstream import COMPLETION_TEXT

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable
LITELLM_VERSION = "1.82.6"
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
LITELLM_MASTER_KEY = "sk-bench-master"
SERVED_MODEL = "codestral-bench"
OPENAI_FEATURE = "code_completions"  # the "model" of the gateway's OpenAI-compatible API
UPSTREAM_API_KEY = "bench-key"
P99_LIMIT_MS = 20.0
REQUIRED_CONNECTIONS = (1, 16, 64)
DEFAULT_CONNECTIONS = "1,4,16,32,64,128,256"
FOREIGN_WARN = 0.10  # flag load points during which other processes used > 10 % of the CPU

_started = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", flush=True)


@dataclass
class Settings:
    duration_s: float
    sweep_duration_s: float
    warmup_s: float
    connections: tuple[int, ...]
    workers: tuple[int, ...]
    kinds: tuple[str, ...]
    upstream_latency_ms: float
    stream_frames: int
    stream_gap_ms: float
    streams_sequential: int
    streams_concurrency: int
    streams_rounds: int
    budget_s: float
    profile: bool
    gateway_log_level: str
    results_dir: Path
    quick: bool
    pin_roles: bool = True
    use_wrk: bool = True


class Budget:
    """The whole run must end within ``total_s``; optional work is skipped when time is short."""

    def __init__(self, total_s: float) -> None:
        self.deadline = _started + total_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() > seconds


# -- requests ---------------------------------------------------------------------------------

FIM_PROMPT = "<s>[SUFFIX]\n[PREFIX]def add(a, b):\n    "


def gitlab_body(upstream_port: int, stream: bool) -> bytes:
    """What a GitLab instance sends to ``POST /v2/code/completions`` (self-hosted model)."""
    return orjson.dumps(
        {
            "current_file": {
                "file_name": "app/calc.py",
                "language_identifier": "python",
                "content_above_cursor": "def add(a, b):\n    ",
                "content_below_cursor": "\n",
            },
            "stream": stream,
            "prompt_version": 2,
            "prompt": "",
            "model_provider": "litellm",
            "model_name": "codestral",
            "model_endpoint": f"http://127.0.0.1:{upstream_port}/v1",
            "model_api_key": "bench-key",
            "model_identifier": f"custom_openai/{SERVED_MODEL}",
        }
    )


def openai_completion_body(stream: bool, model: str = SERVED_MODEL) -> bytes:
    """A text-completion request like the one the gateway sends upstream for codestral.

    The ``openai`` target sends the same body with ``model`` = the feature id
    (:data:`OPENAI_FEATURE`), which is what the gateway's OpenAI-compatible API expects.
    """
    return orjson.dumps(
        {
            "model": model,
            "max_tokens": 128,
            "n": 1,
            "stream": stream,
            "prompt": FIM_PROMPT,
            "temperature": 0.2,
            "stop": ["</s>", "[SUFFIX]", "[PREFIX]"],
        }
    )


JSON_HEADERS = {"Content-Type": "application/json"}


def instance_body(stream: bool) -> bytes:
    """What GitLab's editor extensions send to ``POST /api/v4/code_suggestions/completions``."""
    return orjson.dumps(
        {
            "current_file": {
                "file_name": "app/calc.py",
                "content_above_cursor": "def add(a, b):\n    ",
                "content_below_cursor": "\n",
            },
            "intent": "completion",
            "stream": stream,
        }
    )


# -- targets ----------------------------------------------------------------------------------


@dataclass
class Target:
    key: str  # "enclave-1w"
    kind: str  # direct | enclave | litellm
    label: str
    workers: int
    server: Server
    load: Request
    stream: Request
    stream_format: str  # sse | raw
    startup_s: float
    # Further servers on the path, measured with the target (the gateway behind the instance).
    helpers: tuple[Server, ...] = ()

    def pids(self) -> list[int]:
        pids = process_tree(self.server.pid)
        for helper in self.helpers:
            pids += process_tree(helper.pid)
        return pids

    def helper_pids(self) -> tuple[int, ...]:
        return tuple(helper.pid for helper in self.helpers)


class Bench:
    def __init__(self, settings: Settings, budget: Budget, tmp: Path) -> None:
        self.settings = settings
        self.budget = budget
        self.tmp = tmp
        self.processes = Processes(tmp)
        self.notes: list[str] = []
        self.key, self.kid = new_signing_key()
        self.instance_id = str(uuid.uuid4())
        self.issuer_port = free_port()
        self.issuer_url = f"http://127.0.0.1:{self.issuer_port}"
        self.upstream_port = free_port()
        self.upstream: Server | None = None
        # The instance↔gateway secret for the routes endpoint, and the user of the OpenAI API.
        self.routes_secret_file = tmp / "gateway-routes.secret"
        self.openai_user_id = uuid.uuid4().hex
        self.litellm_python: Path | None = None
        self.litellm_version: str | None = None
        self.gateway_available = False
        self.metrics_status: int | None = None  # GET /metrics on the gateway
        self.busy_before = 0.0  # share of the machine's CPU busy before / after the run
        self.busy_after = 0.0

    # -- shared servers ------------------------------------------------------------------------

    def upstream_argv(self, port: int, workers: int) -> list[str]:
        s = self.settings
        return [
            PYTHON,
            str(BENCH_DIR / "upstream.py"),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--latency-ms",
            str(s.upstream_latency_ms),
            "--stream-frames",
            str(s.stream_frames),
            "--stream-gap-ms",
            str(s.stream_gap_ms),
        ]

    def start_shared(self) -> None:
        jwks_path = self.tmp / "jwks.json"
        jwks_path.write_text(json.dumps(jwks(self.key, self.kid)))
        routes_path = self.tmp / "gateway-routes.json"
        routes_path.write_text(
            json.dumps(
                routes_document(
                    self.issuer_url,
                    f"http://127.0.0.1:{self.upstream_port}/v1",
                    SERVED_MODEL,
                    UPSTREAM_API_KEY,
                )
            )
        )
        self.routes_secret_file.write_text(uuid.uuid4().hex + uuid.uuid4().hex + "\n")
        self.routes_secret_file.chmod(0o600)
        issuer = self.processes.start(
            "issuer",
            [
                PYTHON,
                str(BENCH_DIR / "issuer.py"),
                "--port",
                str(self.issuer_port),
                "--jwks",
                str(jwks_path),
                "--routes",
                str(routes_path),
                "--routes-secret-file",
                str(self.routes_secret_file),
            ],
        )
        self.upstream = self.processes.start("upstream", self.upstream_argv(self.upstream_port, 1))
        wait_http(issuer, f"{self.issuer_url}/.well-known/openid-configuration", 15)
        wait_http(self.upstream, f"http://127.0.0.1:{self.upstream_port}/health", 15)
        log(f"issuer on :{self.issuer_port}, upstream (model) on :{self.upstream_port}")

    def upstream_counts(self) -> dict[str, int]:
        _, body = http_get(f"http://127.0.0.1:{self.upstream_port}/stats")
        counts: dict[str, int] = orjson.loads(body)
        return counts

    def gitlab_headers(self) -> dict[str, str]:
        token = mint_token(self.key, self.kid, self.issuer_url, self.instance_id)
        return {
            "Authorization": f"Bearer {token}",
            "X-Gitlab-Authentication-Type": "oidc",
            "X-Gitlab-Instance-Id": self.instance_id,
            "X-Gitlab-Realm": "self-managed",
            "Content-Type": "application/json",
        }

    def openai_headers(self) -> dict[str, str]:
        """What an OpenAI client sends: the instance-issued user token, nothing else."""
        token = mint_openai_token(
            self.key, self.kid, self.issuer_url, self.instance_id, self.openai_user_id
        )
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def gateway_env(self, data_dir: str, workers: int) -> dict[str, str]:
        """The environment of a gateway process: production settings, limits out of reach."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
        env.update(
            {
                "ENCLAVE_DATA_DIR": str(self.tmp / data_dir),
                "ENCLAVE_GATEWAY__ISSUER_URL": self.issuer_url,
                "ENCLAVE_GATEWAY__WORKERS": str(workers),
                # As `enclave up` sets it: the gateway reads the instance's feature→model
                # routes (in the background, every 30 s) and serves the OpenAI-compatible API.
                "ENCLAVE_GATEWAY__GATEWAY_ROUTES_SECRET_FILE": str(self.routes_secret_file),
                # The limiters run on every request, as in production, with ceilings the load
                # generator cannot reach: the bench measures their cost, not their refusals.
                "ENCLAVE_GATEWAY__RATE_LIMIT_PER_INSTANCE_RPS": "1000000",
                "ENCLAVE_GATEWAY__RATE_LIMIT_PER_INSTANCE_BURST": "1000000",
                "ENCLAVE_GATEWAY__RATE_LIMIT_PER_USER_RPM": "100000000",
                "ENCLAVE_GATEWAY__RATE_LIMIT_PER_USER_BURST": "1000000",
                "ENCLAVE_LOG_LEVEL": self.settings.gateway_log_level,
            }
        )
        return env

    # -- LiteLLM -------------------------------------------------------------------------------

    def prepare_litellm(self) -> None:
        """Make bench/.venv-litellm hold litellm[proxy]==LITELLM_VERSION, or note why not."""
        python = LITELLM_VENV / "bin" / "python"
        installed = _litellm_version(python)
        if installed != LITELLM_VERSION:
            limit = min(300.0, self.budget.left() - 240)
            if limit < 30:
                self.notes.append("LiteLLM skipped: not installed and too little time left")
                return
            log(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} ...")
            error = _install_litellm(python, limit)
            installed = _litellm_version(python)
            if installed != LITELLM_VERSION:
                self.notes.append(
                    f"LiteLLM skipped: litellm[proxy]=={LITELLM_VERSION} could not be installed "
                    f"into {LITELLM_VENV.relative_to(REPO)} ({error or 'unknown error'})"
                )
                log(self.notes[-1])
                return
        self.litellm_python = python
        self.litellm_version = installed
        log(f"LiteLLM {installed} ready ({LITELLM_VENV.relative_to(REPO)})")

    def _litellm_config(self, port: int) -> tuple[Path, Path]:
        config = self.tmp / f"litellm-{port}.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {SERVED_MODEL}\n"
            "    litellm_params:\n"
            f"      model: text-completion-openai/{SERVED_MODEL}\n"
            f"      api_base: http://127.0.0.1:{self.upstream_port}/v1\n"
            "      api_key: bench-key\n"
            "litellm_settings:\n"
            "  drop_params: true\n"
            "  telemetry: false\n"
            "  turn_off_message_logging: true\n"
            "  request_timeout: 60\n"
            "general_settings:\n"
            f"  master_key: {LITELLM_MASTER_KEY}\n"
            "  disable_spend_logs: true\n"
            "  disable_error_logs: true\n"
        )
        log_config = self.tmp / "litellm-logging.json"
        log_config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "disable_existing_loggers": False,
                    "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
                    "handlers": {
                        "stderr": {
                            "class": "logging.StreamHandler",
                            "formatter": "plain",
                            "stream": "ext://sys.stderr",
                        }
                    },
                    "root": {"level": "WARNING", "handlers": ["stderr"]},
                    "loggers": {
                        "uvicorn": {"level": "WARNING"},
                        "uvicorn.error": {"level": "WARNING"},
                        "uvicorn.access": {"level": "WARNING", "propagate": False},
                    },
                }
            )
        )
        return config, log_config

    # -- starting targets -----------------------------------------------------------------------

    def start_target(self, kind: str, workers: int) -> Target:
        key = f"{kind}-{workers}w"
        port = free_port()
        started = time.monotonic()
        if kind == "direct":
            server = self.processes.start(key, self.upstream_argv(port, workers))
            wait_http(server, f"http://127.0.0.1:{port}/health", 15)
            url = f"http://127.0.0.1:{port}/v1/completions"
            load = Request(url, openai_completion_body(False), JSON_HEADERS)
            stream = Request(url, openai_completion_body(True), JSON_HEADERS)
            fmt, label = "sse", "direct (no proxy)"
        elif kind in ("enclave", "openai"):
            env = self.gateway_env(f"{key}-data", workers)
            env.update({"ENCLAVE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "0"})
            server = self.processes.start(
                key,
                [PYTHON, "-m", "enclave", "gateway", "--port", str(port)],
                env=env,
                cwd=REPO,
            )
            wait_http(server, f"http://127.0.0.1:{port}/monitoring/healthz", 60)
            if self.metrics_status is None:
                self.metrics_status, _ = http_get(f"http://127.0.0.1:{port}/metrics")
            if kind == "enclave":
                url = f"http://127.0.0.1:{port}/v2/code/completions"
                headers = self.gitlab_headers()
                load = Request(url, gitlab_body(self.upstream_port, False), headers)
                stream = Request(url, gitlab_body(self.upstream_port, True), headers)
                fmt, label = "raw", "Enclave gateway"
            else:
                url = f"http://127.0.0.1:{port}/v1/completions"
                headers = self.openai_headers()
                load = Request(url, openai_completion_body(False, OPENAI_FEATURE), headers)
                stream = Request(url, openai_completion_body(True, OPENAI_FEATURE), headers)
                fmt, label = "sse", "Enclave OpenAI API"
        elif kind == "instance":
            server, helpers, headers = self.start_instance_pair(key, port, workers)
            url = f"http://127.0.0.1:{port}/api/v4/code_suggestions/completions"
            load = Request(url, instance_body(False), headers)
            stream = Request(url, instance_body(True), headers)
            fmt, label = "raw", "Enclave instance → gateway"
        elif kind == "litellm":
            assert self.litellm_python is not None
            config, log_config = self._litellm_config(port)
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("LITELLM", "OPENAI", "DATABASE_URL", "ENCLAVE_"))
            }
            env.update(
                {
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch the price list
                    "LITELLM_LOG": "ERROR",
                    "LITELLM_TELEMETRY": "False",
                    "NO_PROXY": "*",
                }
            )
            server = self.processes.start(
                key,
                [
                    str(self.litellm_python.parent / "litellm"),
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--num_workers",
                    str(workers),
                    "--log_config",
                    str(log_config),
                    "--telemetry",
                    "False",
                    # uvicorn's own multi-worker mode kills workers that take over 5 s to
                    # start, and LiteLLM takes longer than that here: use its gunicorn mode
                    # (app preloaded once, then forked) for several workers.
                    *(["--run_gunicorn"] if workers > 1 else []),
                ],
                env=env,
                cwd=self.tmp,
            )
            wait_http(server, f"http://127.0.0.1:{port}/health/liveliness", 120)
            url = f"http://127.0.0.1:{port}/v1/completions"
            headers = {**JSON_HEADERS, "Authorization": f"Bearer {LITELLM_MASTER_KEY}"}
            body = orjson.dumps(
                {
                    "model": SERVED_MODEL,
                    "prompt": FIM_PROMPT,
                    "max_tokens": 128,
                    "temperature": 0.2,
                    "stop": ["</s>", "[SUFFIX]", "[PREFIX]"],
                    "stream": False,
                }
            )
            load = Request(url, body, headers)
            stream = Request(url, body.replace(b'"stream":false', b'"stream":true'), headers)
            fmt, label = "sse", f"LiteLLM proxy {self.litellm_version}"
        else:
            raise ValueError(kind)
        target = Target(
            key, kind, label, workers, server, load, stream, fmt, time.monotonic() - started
        )
        if kind == "instance":
            target.helpers = helpers
        try:
            self.smoke(target)
        except Exception:
            for helper in target.helpers:
                self.processes.stop(helper)
            raise
        return target

    def start_instance_pair(
        self, key: str, port: int, workers: int, profile_stats: Path | None = None
    ) -> tuple[Server, tuple[Server, ...], dict[str, str]]:
        """An instance (``workers`` workers) and its own gateway (as many), both real
        processes: the instance is the gateway's issuer, its embedded-model settings point
        every feature at the upstream (codestral), and the admin's PAT authenticates.

        With one worker each and ``--pin-roles``, both roles run on CPU 0 only (the issue's
        "both roles on one core"): the load generator and the upstream keep the other cores.
        """
        gateway_port = free_port()
        data_dir = self.tmp / f"{key}-data"
        (data_dir / "model").mkdir(parents=True, exist_ok=True)
        (data_dir / "model" / "api-key").write_text(UPSTREAM_API_KEY + "\n")
        instance_url = f"http://127.0.0.1:{port}"
        pin = (
            ["taskset", "-c", "0"]
            if self.settings.pin_roles and workers == 1 and shutil.which("taskset")
            else []
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
        env.update(
            {
                "ENCLAVE_DATA_DIR": str(data_dir),
                "ENCLAVE_LOG_LEVEL": self.settings.gateway_log_level,
                "ENCLAVE_LOG_FORMAT": "json",
                "ENCLAVE_INSTANCE__WORKERS": str(workers),
                "ENCLAVE_INSTANCE__EXTERNAL_URL": instance_url,
                "ENCLAVE_INSTANCE__GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
                "ENCLAVE_INSTANCE__EMBEDDED_MODEL_ENDPOINT": (
                    f"http://127.0.0.1:{self.upstream_port}/v1"
                ),
                "ENCLAVE_INSTANCE__DEFAULT_MODEL_IDENTIFIER": f"custom_openai/{SERVED_MODEL}",
                "ENCLAVE_INSTANCE__DEFAULT_MODEL_FAMILY": "codestral",
                "ENCLAVE_INSTANCE__GATEWAY_ROUTES_SECRET_FILE": str(self.routes_secret_file),
                # The per-user limit runs on every request, with a ceiling out of reach.
                "ENCLAVE_INSTANCE__CODE_SUGGESTIONS_API_RATE_LIMIT": "100000000",
            }
        )
        run = (
            [str(BENCH_DIR / "profile_gateway.py"), str(profile_stats)]
            if profile_stats is not None
            else ["-m", "enclave"]
        )
        instance = self.processes.start(
            key,
            [*pin, PYTHON, *run, "instance", "--port", str(port)],
            env=env,
            cwd=REPO,
        )
        wait_http(instance, f"{instance_url}/.well-known/openid-configuration", 150)
        gateway_env = self.gateway_env(f"{key}-gateway-data", workers)
        gateway_env["ENCLAVE_GATEWAY__ISSUER_URL"] = instance_url
        gateway_env["ENCLAVE_LOG_FORMAT"] = "json"
        gateway = self.processes.start(
            f"{key}-gateway",
            [*pin, PYTHON, "-m", "enclave", "gateway", "--port", str(gateway_port)],
            env=gateway_env,
            cwd=REPO,
        )
        try:
            wait_http(gateway, f"http://127.0.0.1:{gateway_port}/monitoring/healthz", 60)
        except Exception:
            self.processes.stop(gateway)
            raise
        token = (data_dir / "admin-token.txt").read_text().strip()
        headers = {"PRIVATE-TOKEN": token, "Content-Type": "application/json"}
        return instance, (gateway,), headers

    def smoke(self, target: Target) -> None:
        """One real request must come back right (and, via a proxy, reach the upstream)."""
        before = self.upstream_counts()["completions"] if target.kind != "direct" else 0
        deadline = time.monotonic() + 30
        status, body = 0, b""
        while time.monotonic() < deadline:
            status, body = http_post(target.load.url, target.load.body, target.load.headers)
            if status == 200:
                break
            # e.g. 503 while the gateway fetches the issuer's keys or the routes
            time.sleep(0.2)
        if status != 200:
            raise RuntimeError(f"{target.key}: HTTP {status}: {body[:300]!r}")
        text = orjson.loads(body)["choices"][0]["text"]
        if text != COMPLETION_TEXT:
            raise RuntimeError(f"{target.key}: unexpected completion {text!r}")
        if target.kind != "direct" and self.upstream_counts()["completions"] <= before:
            raise RuntimeError(f"{target.key}: answered without calling the upstream")

    # -- measuring -----------------------------------------------------------------------------

    def run_point(self, target: Target, files: tuple[Path, Path], c: int, d: float) -> LoadResult:
        result = run_load(
            target.load,
            files[0],
            files[1],
            c,
            d,
            target.server.pid,
            self.settings.use_wrk,
            also_pids=target.helper_pids(),
        )
        cpu = result.cpu_us_per_request
        foreign = result.foreign_cpu_share or 0.0
        log(
            f"  {target.key:<12} c={c:<4} {result.rps:9.0f} req/s  p50 {result.p(50):7.2f} ms  "
            f"p99 {result.p(99):7.2f} ms  errors {result.error_count}"
            + (f"  cpu {cpu:6.0f} µs/req" if cpu is not None else "")
            + (f"  (other processes: {foreign * 100:.0f} % CPU)" if foreign > FOREIGN_WARN else "")
        )
        return result

    def measure(self, target: Target) -> dict[str, Any]:
        s = self.settings
        files = target.load.write(self.tmp, target.key)
        pids = target.pids()
        rss_idle, pss_idle = rss_bytes(pids), pss_bytes(pids)
        log(
            f"{target.key}: up in {target.startup_s:.1f} s, {len(pids)} process(es), "
            f"RSS {rss_idle / 2**20:.0f} MiB idle"
        )
        # Warm-up (every worker verifies the token once, pools fill); not recorded.
        run_load(target.load, files[0], files[1], 8, s.warmup_s, None, s.use_wrk)

        loads: list[LoadResult] = []
        over_limit = False
        last_good: int | None = None
        for c in s.connections:
            required = c in REQUIRED_CONNECTIONS
            # The instance path runs the required points only: the run must fit its budget.
            sweep = target.kind != "instance"
            if not required and (
                not sweep or over_limit or not self.budget.allows(s.sweep_duration_s + 60)
            ):
                continue
            duration = s.duration_s if required else s.sweep_duration_s
            result = self.run_point(target, files, c, duration)
            loads.append(result)
            good = result.error_count == 0 and result.p(99) <= P99_LIMIT_MS
            if good:
                last_good = c
            elif not over_limit:
                over_limit = True
                # One probe between the last good point and this one narrows the maximum.
                if last_good is not None and self.budget.allows(s.sweep_duration_s + 60):
                    middle = round((last_good * c) ** 0.5)
                    if last_good < middle < c and middle not in s.connections:
                        loads.append(self.run_point(target, files, middle, s.sweep_duration_s))
        loads.sort(key=lambda r: r.connections)

        log(
            f"  {target.key}: streaming {s.streams_sequential} sequential + "
            f"{s.streams_rounds}x{s.streams_concurrency} concurrent streams of {s.stream_frames} "
            f"frames, {s.stream_gap_ms:g} ms apart"
        )
        stream_stats = streaming.run(
            target.stream.url,
            target.stream.body,
            target.stream.headers,
            target.stream_format,
            s.stream_frames,
            s.streams_sequential,
            s.streams_concurrency,
            s.streams_rounds,
        )
        seq = stream_stats["sequential"]
        conc = stream_stats["concurrent"]
        log(
            f"  {target.key:<12} stream TTFB p50 "
            f"{streaming.percentile(seq.ttfb_ms, 50) or float('nan'):.2f} ms, gap p99 "
            f"{streaming.percentile(seq.gaps_ms, 99) or float('nan'):.2f} ms; lost "
            f"{seq.lost + conc.lost}, merged {seq.merged + conc.merged}, reordered "
            f"{seq.reordered + conc.reordered}, failed {seq.failed + conc.failed}"
        )
        time.sleep(2.0)
        pids = target.pids()
        rss_after, pss_after = rss_bytes(pids), pss_bytes(pids)
        peak = max((r.server_peak_rss or 0 for r in loads), default=0)
        peak_pss = max((r.server_peak_pss or 0 for r in loads), default=0)
        log(
            f"  {target.key}: RSS idle {rss_idle / 2**20:.0f} MiB, peak under load "
            f"{peak / 2**20:.0f} MiB, after {rss_after / 2**20:.0f} MiB (PSS {pss_idle / 2**20:.0f}"
            f" / {peak_pss / 2**20:.0f} / {pss_after / 2**20:.0f} MiB)"
        )
        return {
            "key": target.key,
            "kind": target.kind,
            "label": target.label,
            "workers": target.workers,
            "status": "ok",
            "startup_s": round(target.startup_s, 2),
            "processes": len(pids),
            "rss": {"idle": rss_idle, "load_peak": peak, "after": rss_after},
            "pss": {"idle": pss_idle, "load_peak": peak_pss, "after": pss_after},
            "loads": [r.as_dict() for r in loads],
            "streaming": {k: v.as_dict() for k, v in stream_stats.items()},
        }

    def run_target(self, kind: str, workers: int, estimate_s: float) -> dict[str, Any]:
        key = f"{kind}-{workers}w"
        if not self.budget.allows(estimate_s):
            note = f"{key} skipped: time budget ({self.budget.left():.0f} s left)"
            self.notes.append(note)
            log(note)
            return {"key": key, "kind": kind, "workers": workers, "status": "skipped", "note": note}
        log(f"== {key}")
        target: Target | None = None
        try:
            target = self.start_target(kind, workers)
            return self.measure(target)
        except Exception as exc:  # one target failing must not lose the others
            note = f"{key} failed: {type(exc).__name__}: {exc}"
            self.notes.append(note.splitlines()[0][:500])
            log(note[:3000])
            return {"key": key, "kind": kind, "workers": workers, "status": "failed", "note": note}
        finally:
            if target is not None:
                self.processes.stop(target.server)
                for helper in target.helpers:
                    self.processes.stop(helper)
            else:
                self.processes.stop_named(key)
                self.processes.stop_named(f"{key}-gateway")

    # -- profile -------------------------------------------------------------------------------

    def profile_gateway(self) -> dict[str, Any] | None:
        """cProfile the 1-worker gateway under c=16 load; top functions to profile.txt."""
        s = self.settings
        if not self.budget.allows(s.duration_s + 40):
            self.notes.append("profile skipped: time budget")
            return None
        log("== profile: enclave-1w under cProfile, c=16")
        port = free_port()
        stats_path = self.tmp / "gateway.pstats"
        env = self.gateway_env("enclave-data-profile", 1)
        server = self.processes.start(
            "enclave-profile",
            [
                PYTHON,
                str(BENCH_DIR / "profile_gateway.py"),
                str(stats_path),
                "gateway",
                "--port",
                str(port),
            ],
            env=env,
            cwd=REPO,
        )
        try:
            wait_http(server, f"http://127.0.0.1:{port}/monitoring/healthz", 60)
            url = f"http://127.0.0.1:{port}/v2/code/completions"
            request = Request(url, gitlab_body(self.upstream_port, False), self.gitlab_headers())
            target = Target(
                "profile", "enclave", "Enclave (cProfile)", 1, server, request, request, "raw", 0
            )
            self.smoke(target)
            files = request.write(self.tmp, "profile")
            run_load(request, files[0], files[1], 8, s.warmup_s, None, s.use_wrk)
            os.kill(server.pid, signal.SIGUSR1)  # profile the measured load only
            result = run_load(request, files[0], files[1], 16, s.duration_s, None, s.use_wrk)
            os.kill(server.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 20
            while not stats_path.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # let the dump finish
            log(f"  under cProfile: {result.rps:.0f} req/s at c=16 (profiling slows it down)")
        except Exception as exc:
            self.notes.append(f"profile failed: {type(exc).__name__}: {exc}".splitlines()[0])
            return None
        finally:
            self.processes.stop(server, timeout_s=15)
        if not stats_path.exists():
            self.notes.append("profile failed: the profiled gateway wrote no statistics")
            return None
        from profile_gateway import summarise

        text, summary = summarise(stats_path, result.requests)
        (s.results_dir / "profile.txt").write_text(text)
        return {"requests": result.requests, "rps_under_profiler": result.rps, **summary}

    def profile_instance(self) -> dict[str, Any] | None:
        """cProfile the 1-worker instance (its gateway unprofiled) under c=16 load, PAT path;
        top functions to profile-instance.txt."""
        s = self.settings
        if not self.budget.allows(s.duration_s + 60):
            self.notes.append("instance profile skipped: time budget")
            return None
        log("== profile: instance-1w under cProfile, c=16")
        port = free_port()
        stats_path = self.tmp / "instance.pstats"
        helpers: tuple[Server, ...] = ()
        server: Server | None = None
        try:
            server, helpers, headers = self.start_instance_pair(
                "instance-profile", port, 1, profile_stats=stats_path
            )
            url = f"http://127.0.0.1:{port}/api/v4/code_suggestions/completions"
            request = Request(url, instance_body(False), headers)
            target = Target(
                "instance-profile", "instance", "instance (cProfile)", 1, server, request,
                request, "raw", 0, helpers,
            )  # fmt: skip
            self.smoke(target)
            files = request.write(self.tmp, "instance-profile")
            run_load(request, files[0], files[1], 8, s.warmup_s, None, s.use_wrk)
            os.kill(server.pid, signal.SIGUSR1)
            result = run_load(request, files[0], files[1], 16, s.duration_s, None, s.use_wrk)
            os.kill(server.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 20
            while not stats_path.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)
            log(f"  under cProfile: {result.rps:.0f} req/s at c=16 (profiling slows it down)")
        except Exception as exc:
            self.notes.append(
                f"instance profile failed: {type(exc).__name__}: {exc}".splitlines()[0]
            )
            return None
        finally:
            for helper in helpers:
                self.processes.stop(helper)
            if server is not None:
                self.processes.stop(server, timeout_s=15)
            else:
                self.processes.stop_named("instance-profile")
                self.processes.stop_named("instance-profile-gateway")
        if not stats_path.exists():
            self.notes.append("instance profile failed: no statistics written")
            return None
        from profile_gateway import summarise

        text, summary = summarise(
            stats_path, result.requests, what="Enclave instance (PAT path, gateway unprofiled)"
        )
        (s.results_dir / "profile-instance.txt").write_text(text)
        return {"requests": result.requests, "rps_under_profiler": result.rps, **summary}


# -- helpers ----------------------------------------------------------------------------------


def _litellm_version(python: Path) -> str | None:
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def _install_litellm(python: Path, limit_s: float) -> str | None:
    """Create the virtualenv and install the pinned proxy; the error text, or None."""
    uv = REPO / ".venv" / "bin" / "uv"
    spec = f"litellm[proxy]=={LITELLM_VERSION}"
    if uv.exists():
        steps = [
            [str(uv), "venv", "--quiet", "--allow-existing", "--python", PYTHON, str(LITELLM_VENV)],
            [str(uv), "pip", "install", "--quiet", "--python", str(python), spec],
        ]
    else:
        steps = [
            [PYTHON, "-m", "venv", str(LITELLM_VENV)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec],
        ]
    deadline = time.monotonic() + limit_s
    for argv in steps:
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                check=False,
                timeout=max(5.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            return f"timed out after {limit_s:.0f} s"
        if done.returncode != 0:
            return (done.stderr or done.stdout).strip().splitlines()[-1][:300]
    return None


def _environment(settings: Settings, bench: Bench) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    try:
        from enclave import __version__ as enclave_version
    except ImportError:
        enclave_version = "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_generator": wrk_version() if settings.use_wrk else "bench/loadgen.py (asyncio)",
        "litellm": bench.litellm_version,
        "enclave": enclave_version,
        "commit": commit + (" (src/ modified)" if dirty else ""),
        "quick": settings.quick,
        "duration_s": settings.duration_s,
        "sweep_duration_s": settings.sweep_duration_s,
        "connections": list(settings.connections),
        "upstream_latency_ms": settings.upstream_latency_ms,
        "stream_frames": settings.stream_frames,
        "stream_gap_ms": settings.stream_gap_ms,
        "streams_sequential": settings.streams_sequential,
        "streams_concurrency": settings.streams_concurrency,
        "streams_rounds": settings.streams_rounds,
        "gateway_log_level": settings.gateway_log_level,
        "p99_limit_ms": P99_LIMIT_MS,
        "gateway_metrics_endpoint": bench.metrics_status,
        "busy_before": round(bench.busy_before, 3),
        "busy_after": round(bench.busy_after, 3),
    }


def _settings(args: argparse.Namespace) -> Settings:
    quick = bool(args.quick)
    if quick and args.connections == DEFAULT_CONNECTIONS:
        connections: tuple[int, ...] = REQUIRED_CONNECTIONS
    else:
        asked = {int(c) for c in args.connections.split(",") if c.strip()}
        connections = tuple(sorted(asked | set(REQUIRED_CONNECTIONS)))
    return Settings(
        duration_s=args.duration if args.duration else (2.0 if quick else 6.0),
        sweep_duration_s=args.sweep_duration if args.sweep_duration else (2.0 if quick else 4.0),
        warmup_s=1.0 if quick else 2.0,
        connections=connections,
        workers=tuple(int(w) for w in args.workers.split(",")),
        kinds=tuple(k.strip() for k in args.targets.split(",") if k.strip()),
        upstream_latency_ms=args.upstream_latency_ms,
        stream_frames=args.stream_frames,
        stream_gap_ms=args.stream_gap_ms,
        streams_sequential=5 if quick else args.streams,
        streams_concurrency=8 if quick else 16,
        streams_rounds=1 if quick else 2,
        budget_s=args.budget,
        profile=args.profile if args.profile is not None else not quick,
        gateway_log_level=args.gateway_log_level,
        results_dir=args.results_dir,
        quick=quick,
        pin_roles=args.pin_roles,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark Enclave's gateway against a direct call and LiteLLM "
        "(loopback only, bounded).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: short points, ~1-2 min")
    parser.add_argument("--duration", type=float, help="seconds per c=1/16/64 point [6; quick 2]")
    parser.add_argument("--sweep-duration", type=float, help="seconds per other point [4; 2]")
    parser.add_argument(
        "--connections",
        default=DEFAULT_CONNECTIONS,
        help="concurrency sweep; 1, 16 and 64 always run, the rest while p99 <= 20 ms "
        f"[{DEFAULT_CONNECTIONS}]",
    )
    parser.add_argument("--workers", default="1,2", help="server worker counts [1,2]")
    parser.add_argument(
        "--targets",
        default="direct,enclave,openai,instance,litellm",
        help="which targets: direct, enclave (GitLab /v2/code/completions), openai (the "
        "gateway's /v1/completions), instance (PAT → instance "
        "/api/v4/code_suggestions/completions → gateway), litellm [all five]",
    )
    parser.add_argument(
        "--pin-roles",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the 1-worker instance and its gateway on CPU 0 only (both roles on one "
        "core) [on]",
    )
    parser.add_argument("--skip-litellm", action="store_true", help="do not install/run LiteLLM")
    parser.add_argument(
        "--no-wrk", action="store_true", help="use bench/loadgen.py even when wrk is there"
    )
    parser.add_argument(
        "--upstream-latency-ms", type=float, default=0.0, help="fake model latency [0]"
    )
    parser.add_argument("--stream-frames", type=int, default=20, help="frames per stream [20]")
    parser.add_argument("--stream-gap-ms", type=float, default=10.0, help="frame gap [10]")
    parser.add_argument("--streams", type=int, default=40, help="sequential streams [40]")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cProfile the 1-worker gateway under load [on; off with --quick]",
    )
    parser.add_argument(
        "--gateway-log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the gateway's ENCLAVE_LOG_LEVEL; info (the default) writes the access log [info]",
    )
    parser.add_argument("--budget", type=float, default=570.0, help="hard time budget, s [570]")
    parser.add_argument(
        "--results-dir", type=Path, default=BENCH_DIR / "results", help="[bench/results]"
    )
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temporary dir (server logs)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # so the finally below stops every child
    settings = _settings(args)
    if args.skip_litellm:
        settings.kinds = tuple(k for k in settings.kinds if k != "litellm")
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(settings.budget_s)
    busy_before = machine_busy()
    log(f"machine busy before the run: {busy_before * 100:.0f} % of {os.cpu_count()} cores")

    if args.no_wrk or not ensure_wrk(log):
        settings.use_wrk = False
        log("load generator: bench/loadgen.py (asyncio; lower ceilings than wrk)")

    with _temporary_dir(args.keep_tmp) as tmp:
        bench = Bench(settings, budget, tmp)
        bench.busy_before = busy_before
        try:
            return _run(bench, settings, budget)
        finally:
            bench.processes.stop_all()
            if args.keep_tmp:
                log(f"server logs kept in {tmp}")


def _run(bench: Bench, settings: Settings, budget: Budget) -> int:
    if "litellm" in settings.kinds:
        bench.prepare_litellm()
    bench.start_shared()
    if {"enclave", "openai", "instance"} & set(settings.kinds):
        probe = subprocess.run(
            [PYTHON, "-c", "import enclave.gateway.app"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        bench.gateway_available = probe.returncode == 0
        if not bench.gateway_available:
            lines = (probe.stderr or "?").strip().splitlines() or ["?"]
            bench.notes.append(f"Enclave gateway skipped: it does not import ({lines[-1]})")
            log(bench.notes[-1])

    points = len(settings.connections)
    per_target = settings.warmup_s + points * settings.duration_s + 25
    targets: list[dict[str, Any]] = []
    for workers in settings.workers:
        for kind in settings.kinds:
            if kind == "litellm" and bench.litellm_python is None:
                continue
            if kind in ("enclave", "openai", "instance") and not bench.gateway_available:
                continue
            estimate = per_target + {"litellm": 30, "instance": 15}.get(kind, 5)
            targets.append(bench.run_target(kind, workers, estimate))

    profile = instance_profile = None
    if settings.profile and bench.gateway_available:
        profile = bench.profile_gateway()
        if "instance" in settings.kinds:
            instance_profile = bench.profile_instance()

    for server in list(bench.processes.servers):
        bench.processes.stop(server)
    bench.busy_after = machine_busy()
    log(f"machine busy after the run: {bench.busy_after * 100:.0f} %")
    results = {
        "environment": _environment(settings, bench),
        "targets": targets,
        "profile": profile,
        "instance_profile": instance_profile,
        "notes": bench.notes,
        "elapsed_s": round(time.monotonic() - _started, 1),
    }
    out = settings.results_dir
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    write_report(results, out)
    log(f"wrote {out / 'report.md'}, {out / 'latency.png'} and {out / 'results.json'}")
    print()
    print((out / "report.md").read_text())
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _temporary_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="enclave-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
