"""The live dashboard: a page of charts per provider, fed by server-sent events.

Needs the ``server`` extra. Include it in an app with
``app.include_router(dashboard_router())``.
"""

from __future__ import annotations

from rag_llm.api.dashboard.feed import dashboard_frame
from rag_llm.api.dashboard.router import dashboard_router

__all__ = ["dashboard_frame", "dashboard_router"]
