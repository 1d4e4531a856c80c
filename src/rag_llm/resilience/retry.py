"""When to retry a failed call and how long to wait: a frozen policy and a value-type state.

The decision is pure apart from the injected random source and the optional retry budget:
given the attempt that just failed, its exception and the time left before the call's deadline,
:meth:`RetryState.decide` answers "retry after D seconds" or "give up, because ...".

Defaults follow the openai SDK (3 attempts in all, 0.5 s doubling to 8 s; 408, 409, 429 and
5xx; connection errors and timeouts), with full jitter instead of its 25 % jitter (AWS
Architecture Blog, "Exponential Backoff And Jitter"), and ``Retry-After`` honoured up to a cap.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from rag_llm import errors
from rag_llm.errors import ConfigError
from rag_llm.resilience._common import Random, check_number, retry_after_of
from rag_llm.resilience.budget import RetryBudget

__all__ = [
    "DEFAULT_BASE_DELAY",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_DELAY",
    "DEFAULT_RETRYABLE_STATUSES",
    "DEFAULT_RETRY_AFTER_CAP",
    "RetryDecision",
    "RetryPolicy",
    "RetryState",
    "RetryVerdict",
    "is_retryable",
]

DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_BASE_DELAY: Final = 0.5
DEFAULT_MAX_DELAY: Final = 8.0
# The openai SDK ignores a Retry-After above 60 s; we wait at most this long instead.
DEFAULT_RETRY_AFTER_CAP: Final = 60.0
# 408 request timeout, 409 lock conflict, 429 rate limited, and every 5xx (openai SDK, Envoy).
DEFAULT_RETRYABLE_STATUSES: Final = frozenset({408, 409, 429, *range(500, 600)})
# 2 ** 64 * base_delay is beyond any max_delay; larger exponents would overflow a float.
_MAX_EXPONENT: Final = 64
_SHARED_RNG: Final = random.Random()  # noqa: S311 - jitter, not cryptography


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts a call may make, how long to wait between them, and what to retry.

    ``max_attempts`` counts every attempt, the first included. The wait before retry ``n``
    is drawn uniformly from ``[0, min(max_delay, base_delay * 2 ** (n - 1))]``; an upstream's
    ``Retry-After`` replaces it, capped at ``retry_after_cap``. Statuses outside
    ``retryable_statuses`` are never retried; read and write timeouts are retried only with
    ``retry_timeouts`` (the request may have reached the upstream).

    >>> RetryPolicy(max_attempts=4, base_delay=0.25).max_delay
    8.0
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP
    retryable_statuses: frozenset[int] = field(default=DEFAULT_RETRYABLE_STATUSES, repr=False)
    retry_timeouts: bool = True

    def __post_init__(self) -> None:
        check_number("max_attempts", self.max_attempts, minimum=1, integer=True)
        check_number("base_delay", self.base_delay, minimum=0)
        check_number("max_delay", self.max_delay, minimum=self.base_delay)
        check_number("retry_after_cap", self.retry_after_cap, minimum=0)
        object.__setattr__(self, "retryable_statuses", _statuses(self.retryable_statuses))
        if not isinstance(self.retry_timeouts, bool):
            raise ConfigError("retry_timeouts", self.retry_timeouts, "must be true or false")

    def backoff_ceiling(self, retry: int) -> float:
        """The longest jittered wait before retry number ``retry`` (1 for the first retry)."""
        exponent = min(max(retry - 1, 0), _MAX_EXPONENT)
        return min(self.max_delay, self.base_delay * 2.0**exponent)


def _statuses(value: Iterable[int]) -> frozenset[int]:
    try:
        statuses = frozenset(value)
    except TypeError:
        raise ConfigError("retryable_statuses", value, "must be a set of HTTP statuses") from None
    for status in statuses:
        check_number("retryable_statuses", status, minimum=100, maximum=599, integer=True)
    return statuses


class RetryVerdict(enum.StrEnum):
    """What a decision says, as a short label fit for a metric."""

    RETRY = "retry"
    CANCELLED = "cancelled"
    NOT_RETRYABLE = "not_retryable"
    EXHAUSTED = "exhausted"
    DEADLINE = "deadline"
    BUDGET = "budget"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Retry after ``delay`` seconds, or give up; ``reason`` says why in words."""

    verdict: RetryVerdict
    delay: float
    reason: str

    @property
    def retry(self) -> bool:
        return self.verdict is RetryVerdict.RETRY


@dataclass(frozen=True, slots=True)
class RetryState:
    """Where one call stands: ``attempt`` attempts made so far. ``increment()`` returns the next.

    >>> state = RetryState(RetryPolicy())
    >>> state.increment().attempt
    2
    """

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    attempt: int = 1

    def increment(self) -> RetryState:
        return RetryState(self.policy, self.attempt + 1)

    def decide(
        self,
        exc: BaseException,
        *,
        remaining: float | None = None,
        rng: Random | None = None,
        budget: RetryBudget | None = None,
    ) -> RetryDecision:
        """Whether to retry after attempt ``attempt`` failed with ``exc``.

        ``remaining`` is the time left before the call's deadline (None: no deadline). The
        budget, when given, is drawn on last, so a retry refused for another reason costs
        nothing.
        """
        policy = self.policy
        if not isinstance(exc, Exception):
            return _give_up(RetryVerdict.CANCELLED, f"{type(exc).__name__}: never retried")
        refusal = _refusal(exc, policy)
        if refusal is not None:
            return _give_up(RetryVerdict.NOT_RETRYABLE, refusal)
        if self.attempt >= policy.max_attempts:
            return _give_up(RetryVerdict.EXHAUSTED,
                            f"gave up after {self.attempt} of {policy.max_attempts} attempts")
        delay, source = self._delay(exc, rng or _SHARED_RNG)
        if remaining is not None and delay >= remaining:
            return _give_up(RetryVerdict.DEADLINE,
                            f"waiting {delay:.3f} s ({source}) would pass the deadline "
                            f"({max(remaining, 0.0):.3f} s left)")
        if budget is not None and not budget.try_withdraw():
            return _give_up(RetryVerdict.BUDGET,
                            "the retry budget is spent: too many retries for the request rate")
        return RetryDecision(RetryVerdict.RETRY, delay,
                             f"retry {self.attempt} of {policy.max_attempts - 1} "
                             f"in {delay:.3f} s ({source})")

    def _delay(self, exc: BaseException, rng: Random) -> tuple[float, str]:
        retry_after = retry_after_of(exc)
        if retry_after is not None:
            if retry_after > self.policy.retry_after_cap:
                return self.policy.retry_after_cap, f"Retry-After {retry_after:g} s, capped"
            return retry_after, "Retry-After"
        ceiling = self.policy.backoff_ceiling(self.attempt)
        return ceiling * rng.random(), "backoff"


_DEFAULT_POLICY: Final = RetryPolicy()


def _give_up(verdict: RetryVerdict, reason: str) -> RetryDecision:
    return RetryDecision(verdict, 0.0, reason)


def _refusal(exc: BaseException, policy: RetryPolicy) -> str | None:
    """Why ``exc`` must not be retried, or None when it may be."""
    if isinstance(exc, errors.PoolTimeoutError):
        # Nothing reached the upstream: our own pool is full, and retrying would queue again.
        return "the local connection pool is exhausted; raise max_connections"
    if isinstance(exc, errors.ConnectError | errors.ConnectTimeoutError
                  | errors.ConnectionLostError):
        return None
    if isinstance(exc, errors.RequestTimeoutError):
        return None if policy.retry_timeouts else f"{type(exc).__name__}: retry_timeouts is off"
    if isinstance(exc, errors.UpstreamError):
        if exc.status in policy.retryable_statuses:
            return None
        return f"HTTP {exc.status} is not retryable"
    return f"{type(exc).__name__} is not retryable"


def is_retryable(exc: BaseException, policy: RetryPolicy | None = None) -> bool:
    """Whether ``exc`` is worth another attempt, whatever the attempt count and deadline."""
    return isinstance(exc, Exception) and _refusal(exc, policy or _DEFAULT_POLICY) is None
