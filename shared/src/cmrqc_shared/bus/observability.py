"""Per-process /healthz, /readyz and Prometheus /metrics over a small threaded HTTP server."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

logger = logging.getLogger(__name__)

#: Handler latency buckets, s: from 1 ms (pass-through) to 60 s (RCA on a slow node).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RunnerMetrics:
    """The metrics every bus runner exposes, in their own registry (one per runner)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.records_in = Counter(
            "cmrqc_records_in", "Input records received.", ["topic"], registry=self.registry
        )
        self.records_out = Counter(
            "cmrqc_records_out", "Output records produced.", ["topic"], registry=self.registry
        )
        self.records_failed = Counter(
            "cmrqc_records_failed",
            "Input records dead-lettered, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            "cmrqc_handler_retries", "Handler attempts that were retried.", registry=self.registry
        )
        self.transactions_aborted = Counter(
            "cmrqc_transactions_aborted",
            "Batches whose transaction was aborted and reprocessed.",
            registry=self.registry,
        )
        self.handler_latency = Histogram(
            "cmrqc_handler_latency_seconds",
            "Handler time per input record, s.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "cmrqc_batch_latency_seconds",
            "Poll-to-commit time per batch, s.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "cmrqc_consumer_lag",
            "Records behind the partition's high watermark.",
            ["topic", "partition"],
            registry=self.registry,
        )


class ObservabilityServer:
    """Serves /healthz (the loop is alive), /readyz (ready for work) and /metrics."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        is_live: Callable[[], bool],
        is_ready: Callable[[], bool],
        host: str = "0.0.0.0",
        port: int = 8080,
    ) -> None:
        self._registry = registry
        self._is_live = is_live
        self._is_ready = is_ready
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = server._is_live()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
                elif path == "/readyz":
                    ok = server._is_ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds would flood the logs

        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="observability", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was asked for)."""
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()
        logger.info("observability endpoints up", extra={"port": self.port})

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class Heartbeat:
    """Liveness: the processing loop beats; stale beats mean the loop is stuck."""

    def __init__(self, stale_after_s: float) -> None:
        self._stale_after_s = stale_after_s
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def is_fresh(self) -> bool:
        return time.monotonic() - self._last < self._stale_after_s
