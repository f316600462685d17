"""Property-based API test: schemathesis generates requests from /openapi.json, valid and
invalid ones, and checks every response against the schema; no request may get a 500."""

from __future__ import annotations

import pytest
import schemathesis
import torch
from conftest import make_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from postergenre.predict import Predictor
from postergenre.serve import Limits, create_app

OPERATIONS = [("/genres", "GET"), ("/health", "GET"), ("/predict", "POST"),
              ("/predict/batch", "POST"), ("/explain", "POST")]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    torch.set_num_threads(1)
    predictor = Predictor.load(make_run(tmp_path_factory.mktemp("run")), backend="torch")
    app = create_app(predictor, Limits(max_upload_bytes=50_000, max_batch_files=4))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_schema_lists_every_operation(api_schema):
    found = {(op.ok().path, op.ok().method.upper()) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.slow
@pytest.mark.parametrize(("path", "method", "mode"), [
    *((path, method, GenerationMode.POSITIVE) for path, method in OPERATIONS),
    *((path, method, GenerationMode.NEGATIVE) for path, method in OPERATIONS if method == "POST"),
])
def test_generated_requests_never_get_a_server_error(api_schema, path, method, mode):
    operation = api_schema[path][method]

    @given(st.data())
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    def check(data):
        case = data.draw(operation.as_strategy(generation_mode=mode))
        # Every other check runs; "schema-valid data is accepted" cannot hold here, since a
        # schema cannot say "a decodable poster": schemathesis's 1x1 PNG is rightly a 422.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    check()
