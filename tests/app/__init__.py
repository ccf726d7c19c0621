"""Tests of the FastAPI inference service (``app/``)."""
