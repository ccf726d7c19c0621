"""Issue 12 item 8: a property-based fuzz of the API from its own OpenAPI schema.

Schemathesis (pinned in the dev extras) reads ``/openapi.json`` from a real
service process started as every documented command starts it
(``servicekit.server_command``), generates requests for each operation (valid
ones, and invalid ones: wrong types, missing fields, odd bodies) and checks every
answer: never a 5xx, a status the schema lists, the content type it names, a body
that matches its schema. Generation is derandomized (the same cases every run)
and bounded in count, so the test is deterministic and takes seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from app.main import create_app
from servicekit import Server, uvicorn_server

EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 25}  # per operation
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# (method, path, mode): invalid requests only for operations that take a body (a bare
# string path parameter has no invalid value).
CASES = [
    (method.upper(), path, mode)
    for path, item in create_app(Settings()).openapi()["paths"].items()
    for method, operation in item.items()
    for mode in EXAMPLES
    if mode is GenerationMode.POSITIVE or "requestBody" in operation
]


@pytest.fixture(scope="module")
def fuzzed(tiny_model_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real service process; a small upload limit keeps generated bodies cheap to refuse."""
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    with uvicorn_server(tiny_model_base, log, max_upload_bytes=200_000) as server:
        yield server


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES]
)
def test_the_api_answers_every_generated_request_as_its_schema_says(
    fuzzed: Server, method: str, path: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    operation = schema[path][method]

    @hypothesis.settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=fuzzed.url, timeout=60)
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Exception as exc:  # name the server log on failure
        raise AssertionError(f"{exc}\n--- server log ---\n{fuzzed.log_tail()}") from exc
