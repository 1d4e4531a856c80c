"""LangChain's own standard suites (langchain-tests) for RagLLMEmbeddings and ChatRagLLM.

The integration suites run against UpstreamServer on 127.0.0.1, a real OpenAI-shaped HTTP
server. It answers every chat request with ``"echo: <last user message>"`` and never decides
to call a tool, so the standard tests that need the model to choose a tool (or to answer in
a schema) are marked ``xfail(strict=True)`` below (``_fails_here``), with why: they run, and
fail on the suite's own check that a tool call (or a parsed answer) came back. Everything else the
suites check runs as written. Tool calls themselves are proven in test_langchain.py, with
replies scripted at the server.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests
from support import KEY, closed_port

from rag_llm.integrations.langchain import ChatRagLLM, RagLLMEmbeddings
from rag_llm.providers import create_provider
from rag_llm.testing import UpstreamServer

CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
# Nothing listens there: the unit suites build models and never call them.
NOWHERE = f"http://127.0.0.1:{closed_port()}/v1"

NO_TOOL_CHOICE = "UpstreamServer echoes the last user message and never calls a tool on its own"
NO_SCHEMA_ANSWER = ("structured output needs the model to call the schema's tool; UpstreamServer "
                    "echoes text instead")
# The suite's checks of a parsed answer fail on the None it gets: an assertion, or a TypeError
# when they iterate it.
NO_SCHEMA_CHECKS = (AssertionError, TypeError)


def _fails_here(name: str, reason: str,
               raises: tuple[type[Exception], ...] = (AssertionError,)) -> Callable[..., Any]:
    """The standard test ``name`` (its parameters kept), expected to fail on its own check."""
    test = getattr(ChatModelIntegrationTests, name)
    if inspect.iscoroutinefunction(test):
        @functools.wraps(test)
        async def run_async(*args: Any, **kwargs: Any) -> None:
            await test(*args, **kwargs)

        run: Callable[..., Any] = run_async
    else:
        @functools.wraps(test)
        def run_sync(*args: Any, **kwargs: Any) -> None:
            test(*args, **kwargs)

        run = run_sync
    marked: Callable[..., Any] = pytest.mark.xfail(strict=True, raises=raises,
                                                   reason=reason)(run)
    return marked


def _no_tool_choice(name: str) -> Callable[..., Any]:
    return _fails_here(name, NO_TOOL_CHOICE)


def _no_schema_answer(name: str) -> Callable[..., Any]:
    return _fails_here(name, NO_SCHEMA_ANSWER, NO_SCHEMA_CHECKS)


def _config(base_url: str, model: str) -> dict[str, Any]:
    return {"type": "openai", "base_url": base_url, "model": model, "api_key": KEY,
            "retry": False, "circuit_breaker": False}


class _OnUpstream:
    """A fresh UpstreamServer and a provider on it for each test, both closed after it."""

    kind = "llm"
    model_name = CHAT_MODEL

    @pytest.fixture(autouse=True)
    def _upstream(self) -> Iterator[None]:
        with UpstreamServer(api_key=KEY) as server:
            self.server = server
            with create_provider(self.kind, _config(server.base_url, self.model_name)) as p:
                self.provider = p
                yield


class TestChatRagLLMUnit(ChatModelUnitTests):
    """Built from config= (the model owns its provider); the unit suite makes no calls."""

    @property
    def chat_model_class(self) -> type[ChatRagLLM]:
        return ChatRagLLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"config": _config(NOWHERE, CHAT_MODEL)}

    @pytest.fixture
    def model(self, request: Any) -> Iterator[BaseChatModel]:
        extra = getattr(request, "param", None) or {}
        with ChatRagLLM(**{**self.standard_chat_model_params, **self.chat_model_params,
                           **extra}) as model:
            yield model


class TestChatRagLLMIntegration(_OnUpstream, ChatModelIntegrationTests):
    """Given provider= (shared, closed by the test's fixture, never by the model)."""

    @property
    def chat_model_class(self) -> type[ChatRagLLM]:
        return ChatRagLLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"provider": self.provider}

    @property
    def model_override_value(self) -> str:
        # UpstreamServer answers with the request's model, so an override shows in the reply.
        return "gpt-4o"

    @property
    def supports_anthropic_inputs(self) -> bool:
        # Anthropic-style tools and content blocks are converted to OpenAI's on the way out.
        return True

    # The standard tests that need the model to pick a tool or answer in a schema.
    test_tool_calling = _no_tool_choice("test_tool_calling")
    test_tool_calling_async = _no_tool_choice("test_tool_calling_async")
    test_bind_runnables_as_tools = _no_tool_choice("test_bind_runnables_as_tools")
    test_tool_choice = _no_tool_choice("test_tool_choice")
    test_tool_calling_with_no_arguments = _no_tool_choice("test_tool_calling_with_no_arguments")
    test_agent_loop = _no_tool_choice("test_agent_loop")
    test_unicode_tool_call_integration = _no_tool_choice("test_unicode_tool_call_integration")
    test_structured_output = _no_schema_answer("test_structured_output")
    test_structured_output_async = _no_schema_answer("test_structured_output_async")
    test_structured_output_pydantic_2_v1 = _no_schema_answer("test_structured_output_pydantic_2_v1")
    test_structured_output_optional_param = _no_schema_answer(
        "test_structured_output_optional_param")


class TestRagLLMEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[RagLLMEmbeddings]:
        return RagLLMEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"config": _config(NOWHERE, EMBEDDING_MODEL)}


class TestRagLLMEmbeddingsIntegration(_OnUpstream, EmbeddingsIntegrationTests):
    """Given provider=."""

    kind = "embedding"
    model_name = EMBEDDING_MODEL

    @property
    def embeddings_class(self) -> type[RagLLMEmbeddings]:
        return RagLLMEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"provider": self.provider}


class TestRagLLMEmbeddingsOwnedIntegration(_OnUpstream, EmbeddingsIntegrationTests):
    """Built from config=: the model owns its provider and the fixture closes the model."""

    kind = "embedding"
    model_name = EMBEDDING_MODEL

    @property
    def embeddings_class(self) -> type[RagLLMEmbeddings]:
        return RagLLMEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"config": _config(self.server.base_url, EMBEDDING_MODEL)}

    @pytest.fixture
    def model(self) -> Iterator[RagLLMEmbeddings]:
        with RagLLMEmbeddings(**self.embedding_model_params) as model:
            yield model
