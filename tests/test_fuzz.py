"""Property-based fuzzing of every operation in /openapi.json against a live server.

No generated case may get a 5xx, and every response must be one the schema declares, with
a declared content type and a body that conforms. At least 1,000 cases in all.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from service.api.launcher import LiveServer, live_server

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CASES_PER_OPERATION = 200  # 12 operations, six of them with few distinct inputs: well over 1,000 cases
INFERENCE = {"POST /translate", "POST /translate_file", "POST /v1/translate", "POST /v1/fill-mask", "POST /detect"}
TALLY: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # rate limits off and a queue that never refuses: every case is judged on its input alone
    env = {"MTSERVE_QUEUE_SIZE": "100000", "MTSERVE_LOG_LEVEL": "warning", "MTSERVE_REQUEST_TIMEOUT_S": "120"}
    with live_server(env=env, log_dir=tmp_path_factory.mktemp("fuzz")) as server:
        yield server
    cases = sum(TALLY.values())
    report = {
        "cases": cases,
        "reached_inference": sum(n for (op, status), n in TALLY.items() if op in INFERENCE and status == 200),
        "by_operation_and_status": {f"{op} {status}": n for (op, status), n in sorted(TALLY.items())},
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fuzz_report.json").write_text(json.dumps(report, indent=2))


def test_no_case_gets_a_5xx_and_every_response_conforms(fuzz_server: LiveServer) -> None:
    api = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = []
    for result in api.get_all_operations():
        assert isinstance(result, Ok), f"an operation the fuzzer cannot read: {result}"
        operations.append(result.ok())
    assert len(operations) >= 10
    for operation in operations:

        @settings(
            max_examples=CASES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=fuzz_server.url, timeout=120)
            TALLY[(f"{case.method.upper()} {case.path}", response.status_code)] += 1
            case.validate_response(
                response,
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )

        check()
    assert sum(TALLY.values()) >= 1000, TALLY
