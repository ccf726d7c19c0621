"""Prometheus metrics of one app instance (its own registry, so tests can build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests, latency, queue wait, inference time, batch sizes and the model version."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "catdog_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.grpc_requests = Counter(
            "catdog_grpc_requests",
            "gRPC calls (CATDOG_GRPC_ADDRESS) by method and status code; their latency is"
            " catdog_request_duration_seconds with the method's path as route",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "catdog_request_duration_seconds",
            "request latency: HTTP routes, and gRPC methods by their path",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "catdog_queue_wait_seconds",
            "time an image waits for its batch to start",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "catdog_inference_seconds",
            "model call time per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "catdog_batch_size", "images per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.in_flight = Gauge(
            "catdog_images_in_flight", "admitted images not yet answered", registry=r
        )
        self.rejected = Counter(
            "catdog_rejected", "requests refused with 503 (queue full)", registry=r
        )
        self.client_capped = Counter(
            "catdog_client_capped",
            "requests refused with 503 because their client had CATDOG_MAX_IMAGES_PER_CLIENT"
            " images in flight",
            registry=r,
        )
        self.http_refusals = Counter(
            "catdog_http_refusals",
            "answers the connection layer (app/connections.py) gave itself, and connections"
            " it closed, by reason: malformed and chunks (400), header_timeout and"
            " body_timeout (408), header_bytes and header_count (431), connection_cap (503),"
            " closed_for_room, idle and unread (closed without an answer); python -m app only",
            ["reason"],
            registry=r,
        )
        self.json_offloaded = Counter(
            "catdog_json_offloaded",
            "request bodies of at least CATDOG_JSON_OFFLOAD_VALUES JSON values, parsed in a"
            " worker process",
            registry=r,
        )
        self.predictions = Counter(
            "catdog_predictions",
            "images classified, by label and by whether they look like the training photos"
            " (known: true, false, or unknown when the model has no such signal)",
            ["label", "known"],
            registry=r,
        )
        self.model_version = Gauge(
            "catdog_model_version",
            "served model version and its runtime (value 1)",
            ["version", "runtime"],
            registry=r,
        )
        self.ready = Gauge(
            "catdog_ready",
            "1 while this replica answers /readyz with 200 (a model serving, not stopping)",
            registry=r,
        )
        self.key_requests = Counter(
            "catdog_key_requests",
            "requests and gRPC calls accepted with an API key (CATDOG_API_KEYS_FILE), by key id"
            " (the first 8 hex digits of the key's sha256)",
            ["key_id"],
            registry=r,
        )
        self.auth_refused = Counter(
            "catdog_auth_refused",
            "requests and gRPC calls refused for their API key: missing or invalid",
            ["reason"],
            registry=r,
        )
        self.payload_log = Counter(
            "catdog_payload_log_records",
            "payload log records (CATDOG_PAYLOAD_LOG) by result: written, dropped (the queue"
            " was full) or failed (the sink refused them)",
            ["result"],
            registry=r,
        )
        self.model_loads = Counter(
            "catdog_model_loads", "model version loads by result", ["result"], registry=r
        )
        self.model_memory = Gauge(
            "catdog_model_memory_bytes",
            "each loaded version: resident memory the process grew by while it loaded and"
            " warmed up (approximate; the first also holds the runtime's one-time cost)",
            ["version", "runtime"],
            registry=r,
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
