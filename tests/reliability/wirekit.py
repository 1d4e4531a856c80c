"""What the reliability scenarios share: the key, a fast retry, a question and its echo,
and the provider settings they start from."""

from __future__ import annotations

from typing import Any

KEY = "sk-reliability-0123456789"
FAST_RETRY = {"max_attempts": 3, "base_delay": 0.001, "max_delay": 0.005}
QUESTION = [{"role": "user", "content": "one two three four five six seven"}]
ANSWER = "echo: one two three four five six seven"


def settings(base_url: str, **overrides: Any) -> dict[str, Any]:
    """An OpenAI provider on ``base_url`` with a fast retry, then ``overrides``."""
    return {"type": "openai", "model": "m", "api_key": KEY, "base_url": base_url,
            "retry": FAST_RETRY, **overrides}
