"""effnet-serve's /metrics, in the Prometheus text format (prometheus_client's registry).

Everything is counted in the server process: the workers report their timings with each
reply, and the pool's state (queue, workers, their memory) is read when scraped.
"""
from __future__ import annotations

from prometheus_client import (CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..procs import resident_bytes

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
ROUTES = {"/", "/v1/classify", "/v1/model", "/healthz", "/metrics"}     # others count as "other"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServiceMetrics:
    def __init__(self, pool, connections=None, uploads=None, rate=None):
        disable_created_metrics()       # *_created series: noise for a single long-lived process
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("effnet_http_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("effnet_http_request_duration_seconds",
                                 "Time from the request's arrival to the end of its response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.preprocess = Histogram("effnet_preprocess_seconds", "Decoding, resizing and normalising "
                                    "one image (in a worker)", buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("effnet_inference_seconds", "Running the model on one image "
                                   "(in a worker)", buckets=LATENCY_BUCKETS, registry=r)
        ProcessCollector(registry=r)        # process_resident_memory_bytes etc., the server itself
        r.register(_PoolCollector(pool))
        if connections is not None:
            r.register(_ConnectionCollector(connections))
        if uploads is not None:
            r.register(_UploadCollector(uploads, rate))

    def observe(self, route: str, status: int, seconds: float) -> None:
        route = "/static" if route.startswith("/static/") else route if route in ROUTES else "other"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_result(self, result: dict) -> None:
        self.preprocess.observe(result["preprocess_ms"] / 1e3)
        self.inference.observe(result["inference_ms"] / 1e3)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector:
    def __init__(self, pool):
        self.pool = pool

    def collect(self):
        p = self.pool
        yield GaugeMetricFamily("effnet_queue_depth", "Requests waiting for a worker to start on them",
                                p.queued())
        yield GaugeMetricFamily("effnet_classify_held", "Classify requests holding a place: reading "
                                "the upload, queued or running", p.held)
        yield GaugeMetricFamily("effnet_classify_running", "Classify requests a worker is running",
                                p.running())
        yield GaugeMetricFamily("effnet_classify_capacity", "Places (workers + queue) before 503", p.size + p.max_queue)
        yield GaugeMetricFamily("effnet_workers_ready", "Worker processes able to take a request",
                                sum(w.ready for w in p.workers.values()))
        yield CounterMetricFamily("effnet_worker_restarts", "Workers replaced after they stopped", p.restarts)
        rss = GaugeMetricFamily("effnet_worker_resident_memory_bytes", "Resident memory of each worker",
                                labels=["worker"])
        for w in list(p.workers.values()):
            size = resident_bytes(w.pid)
            if size is not None:
                rss.add_metric([str(w.slot)], size)
        yield rss


class _ConnectionCollector:
    def __init__(self, connections):
        self.c = connections

    def collect(self):
        c = self.c
        yield GaugeMetricFamily("effnet_connections_open", "Open client connections", len(c.open))
        yield GaugeMetricFamily("effnet_connections_max", "Open connections allowed (--max-connections)",
                                c.limits.max_connections)
        yield GaugeMetricFamily("effnet_open_files_limit", "The process's descriptor limit (soft RLIMIT_NOFILE)",
                                c.limits.fd_limit)
        timed_out = CounterMetricFamily("effnet_connections_timed_out", "Connections closed by their deadline: "
                                        "headers (--header-timeout) or idle (--keep-alive-timeout)", labels=["phase"])
        evicted = CounterMetricFamily("effnet_connections_evicted", "Connections closed to make room for a new one "
                                      "at --max-connections", labels=["phase"])
        for phase in ("handshake", "headers", "idle"):
            timed_out.add_metric([phase], c.timed_out[phase])
            evicted.add_metric([phase], c.evicted[phase])
        yield timed_out
        yield evicted
        yield CounterMetricFamily("effnet_connections_refused", "New connections refused (503) at "
                                  "--max-connections, every open one running a request", c.refused)


class _UploadCollector:
    def __init__(self, uploads, rate):
        self.uploads, self.rate = uploads, rate

    def collect(self):
        u = self.uploads
        yield GaugeMetricFamily("effnet_uploads_reading", "Classify requests still reading their upload", u.reading)
        yield GaugeMetricFamily("effnet_upload_bytes_held", "Bytes of uploads held in memory", u.held)
        refused = CounterMetricFamily("effnet_uploads_refused", "Classify requests refused: upload under "
                                      "--min-upload-rate (408), over --max-client-requests (429), or over the "
                                      "memory budget (503)", labels=["reason"])
        for reason, n in u.refused.items():
            refused.add_metric([reason], n)
        yield refused
        if self.rate is not None:
            yield GaugeMetricFamily("effnet_rate_limit_clients", "Clients with a rate-limit bucket of their own",
                                    len(self.rate.buckets))
            yield CounterMetricFamily("effnet_rate_limit_overflow", "Requests of new clients counted in the shared "
                                      "overflow bucket (every tracked client active within a refill time)",
                                      self.rate.overflowed)
