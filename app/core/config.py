"""Service settings from the environment (prefix ``CATDOG_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; ``CATDOG_MODEL_DIR=... uvicorn app.main:app``."""

    model_config = SettingsConfigDict(env_prefix="CATDOG_", protected_namespaces=())

    model_dir: Path = Field(
        Path("models/catdog"),
        description="model base folder; its highest integer version is served",
    )
    model_name: str = Field("catdog", description="name under /v1/models/")
    max_batch_size: int = Field(32, ge=1, description="1 turns dynamic batching off")
    batch_timeout_ms: float = Field(
        5.0, ge=0, description="wait for a batch to fill while more images are on their way"
    )
    max_batch_wait_ms: float = Field(
        100.0, ge=0, description="cap on waiting as long as the previous model call; 0: off"
    )
    max_queue: int = Field(64, ge=1, description="images admitted at once; beyond: 503")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="per uploaded file")
    max_batch_files: int = Field(32, ge=1, description="files per /predict/batch request")
    max_pixels: int = Field(50_000_000, ge=1, description="width x height, checked before decoding")
    decode_pixel_budget: int = Field(
        100_000_000, ge=1, description="pixels decoded at once by all threads; bounds memory"
    )
    decode_workers: int = Field(
        0, ge=0, description="image decoding threads; 0: one per usable core"
    )
    poll_interval_s: float = Field(5.0, ge=0, description="new-version check; 0 turns it off")
    retry_after_s: int = Field(1, ge=0, description="Retry-After on 503")

    @property
    def files_per_request(self) -> int:
        """Most files one /predict/batch may carry: a larger batch would never fit the queue."""
        return min(self.max_batch_files, self.max_queue)


@lru_cache
def get_settings() -> Settings:
    """The settings of this process (a dependency that tests override)."""
    return Settings()


def settings_of(app: object) -> Settings:
    """The settings an app's lifespan resolved (``app.state.settings``), else this process's."""
    return getattr(getattr(app, "state", None), "settings", None) or get_settings()
