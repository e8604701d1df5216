"""Prometheus metrics. Labels stay bounded: route (the route's template), status class, direction, and
model (one value per loaded model).

A server of several processes (MTSERVE_PROCESSES) runs prometheus_client's multiprocess mode: each
process writes its values to files in PROMETHEUS_MULTIPROC_DIR, which the parent sets before it starts
them, and /metrics in any process sums every live process's values. Gauges say how: in-flight work
and memory add up over the processes, a model's count of unpacked graphs and its info take the
largest.
"""

from __future__ import annotations

import os
from typing import TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics import MetricWrapperBase

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

LabelledMetric = TypeVar("LabelledMetric", bound=MetricWrapperBase)

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        self.requests = Counter(
            "mtserve_http_requests", "HTTP requests answered", ["route", "status_class", "direction"], registry=r
        )
        self.request_seconds = Histogram(
            "mtserve_http_request_duration_seconds", "HTTP request duration", ["route", "direction"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "mtserve_http_requests_in_flight", "HTTP requests being served", registry=r, multiprocess_mode="livesum"
        )
        self.queue_wait = Histogram(
            "mtserve_queue_wait_seconds", "time a sentence waits for its batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "mtserve_queue_depth", "sentences waiting for the model", registry=r, multiprocess_mode="livesum"
        )
        self.rejected = Counter("mtserve_queue_rejected", "requests refused because the queue was full", registry=r)
        self.batch_sentences = Histogram(
            "mtserve_batch_sentences", "sentences per model batch", ["model"], buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "mtserve_batch_tokens", "source tokens per model batch", ["model"], buckets=TOKEN_BUCKETS, registry=r
        )
        self.loop_batches = Counter(
            "mtserve_loop_batches",
            "batches searched on the event loop rather than a worker thread: a lone client's sentence",
            registry=r,
        )
        self.inference_seconds = Histogram(
            "mtserve_inference_duration_seconds", "model time per batch", ["model"], buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.input_tokens = Counter(
            "mtserve_input_tokens", "source tokens translated", ["direction", "model"], registry=r
        )
        self.output_tokens = Counter(
            "mtserve_generated_tokens", "target tokens generated", ["direction", "model"], registry=r
        )
        self.model_memory = Gauge(
            "mtserve_model_resident_bytes", "resident memory that loading the model added", ["model"], registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.unpacked_graphs = Gauge(
            "mtserve_model_unpacked_graphs",
            "graphs of a loaded model opened without a packed copy (none could be made or onnxruntime refused "
            "it): their sessions pack their own weights, about twice the memory",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.pivoted = Counter(
            "mtserve_pivot_texts",
            "texts translated through a chain of models (no model serves the direction), by chain",
            ["route"],
            registry=r,
        )
        self.models_loaded = Gauge(
            "mtserve_models_loaded", "models in memory (in each process, summed)", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.loads = Counter("mtserve_model_loads", "models loaded, by model", ["model"], registry=r)
        self.unloads = Counter(
            "mtserve_model_unloads", "models unloaded to stay within the memory budget, by model", ["model"], registry=r
        )
        self.load_seconds = Histogram(
            "mtserve_model_load_seconds", "time to load a model", buckets=LATENCY_BUCKETS, registry=r
        )
        self.load_waits = Counter(
            "mtserve_model_load_waits", "requests that waited for a model another request was loading", ["model"],
            registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "mtserve_model_info", "the model being served", ["name", "version", "sha"], registry=r,
            multiprocess_mode="livemax",
        )  # fmt: skip

    def child(self, metric: LabelledMetric, *values: str) -> LabelledMetric:
        """`metric.labels(*values)`, kept: prometheus_client's `labels()` converts each value and takes a
        lock on every call, and a request asks for the same few children each time (seven of them for
        a sentence). The labels are bounded (above), so are the children kept."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return cast(LabelledMetric, found)

    def exposition(self) -> bytes:
        """The text /metrics answers: this process's registry, or every live process's values in a server
        of several processes."""
        if os.environ.get(MULTIPROCESS_DIR_VARIABLE):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
