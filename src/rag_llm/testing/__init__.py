"""Test helpers: a real OpenAI-compatible upstream server with fault injection, and a
fault-injecting TCP proxy (Toxiproxy's faults) to put in front of any server.

Needs the ``testing`` extra (``h11`` and ``trustme``).
"""

from __future__ import annotations

from rag_llm.testing._faults import Fault, FaultAction
from rag_llm.testing._proxy import (
    Bandwidth,
    Blackhole,
    FaultProxy,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    SlowClose,
    Timeout,
    Toxic,
)
from rag_llm.testing._records import RecordedRequest
from rag_llm.testing._server import UpstreamServer

__all__ = [
    "Bandwidth",
    "Blackhole",
    "Fault",
    "FaultAction",
    "FaultProxy",
    "Latency",
    "LimitData",
    "RecordedRequest",
    "ResetPeer",
    "Slicer",
    "SlowClose",
    "Timeout",
    "Toxic",
    "UpstreamServer",
]
