"""The verification script (scripts/test_connection_pooling.py), run as the README runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_llm.testing import UpstreamServer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test_connection_pooling.py"
CHECK_NAMES = (
    "Pool settings",
    "Connection reuse",
    "Pooled vs a new client per request",
    "Cleanup",
)
SMALL_RUN = ("--requests", "40", "--concurrency", "1,4")
REMOTE_KEY = "sk-verify-remote-0123456789abcdef"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run(
        [sys.executable, "-W", "default", str(SCRIPT), *args],
        capture_output=True, text=True, env=env, timeout=50, check=False,
    )


def sections(stdout: str) -> dict[str, str]:
    """Each check's title mapped to its section of the report."""
    parts = re.split(r"^\[\d+/\d+\] ", stdout, flags=re.MULTILINE)[1:]
    return {part.splitlines()[0]: part for part in parts}


def verdict_of(section: str) -> str:
    return [line.strip() for line in section.splitlines() if line.strip()][-1]


def assert_every_check_passed(result: subprocess.CompletedProcess[str]) -> None:
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    found = sections(result.stdout)
    for name in CHECK_NAMES:
        titles = [title for title in found if title.startswith(name)]
        assert titles, f"no section for {name!r}:\n{report}"
        # The last section ends with the summary line; the verdict precedes it.
        section = found[titles[0]].split(f"{len(CHECK_NAMES)} checks:")[0]
        assert verdict_of(section) == "PASS", report
    assert f"{len(CHECK_NAMES)} checks: {len(CHECK_NAMES)} passed, 0 failed" in result.stdout
    assert "ResourceWarning" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def local_run() -> subprocess.CompletedProcess[str]:
    return run_script(*SMALL_RUN)


def test_local_run_passes_every_check(local_run: subprocess.CompletedProcess[str]) -> None:
    assert_every_check_passed(local_run)


def test_local_run_counts_connections_at_the_server(
    local_run: subprocess.CompletedProcess[str],
) -> None:
    assert "connection counts are server-side" in local_run.stdout
    assert "speed-up" in local_run.stdout


def test_lifecycle_logs_are_quiet_by_default(local_run: subprocess.CompletedProcess[str]) -> None:
    assert "connection_pool_created" not in local_run.stdout + local_run.stderr


@pytest.fixture
def keyed_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=REMOTE_KEY) as server:
        yield server


def test_base_url_mode_uses_the_pool_view_and_never_prints_the_key(
    keyed_upstream: UpstreamServer,
) -> None:
    result = run_script("--base-url", keyed_upstream.base_url, "--api-key", REMOTE_KEY)
    assert_every_check_passed(result)
    assert "pool's own view" in result.stdout
    assert REMOTE_KEY not in result.stdout + result.stderr
    assert keyed_upstream.requests_served > 0


def test_invalid_base_url_is_a_configuration_error() -> None:
    result = run_script("--base-url", "not-a-url")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "base_url" in result.stderr
    assert "checks:" not in result.stdout


def test_invalid_concurrency_is_a_usage_error() -> None:
    result = run_script("--concurrency", "0,4")
    assert result.returncode == 2
    assert "--concurrency" in result.stderr
