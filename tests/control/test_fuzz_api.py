"""Property-based fuzzing of the whole REST surface from its OpenAPI schema: no input may cause a 5xx.

Schemathesis generates bodies, query strings and path parameters from the
schema FastAPI publishes (valid and invalid ones), against a real server
process. Every answer must be a deliberate response — 2xx or a 4xx with the
Anthropic error body — never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("fuzz")) / "data")
    anyio.run(server.start)
    try:
        yield server
    finally:
        server.terminate()


def test_no_input_crashes_the_server(live_server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{live_server.base_url}/openapi.json")
    headers = {"x-api-key": live_server.admin_key}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            response = case.call(base_url=live_server.base_url, headers=headers, timeout=10)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}"
            if response.status_code >= 400:
                body = json.loads(response.content)
                assert body["type"] == "error"
                assert isinstance(body["error"]["type"], str) and body["error"]["message"]

        fuzz()
