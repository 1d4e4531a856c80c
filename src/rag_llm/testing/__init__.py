"""Test helpers: a real OpenAI-compatible upstream server with fault injection.

Needs the ``testing`` extra (``h11`` and ``trustme``).
"""

from __future__ import annotations

from rag_llm.testing._faults import Fault, FaultAction
from rag_llm.testing._records import RecordedRequest
from rag_llm.testing._server import UpstreamServer

__all__ = ["Fault", "FaultAction", "RecordedRequest", "UpstreamServer"]
