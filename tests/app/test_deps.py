"""The routes' dependencies run on the event loop, not in FastAPI's thread pool."""

from __future__ import annotations

import inspect

from fastapi.routing import APIRoute

from app.api import routes as service_routes
from app.protocols.predict import routes as predict


def _dependency_calls(dependant) -> list:  # noqa: ANN001 - fastapi's internal Dependant
    calls = []
    for sub in dependant.dependencies:
        calls.append(sub.call)
        calls.extend(_dependency_calls(sub))
    return calls


def test_route_dependencies_are_async() -> None:
    # A plain ``def`` dependency costs every request a round trip through a worker
    # thread; on one busy core that was a measurable share of each request.
    routers = (predict, service_routes)
    routes = [r for m in routers for r in m.router.routes if isinstance(r, APIRoute)]
    assert {"/predict", "/predict/batch"} <= {r.path for r in routes}
    for route in routes:
        if not route.dependant.dependencies:
            continue
        calls = _dependency_calls(route.dependant)
        sync = [c.__name__ for c in calls if not inspect.iscoroutinefunction(c)]
        assert not sync, f"{route.path}: sync dependencies {sync}"
