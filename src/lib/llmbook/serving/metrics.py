"""Prometheus metrics by hand: counters, gauges and histograms in the text exposition format (version 0.0.4).

A scrape of ``GET /metrics`` reads lines such as::

    # HELP llmbook_requests_total Requests finished, by finish reason.
    # TYPE llmbook_requests_total counter
    llmbook_requests_total{finish_reason="length"} 12
    # TYPE llmbook_time_to_first_token_seconds histogram
    llmbook_time_to_first_token_seconds_bucket{le="0.1"} 9
    llmbook_time_to_first_token_seconds_bucket{le="+Inf"} 12
    llmbook_time_to_first_token_seconds_sum 0.73
    llmbook_time_to_first_token_seconds_count 12

A histogram's buckets are cumulative: ``_bucket{le="x"}`` counts the observations ``<= x``, so the
``+Inf`` bucket equals ``_count``, and a quantile is estimated by interpolating inside the bucket that
crosses it (Prometheus' ``histogram_quantile``). The names follow vLLM's ``vllm:`` metrics with an
``llmbook_`` prefix. Every metric takes a lock: the engine thread writes while the server thread reads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import TypeVar

# vLLM's buckets with two finer ones first: a tiny model on a CPU answers in milliseconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
BACKSLASH, NEWLINE = "\\", "\n"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def _escape(value: str) -> str:
    return value.replace(BACKSLASH, 2 * BACKSLASH).replace(NEWLINE, BACKSLASH + "n").replace('"', BACKSLASH + '"')


def _label_text(labels: Labels) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}" if labels else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels must be {sorted(self.labelnames)}, got {sorted(labels)}")
        return tuple((name, str(labels[name])) for name in self.labelnames)

    def samples(self) -> list[tuple[str, Labels, float]]:
        raise NotImplementedError

    def render(self) -> Iterable[str]:
        help_text = self.documentation.replace(BACKSLASH, 2 * BACKSLASH).replace(NEWLINE, BACKSLASH + "n")
        yield f"# HELP {self.name} {help_text}"
        yield f"# TYPE {self.name} {self.kind}"
        for name, labels, value in self.samples():
            yield f"{name}{_label_text(labels)} {_number(value)}"


class Counter(_Metric):
    """A total that only goes up (requests, tokens); ``inc`` with a negative amount is an error."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[Labels, float] = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up, got inc({amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[tuple[str, Labels, float]]:
        with self._lock:
            return [(self.name, key, value) for key, value in sorted(self._values.items())]


class Gauge(_Metric):
    """A value that goes up and down (requests waiting, blocks in use): the last ``set`` wins."""

    kind = "gauge"

    def __init__(self, name: str, documentation: str) -> None:
        super().__init__(name, documentation)
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def value(self) -> float:
        with self._lock:
            return self._value

    def samples(self) -> list[tuple[str, Labels, float]]:
        return [(self.name, (), self.value())]


class Histogram(_Metric):
    """Observations counted into cumulative buckets ``le`` (upper bounds, ``+Inf`` added), with their sum."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        super().__init__(name, documentation)
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{self.name}: buckets must be strictly increasing, got {list(buckets)}")
        self.bounds = bounds if math.isinf(bounds[-1]) else [*bounds, math.inf]
        self._counts = [0] * len(self.bounds)  # per bucket, not cumulative: summed when rendered
        self._sum = 0.0

    def observe(self, value: float) -> None:
        index = next(i for i, bound in enumerate(self.bounds) if value <= bound)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def samples(self) -> list[tuple[str, Labels, float]]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        rows, running = [], 0
        for bound, count in zip(self.bounds, counts, strict=True):
            running += count
            rows.append((f"{self.name}_bucket", (("le", _number(bound)),), float(running)))
        rows += [(f"{self.name}_sum", (), total), (f"{self.name}_count", (), float(running))]
        return rows


M = TypeVar("M", bound=_Metric)


class Registry:
    """Metrics in registration order; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"a metric named {metric.name!r} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        return "".join(line + "\n" for metric in self._metrics.values() for line in metric.render())


class ServingMetrics:
    """The engine's metrics: scheduler state (gauges, refreshed every step), totals, and latency histograms."""

    def __init__(self) -> None:
        self.registry = r = Registry()
        self.waiting = r.register(Gauge("llmbook_requests_waiting", "Requests queued for their first forward pass."))
        self.running = r.register(Gauge("llmbook_requests_running", "Sequences in the running batch."))
        self.blocks_used = r.register(Gauge("llmbook_kv_blocks_used", "KV-cache blocks held by sequences."))
        self.blocks_total = r.register(Gauge("llmbook_kv_blocks_total", "KV-cache blocks in the pool."))
        self.preemptions = r.register(Counter("llmbook_preemptions_total",
                                              "Sequences preempted (blocks freed, recomputed later)."))
        self.prefix_hits = r.register(Counter("llmbook_prefix_cache_hit_tokens_total",
                                              "Prompt tokens served from the prefix cache."))
        self.requests = r.register(Counter("llmbook_requests_total", "Requests finished, by finish reason.",
                                           ("finish_reason",)))
        self.rejected = r.register(Counter("llmbook_requests_rejected_total",
                                           "Requests refused before running, by reason.", ("reason",)))
        self.generated = r.register(Counter("llmbook_generated_tokens_total", "Tokens generated (all samples)."))
        self.ttft = r.register(Histogram("llmbook_time_to_first_token_seconds",
                                         "Seconds from a request's arrival to its first token.", TTFT_BUCKETS))
        self.itl = r.register(Histogram("llmbook_inter_token_latency_seconds",
                                        "Seconds between consecutive tokens of one sample.", ITL_BUCKETS))

    def render(self) -> str:
        return self.registry.render()
