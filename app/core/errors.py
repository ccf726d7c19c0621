"""Service errors that become clean HTTP answers (see ``app.api.errors``)."""

from __future__ import annotations

TIMED_OUT_KEY = "catdog.timed_out"  # scope key: the body timeout cut this request off (408)


class QueueFullError(RuntimeError):
    """The inference queue is at ``CATDOG_MAX_QUEUE``: shed load with a 503."""


class ModelNotReadyError(RuntimeError):
    """No model is loaded (startup not finished, or shutting down)."""


class ModelLoadError(RuntimeError):
    """A model folder cannot be served; the message names the path and the problem."""


class VersionNotFoundError(LookupError):
    """A request named a model version that is not loaded (unknown, refused, or not kept)."""


class InvalidInputError(ValueError):
    """A request's tensor does not fit the model contract (shape, dtype or value range)."""
