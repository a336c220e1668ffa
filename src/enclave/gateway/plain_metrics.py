"""prometheus-client metric types whose values are plain floats, for the per-request series.

prometheus-client keeps every value behind a lock (and, per histogram observation, walks the
buckets in Python): about four Python calls per counter increment and eight per observation,
some ten updates per gateway request. These subclasses change only how a child stores and
updates its value; names, help, labels, child creation, ``collect()`` and so ``/metrics`` are
prometheus-client's own, sample for sample (``tests/unit/gateway/test_plain_metrics.py``).

Only for one process: a worker in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) must write
its values to prometheus-client's shared files, so :func:`metric_types` gives the stock classes
there. Unlocked ``+=`` is safe because the gateway updates its metrics on the event loop's
thread only (its worker threads read files, never count). Exemplars are not kept: the gateway
records none, and the text format it serves has no place for them.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import NamedTuple

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client import metrics as _client_metrics
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString


def _use_created() -> bool:
    # prometheus-client's switch for the ``_created`` samples (env or disable_created_metrics()).
    return bool(_client_metrics._use_created)


class PlainCounter(Counter):
    """A :class:`~prometheus_client.Counter` whose children count in a plain float."""

    def _metric_init(self) -> None:
        self._count = 0.0
        self._created = time.time()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._count += amount

    def reset(self) -> None:
        self._count = 0.0
        self._created = time.time()

    def _child_samples(self) -> Iterable[Sample]:
        total = Sample("_total", {}, self._count, None, None)
        if _use_created():
            return (total, Sample("_created", {}, self._created, None, None))
        return (total,)


class PlainGauge(Gauge):
    """A :class:`~prometheus_client.Gauge` whose children hold a plain float."""

    def _metric_init(self) -> None:
        self._level = 0.0

    def inc(self, amount: float = 1) -> None:
        self._level += amount

    def dec(self, amount: float = 1) -> None:
        self._level -= amount

    def set(self, value: float) -> None:
        self._level = float(value)

    def _child_samples(self) -> Iterable[Sample]:
        return (Sample("", {}, self._level, None, None),)


class PlainHistogram(Histogram):
    """A :class:`~prometheus_client.Histogram` whose children keep per-bucket counts in a list
    and find an observation's bucket by bisection."""

    def _metric_init(self) -> None:
        self._created = time.time()
        self._counts = [0.0] * len(self._upper_bounds)
        self._total = 0.0

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        self._total += amount
        # The first bucket whose bound is >= amount, as prometheus-client's walk finds it; the
        # last bound is +Inf, so only NaN (counted in the sum alone, as there) falls through.
        if amount <= INF:
            self._counts[bisect_left(self._upper_bounds, amount)] += 1

    def _child_samples(self) -> Iterable[Sample]:
        samples = []
        acc = 0.0
        for count, bound in zip(self._counts, self._upper_bounds, strict=True):
            acc += count
            samples.append(Sample("_bucket", {"le": floatToGoString(bound)}, acc, None, None))
        samples.append(Sample("_count", {}, acc, None, None))
        if self._upper_bounds[0] >= 0:
            samples.append(Sample("_sum", {}, self._total, None, None))
        if _use_created():
            samples.append(Sample("_created", {}, self._created, None, None))
        return tuple(samples)


class MetricTypes(NamedTuple):
    counter: type[Counter]
    gauge: type[Gauge]
    histogram: type[Histogram]


STOCK: MetricTypes = MetricTypes(Counter, Gauge, Histogram)
PLAIN: MetricTypes = MetricTypes(PlainCounter, PlainGauge, PlainHistogram)


def metric_types(multiprocess: bool) -> MetricTypes:
    """The classes for the hot series: prometheus-client's own where workers share files."""
    return STOCK if multiprocess else PLAIN


__all__ = ["PLAIN", "STOCK", "MetricTypes", "PlainCounter", "PlainGauge", "PlainHistogram"]
