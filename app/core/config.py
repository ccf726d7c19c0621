"""Service settings: one ``Settings`` read from ``CATDOG_*`` environment variables.

Each default is written here once; docker-compose.yml and the docs refer to these
names. ``create_app(settings)`` takes an instance; ``get_settings()`` reads the
environment once per process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from catdog.preprocessing import ACCEPTED_FORMATS, DEFAULT_MAX_PIXELS_PER_BYTE, image_formats


class Settings(BaseSettings):
    """Every knob of the service; ``CATDOG_MODEL_DIR=... uvicorn app.main:app``."""

    model_config = SettingsConfigDict(env_prefix="CATDOG_", protected_namespaces=())

    model_dir: Path = Field(
        Path("models/catdog"),
        description="model base folder of integer versions (version_policy picks the served)",
    )
    model_name: str = Field("catdog", description="name under /v1/models/")
    runtime: Literal["auto", "litert", "tensorflow"] = Field(
        "auto", description="auto: LiteRT when the version has model.tflite, else TensorFlow"
    )
    require_gpu: bool = Field(
        False,
        description="refuse to start unless the served version runs on a visible GPU "
        "(GPU pods: never go ready on the CPU)",
    )
    inference_threads: int = Field(
        0, ge=0, description="threads of one model call; 0: one per usable core"
    )
    max_batch_size: int = Field(
        8, ge=1, description="1 turns dynamic batching off; 8: best for LiteRT (bench/README.md)"
    )
    batch_timeout_ms: float = Field(
        5.0, ge=0, description="wait for a batch to fill while more images are on their way"
    )
    max_batch_wait_ms: float = Field(
        100.0, ge=0, description="cap on waiting as long as the previous model call; 0: off"
    )
    max_images_in_flight: int = Field(
        64, ge=1, description="images admitted at once (decoding, queued or in the model); 503"
    )
    max_images_per_client: int = Field(
        0, ge=0, description="images one client (its address) may have in flight; 0: no cap"
    )
    body_bytes_budget: int = Field(
        640 << 20,  # x 3.07 bytes of memory per body byte fits the CPU pod: docs/service.md
        ge=0,
        description="bytes of prediction bodies held at once (Content-Length, else as they "
        "arrive; gRPC: each message), a lone request always admitted; 503 beyond; 0: no bound",
    )
    max_files_per_request: int = Field(
        32, ge=1, description="files in one /predict/batch; at most max_images_in_flight"
    )
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="per uploaded file")
    max_pixels: int = Field(50_000_000, ge=1, description="width x height, checked before decoding")
    max_pixels_per_byte: int = Field(
        DEFAULT_MAX_PIXELS_PER_BYTE,
        ge=1,
        description="pixels an image may claim per byte of file above 1 MP; more: 422 undecoded",
    )
    image_formats: tuple[str, ...] = Field(
        ACCEPTED_FORMATS,
        description='Pillow format names decoded, as JSON (["JPEG","PNG"]); others: 415 unread',
    )
    decode_pixel_budget: int = Field(
        100_000_000, ge=1, description="pixels decoded at once by all threads; bounds memory"
    )
    decode_workers: int = Field(
        0, ge=0, description="image decoding threads; 0: one per usable core"
    )
    max_json_images: int = Field(
        0, ge=0, description="images of pixels a request may send as JSON numbers; 0: as files"
    )
    json_parse_processes: int = Field(
        1, ge=0, description="processes parsing big JSON number tensors; 0: on the event loop"
    )
    max_json_bytes: int = Field(
        64 << 20,  # parsed in the parsing process within its share of the pod: docs/service.md
        ge=1,
        description="bytes of a request's JSON; more: 413 before parsing (send files instead)",
    )
    json_offload_values: int = Field(
        300_000, ge=0, description="JSON values from which a body is parsed in those processes"
    )
    json_fast_tensors: bool = Field(
        True,
        description="read big JSON number tensors straight into arrays (simdjson); "
        "false: a Python object per number (pydantic)",
    )
    grpc_address: str = Field(
        "",
        pattern=r"^$|^.+:[0-9]+$",
        description="host:port of the Open Inference Protocol's gRPC API, beside REST "
        "(the images: 0.0.0.0:8081; port 0: any free one); empty: off",
    )
    poll_interval_s: float = Field(5.0, ge=0, description="new-version check; 0 turns it off")
    version_policy: str = Field(
        "latest:1",
        pattern=r"^(latest:[1-9][0-9]*|all|specific:[0-9]+(,[0-9]+)*)$",
        description="versions kept loaded: latest:N (the N highest), all, or specific:1,3; "
        "the highest loaded answers requests naming no version",
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After on 503")
    busy_hold_s: float = Field(
        0.5,
        ge=0,
        description="a 503 (gRPC: UNAVAILABLE) for a full queue waits this long: retries at "
        "once can't spin",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="open connections; past it the longest idle one is closed, else 503; "
        "gRPC: as many connections (more are closed) and calls at once",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request line and headers of one request; 431 beyond"
    )
    max_header_count: int = Field(100, ge=1, description="headers of one request; 431 beyond")
    http_parser: Literal["httptools", "h11"] = Field(
        "httptools", description="uvicorn's HTTP/1.1 parser under python -m app (bench/serve)"
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="for a request's line and headers, from its first byte, then 408; "
        "gRPC: for a connection's HTTP/2 handshake",
    )
    body_timeout_s: float = Field(
        15.0,
        gt=0,
        description="longest pause while a request body arrives, then 408 and closed; "
        "gRPC: the whole message (no progress shows inside one), then DEADLINE_EXCEEDED",
    )
    graceful_shutdown_s: float = Field(
        25.0,
        ge=0,
        description="after SIGTERM, for requests and gRPC calls in flight; then cut off with a "
        "503 (gRPC: cancelled)",
    )

    api_keys_file: Path | None = Field(
        None,
        description="file of API keys, one a line (or sha256:<hex>; # comments); set: "
        "predictions and model metadata need Authorization: Bearer <key> (gRPC: the "
        "authorization metadata); re-read on change",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="json: one JSON object per log line, access lines included (request id, "
        "route, status, duration, model version, label)",
    )
    payload_log: str = Field(
        "",
        description="log one record per image (never its bytes) to a file (JSON lines) or an "
        "http(s):// URL (CloudEvents); empty: off",
    )
    payload_log_rate: float = Field(
        1.0, ge=0, le=1, description="share of images the payload log records (sampled)"
    )

    @field_validator("image_formats", mode="before")
    @classmethod
    def _known_formats(cls, value: object) -> tuple[str, ...]:
        return image_formats(value)  # type: ignore[arg-type]  # ValueError names the choices

    @model_validator(mode="after")
    def _limits_fit(self) -> Settings:
        files, in_flight = self.max_files_per_request, self.max_images_in_flight
        if files > in_flight:
            raise ValueError(
                f"max_files_per_request ({files}) exceeds max_images_in_flight ({in_flight}): "
                "such a request never fits"
            )
        if 0 < self.max_images_per_client < files:
            raise ValueError(
                f"max_images_per_client ({self.max_images_per_client}) is below "
                f"max_files_per_request ({files}): a full request would never fit"
            )
        if self.max_json_images > files:
            raise ValueError(
                f"max_json_images ({self.max_json_images}) exceeds max_files_per_request "
                f"({files}): no request may hold that many images"
            )
        return self

    @property
    def json_images(self) -> int:
        """Images of pixels a request may send as JSON numbers."""
        return self.max_json_images or self.max_files_per_request


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, from its environment."""
    return Settings()


def settings_table() -> str:
    """Every setting as a markdown table: environment variable, default, meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        rows.append(f"| `CATDOG_{name.upper()}` | `{shown}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m app.core.config
    print(settings_table())
