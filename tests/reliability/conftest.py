"""The proxy every reliability scenario puts between a provider and its upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rag_llm.testing import FaultProxy, UpstreamServer


@pytest.fixture
def proxied(upstream: UpstreamServer) -> Iterator[FaultProxy]:
    """A seeded FaultProxy in front of ``upstream``: the same faults drawn every run."""
    with FaultProxy(upstream.port, seed=20261203) as proxy:
        yield proxy
