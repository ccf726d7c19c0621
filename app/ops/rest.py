"""The REST side of the operations layer is the app's one middleware,
``app.core.gate.GateMiddleware`` (request id, API keys, access line); this name stays
until ``app.ops.install`` adds that class itself."""

from app.core.gate import GateMiddleware as OpsMiddleware

__all__ = ["OpsMiddleware"]
