"""The resilience settings of a provider config: endpoints, retry, budget, breaker, balancer."""

from __future__ import annotations

from typing import Any

import pytest
from support import KEY, config

from rag_llm import create_provider
from rag_llm.config import ProviderConfig
from rag_llm.errors import ConfigError

TWO = [{"base_url": "https://a.example/v1", "api_key": "sk-a-SECRET-1", "weight": 2},
       {"base_url": "https://b.example/v1", "priority": 1}]


def test_a_single_base_url_is_one_endpoint() -> None:
    settings = ProviderConfig.from_mapping(config())
    (endpoint,) = settings.endpoints
    assert endpoint.base_url == settings.base_url
    assert endpoint.api_key == settings.api_key
    assert endpoint.name == "127.0.0.1:9"
    assert settings.retry.max_attempts == 3
    assert settings.circuit_breaker is not None
    assert settings.load_balancer.strategy == "p2c"
    assert settings.deadline == 300.0


def test_endpoints_take_their_own_keys_and_inherit_the_provider_s() -> None:
    settings = ProviderConfig.from_mapping(without_base_url(endpoints=TWO))
    a, b = settings.endpoints
    assert (a.name, a.weight, a.priority) == ("a.example", 2, 0)
    assert (b.name, b.weight, b.priority) == ("b.example", 1, 1)
    assert a.api_key is not None
    assert a.api_key.get_secret_value() == "sk-a-SECRET-1"
    assert b.api_key is not None
    assert b.api_key.get_secret_value() == KEY
    assert settings.base_url == "https://a.example/v1"
    shown = repr(settings) + repr(settings.endpoints)
    assert "SECRET" not in shown


def without_base_url(**overrides: Any) -> dict[str, Any]:
    return {k: v for k, v in config(**overrides).items() if k != "base_url"}


@pytest.mark.parametrize(("overrides", "field"), [
    ({"endpoints": []}, "endpoints"),
    ({"endpoints": "https://a.example"}, "endpoints"),
    ({"endpoints": [{"base_url": "ftp://a.example"}]}, "endpoints[0].base_url"),
    ({"endpoints": [*TWO, {"base_url": "https://c.example", "weight": 0}]},
     "endpoints[2].weight"),
    ({"endpoints": [{"base_url": "https://c.example", "colour": "red"}]},
     "endpoints[0].colour"),
    ({"endpoints": [{"base_url": "https://c.example", "priority": -1}]},
     "endpoints[0].priority"),
    ({"endpoints": TWO, "retry": {"max_attempts": 0}}, "retry.max_attempts"),
    ({"endpoints": TWO, "retry": {"tries": 3}}, "retry.tries"),
    ({"endpoints": TWO, "retry": 3}, "retry"),
    ({"endpoints": TWO, "retry_budget": {"percent_can_retry": -1}},
     "retry_budget.percent_can_retry"),
    ({"endpoints": TWO, "circuit_breaker": {"consecutive_failures": 0}},
     "circuit_breaker.consecutive_failures"),
    ({"endpoints": TWO, "load_balancer": "random"}, "strategy"),
    ({"endpoints": TWO, "health_check": {"interval": 0}}, "health_check.interval"),
    ({"endpoints": TWO, "deadline": 0}, "deadline"),
    ({"endpoints": TWO, "warmup": 1000}, "warmup"),
    ({"endpoints": TWO, "drain_timeout": -1}, "drain_timeout"),
    ({"endpoints": TWO, "first_token_timeout": 0}, "first_token_timeout"),
    ({"endpoints": TWO, "tokens_per_minute": 0}, "endpoints[0].tokens_per_minute"),
])
def test_bad_resilience_settings_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ProviderConfig.from_mapping(without_base_url(**overrides))
    assert caught.value.field == field
    assert KEY not in str(caught.value)


def test_base_url_and_endpoints_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="either base_url or endpoints"):
        ProviderConfig.from_mapping(config(endpoints=TWO))


def test_switches_turn_features_off_and_on() -> None:
    settings = ProviderConfig.from_mapping(config(
        retry=False, circuit_breaker=False, retry_budget=False, health_check=True,
        load_balancer="least_request", deadline=None))
    assert settings.retry.max_attempts == 1
    assert settings.circuit_breaker is None
    assert settings.retry_budget is None
    assert settings.health_check is not None
    assert settings.health_check.path == "models"
    assert settings.load_balancer.strategy == "least_in_flight"
    assert settings.deadline is None


def test_the_same_host_twice_gets_distinct_endpoint_names() -> None:
    settings = ProviderConfig.from_mapping(without_base_url(endpoints=[
        {"base_url": "http://127.0.0.1:8000/v1"}, {"base_url": "http://127.0.0.1:8000/v2"}]))
    assert [e.name for e in settings.endpoints] == ["127.0.0.1:8000", "127.0.0.1:8000#1"]


def test_each_endpoint_has_its_own_pool() -> None:
    with create_provider("embedding", without_base_url(endpoints=TWO)) as provider:
        pools = provider.pools
        assert set(pools) == {"a.example", "b.example"}
        assert pools["a.example"] is not pools["b.example"]
        assert provider.pool is pools["a.example"]
