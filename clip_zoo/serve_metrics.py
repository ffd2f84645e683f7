"""Prometheus metrics of ``clip-zoo serve``, kept in memory and written in the text exposition format
(version 0.0.4) by hand: counters, histograms and gauges, thread-safe, no extra dependency.

Names: ``clip_zoo_requests_total{endpoint,status}``, ``clip_zoo_request_seconds{endpoint}`` (latency
histogram), ``clip_zoo_batch_size`` (inputs per model forward), ``clip_zoo_batch_seconds`` (time
per forward), ``clip_zoo_rejected_total{reason}`` (503s from backpressure), ``clip_zoo_queue_depth``
and ``clip_zoo_inflight_requests`` (gauges), ``clip_zoo_model_ready``.
"""
from __future__ import annotations

import bisect
import math
import threading
from typing import Callable, Iterable, Optional

__all__ = ["Counter", "Histogram", "Metrics", "LATENCY_BUCKETS", "BATCH_BUCKETS", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Counter:
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, labels
        self._values: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted(self._values.items())
        for labels, v in items:
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(v)}"


class Histogram:
    """Cumulative ``_bucket{le=...}``, ``_sum`` and ``_count`` per label set."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, labels
        self.buckets = tuple(sorted(buckets))
        self._data: dict[tuple, list] = {}  # labels -> [per-bucket counts (+Inf last), sum, count]
        self._lock = threading.Lock()

    def observe(self, value: float, *labels) -> None:
        with self._lock:
            d = self._data.setdefault(labels, [[0] * (len(self.buckets) + 1), 0.0, 0])
            d[0][bisect.bisect_left(self.buckets, value)] += 1
            d[1] += value
            d[2] += 1

    def sum_count(self, *labels) -> tuple[float, int]:
        with self._lock:
            d = self._data.get(labels)
            return (d[1], d[2]) if d else (0.0, 0)

    def samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted((k, ([*v[0]], v[1], v[2])) for k, v in self._data.items())
        if not items and not self.label_names:  # an unlabelled histogram is shown from the start, at zero
            items = [((), ([0] * (len(self.buckets) + 1), 0.0, 0))]
        for labels, (counts, total, count) in items:
            running = 0
            for bound, c in zip((*self.buckets, math.inf), counts):
                running += c
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_number(total)}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {count}"


class _Gauge:
    """A value read from a callback at exposition time."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def samples(self) -> Iterable[str]:
        yield f"{self.name} {_number(self.read())}"


class Metrics:
    """Every metric of one server; :meth:`render` gives the ``/metrics`` body."""

    def __init__(self) -> None:
        self.requests = Counter("clip_zoo_requests_total", "HTTP requests answered, by endpoint and status.",
                                ("endpoint", "status"))
        self.latency = Histogram("clip_zoo_request_seconds", "Request latency (seconds), by endpoint.",
                                 LATENCY_BUCKETS, ("endpoint",))
        self.batch_size = Histogram("clip_zoo_batch_size", "Inputs per model forward (the micro-batcher's batches).",
                                    BATCH_BUCKETS)
        self.batch_seconds = Histogram("clip_zoo_batch_seconds", "Time of one model forward (seconds).",
                                       LATENCY_BUCKETS)
        self.rejected = Counter("clip_zoo_rejected_total", "Requests refused with 503 (backpressure), by reason.",
                                ("reason",))
        self.inflight = 0
        self._inflight_lock = threading.Lock()
        self._gauges: list[_Gauge] = [_Gauge("clip_zoo_inflight_requests", "Requests being handled.",
                                             lambda: self.inflight)]

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        """Add a gauge read by ``read()`` at every scrape."""
        self._gauges.append(_Gauge(name, help, read))

    def enter(self) -> None:
        with self._inflight_lock:
            self.inflight += 1

    def leave(self, endpoint: Optional[str], status: int, seconds: float) -> None:
        with self._inflight_lock:
            self.inflight -= 1
        if endpoint is not None:
            self.requests.inc(endpoint, str(status))
            self.latency.observe(seconds, endpoint)

    def render(self) -> str:
        lines = []
        for m in (self.requests, self.latency, self.batch_size, self.batch_seconds, self.rejected, *self._gauges):
            lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}", *m.samples()]
        return "\n".join(lines) + "\n"
