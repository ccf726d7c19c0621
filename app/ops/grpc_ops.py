"""The gRPC side of the operations layer is ``app.core.gate.GateInterceptor`` (request
id, API keys, access line); this name stays until ``app.ops.install`` uses that class
itself."""

from app.core.gate import GateInterceptor as OpsInterceptor

__all__ = ["OpsInterceptor"]
