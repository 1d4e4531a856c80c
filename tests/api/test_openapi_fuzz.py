"""The service against its own OpenAPI schema: schemathesis sends every operation inputs
generated from the schema (and inputs that break it), in-process over ASGI, with the
upstream on loopback; no input gets a 5xx or hangs.

Each operation runs under derandomized Hypothesis settings (the same inputs every run),
one operation after another in one test, rather than through schemathesis' pytest plugin.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import schemathesis
from apikit import AppFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

# Each answer comes within this many seconds: the upstream is on loopback.
BOUND = 5.0
# Inputs per operation (positive and negative): the schema runs in 6-10 s on 2 cores.
EXAMPLES = 40
# The test app's models (tests/support.py), which the gateway's bodies name.
MODELS = ("text-embedding-3-small", "gpt-4o-mini")
# An endless event stream by design (tests/observability/test_dashboard_stream.py).
ENDLESS = {"/dashboard/events"}


def _with_model(drawn: tuple[schemathesis.Case, str | None]) -> schemathesis.Case:
    """The case, its body naming a configured model where one is drawn: a generated
    name is almost never one, and the calls past the model lookup would go untried."""
    case, model = drawn
    if model is not None and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = model
    return case


def _fuzz(operation: Any, tried: dict[str, int], statuses: Counter[int]) -> None:
    """Send ``operation`` its generated inputs; fail on a 5xx or a slow answer."""
    label = f"{operation.method.upper()} {operation.path}"
    tried[label] = 0

    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=st.tuples(cases, st.sampled_from([None, *MODELS])).map(_with_model))
    def check(case: schemathesis.Case) -> None:
        started = time.monotonic()
        response = case.call()
        took = time.monotonic() - started
        tried[label] += 1
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error])
        assert took < BOUND, f"{label} took {took:.2f} s"

    check()


def test_no_generated_input_gets_a_server_error_or_hangs(make_app: AppFactory) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", make_app())
    tried: dict[str, int] = {}
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path not in ENDLESS:
            _fuzz(operation, tried, statuses)
    assert len(tried) >= 14, tried
    assert all(count >= 1 for count in tried.values()), tried
    # Both answered calls and refused inputs were reached (about 130 200s and 250 4xx).
    assert statuses[200] >= 50, statuses
    assert sum(n for status, n in statuses.items() if 400 <= status < 500) >= 100, statuses
