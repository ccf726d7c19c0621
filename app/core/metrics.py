"""Prometheus metrics of one app instance (its own registry, so tests can build many)."""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests, latency, queue wait, inference time, batch sizes and the model version."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        counter = partial(Counter, registry=self.registry)
        gauge = partial(Gauge, registry=self.registry)
        seconds = partial(Histogram, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.requests = counter(
            "catdog_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
        )
        self.grpc_requests = counter(
            "catdog_grpc_requests",
            "gRPC calls (CATDOG_GRPC_ADDRESS) by method and status code; their latency is"
            " catdog_request_duration_seconds with the method's path as route",
            ["method", "code"],
        )
        self.latency = seconds(
            "catdog_request_duration_seconds",
            "request latency: HTTP routes, and gRPC methods by their path",
            ["route"],
        )
        self.queue_wait = seconds(
            "catdog_queue_wait_seconds", "time an image waits for its batch to start"
        )
        self.inference = seconds("catdog_inference_seconds", "model call time per batch")
        self.batch_size = Histogram(
            "catdog_batch_size",
            "images per model call",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = gauge("catdog_images_in_flight", "admitted images not yet answered")
        self.rejected = counter("catdog_rejected", "requests refused with 503 (queue full)")
        self.client_capped = counter(
            "catdog_client_capped",
            "requests refused with 503 because their client had CATDOG_MAX_IMAGES_PER_CLIENT"
            " images in flight",
        )
        self.http_refusals = counter(
            "catdog_http_refusals",
            "answers the connection layer (app/connections.py) gave itself, and connections"
            " it closed, by reason: malformed and chunks (400), header_timeout and"
            " body_timeout (408), header_bytes and header_count (431), connection_cap (503),"
            " closed_for_room, idle and unread (closed without an answer); python -m app only",
            ["reason"],
        )
        self.json_offloaded = counter(
            "catdog_json_offloaded",
            "request bodies of at least CATDOG_JSON_OFFLOAD_VALUES JSON values, parsed in a"
            " worker process",
        )
        self.predictions = counter(
            "catdog_predictions",
            "images classified, by label and by whether they look like the training photos"
            " (known: true, false, or unknown when the model has no such signal)",
            ["label", "known"],
        )
        self.model_version = gauge(
            "catdog_model_version",
            "served model version and its runtime (value 1)",
            ["version", "runtime"],
        )
        self.ready = gauge(
            "catdog_ready",
            "1 while this replica answers /readyz with 200 (a model serving, not stopping)",
        )
        self.key_requests = counter(
            "catdog_key_requests",
            "requests and gRPC calls accepted with an API key (CATDOG_API_KEYS_FILE), by key id"
            " (the first 8 hex digits of the key's sha256)",
            ["key_id"],
        )
        self.auth_refused = counter(
            "catdog_auth_refused",
            "requests and gRPC calls refused for their API key: missing or invalid",
            ["reason"],
        )
        self.payload_log = counter(
            "catdog_payload_log_records",
            "payload log records (CATDOG_PAYLOAD_LOG) by result: written, dropped (the queue"
            " was full) or failed (the sink refused them)",
            ["result"],
        )
        self.model_loads = counter(
            "catdog_model_loads", "model version loads by result", ["result"]
        )
        self.model_memory = gauge(
            "catdog_model_memory_bytes",
            "each loaded version: resident memory the process grew by while it loaded and"
            " warmed up (approximate; the first also holds the runtime's one-time cost)",
            ["version", "runtime"],
        )

    def set_model_version(self, version: str, runtime: str) -> None:
        """Expose ``version`` (run by ``runtime``) as the one served version."""
        self.model_version.clear()
        self.model_version.labels(version=version, runtime=runtime).set(1)

    def set_loaded_versions(self, versions: dict[str, tuple[str, int | None]]) -> None:
        """Expose every loaded version (version -> runtime, memory in bytes or None)."""
        self.model_memory.clear()
        for version, (runtime, memory) in versions.items():
            self.model_memory.labels(version=version, runtime=runtime).set(
                float("nan") if memory is None else memory
            )
