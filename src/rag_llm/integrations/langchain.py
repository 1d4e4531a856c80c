"""LangChain on rag-llm's pooled providers: :class:`RagLLMEmbeddings` and :class:`ChatRagLLM`.

Needs ``pip install 'rag-llm[langchain]'`` (langchain-core); this module is the only place
rag-llm imports LangChain.

Each class takes either ``provider=``, a rag-llm provider the caller made and closes (the
class never closes it, so many LangChain objects can share one pool), or ``config=``, a
provider mapping as :func:`rag_llm.create_provider` takes it, whose provider the class builds
and owns: ``close()``/``aclose()``, or a ``with``/``async with`` block, releases it::

    with ChatRagLLM(config={"type": "openai", "model": "gpt-4o-mini", "api_key": key}) as llm:
        print(llm.invoke("Say hi").content)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    InvalidToolCall,
    ToolCall,
    ToolCallChunk,
)
from langchain_core.messages import convert_to_openai_messages as _openai_messages
from langchain_core.messages.ai import InputTokenDetails, OutputTokenDetails, UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, SkipValidation

from rag_llm.errors import ConfigError
from rag_llm.integrations._owner import ProviderOwner
from rag_llm.providers import ChatProvider, create_provider
from rag_llm.providers.base import Embedder

__all__ = ["ChatRagLLM", "RagLLMEmbeddings"]

# tool_choice values LangChain callers use that OpenAI spells "required".
_FORCE_A_TOOL = ("any", True)


def _connect(kind: Literal["embedding", "llm"], provider: Any, config: Any,
             overrides: Mapping[str, Any]) -> tuple[Any, bool]:
    """The provider to call and whether it is ours: ``provider`` as given, or one built from
    ``config`` with the LangChain-style ``overrides`` (api_key, timeout, max_retries) applied."""
    given = {name: value for name, value in overrides.items() if value is not None}
    if provider is not None:
        if config is not None:
            raise ConfigError("config", ConfigError.UNSHOWN,
                              "pass provider= or config=, not both")
        if given:
            name = next(iter(given))
            raise ConfigError(name, ConfigError.UNSHOWN, "set it in the provider's own config: "
                              "with provider= the provider's settings apply")
        return provider, False
    if config is None:
        raise ConfigError("provider", None, "pass provider= (a rag-llm provider) or config= "
                          "(a provider mapping, as rag_llm.create_provider takes it)")
    if not isinstance(config, Mapping):
        raise ConfigError("config", ConfigError.UNSHOWN,
                          f"must be a mapping, not {type(config).__name__}")
    mapping = dict(config)
    if "api_key" in given:
        mapping["api_key"] = given["api_key"].get_secret_value()
    if "timeout" in given:
        # The whole call, retries included: rag-llm's deadline.
        mapping["deadline"] = given["timeout"]
    if "max_retries" in given:
        retries = given["max_retries"]
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError("max_retries", retries, "must be an integer >= 0")
        retry = mapping.get("retry")
        mapping["retry"] = {**(retry if isinstance(retry, Mapping) else {}),
                            "max_attempts": retries + 1}
    return create_provider(kind, mapping), True


class RagLLMEmbeddings(ProviderOwner, BaseModel, Embeddings):
    """LangChain ``Embeddings`` over a rag-llm embedding provider.

    ``RagLLMEmbeddings(provider=p)`` calls ``p`` and leaves it open;
    ``RagLLMEmbeddings(config={...})`` builds its own provider, released by
    ``close()``/``aclose()``. ``api_key``, ``timeout`` (the whole call, retries included) and
    ``max_retries`` go into that config; with ``provider=`` they are the provider's.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    provider: SkipValidation[Embedder | None] = Field(default=None, exclude=True)
    config: SkipValidation[Mapping[str, Any] | None] = Field(default=None, exclude=True,
                                                             repr=False)
    api_key: SecretStr | None = Field(default=None, exclude=True)
    timeout: float | None = None
    max_retries: int | None = None
    _owned: bool = PrivateAttr(default=False)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Built here, not in a validator: pydantic would wrap rag-llm's ConfigError.
        self.provider, self._owned = _connect(
            "embedding", self.provider, self.config,
            {"api_key": self.api_key, "timeout": self.timeout, "max_retries": self.max_retries})

    def _held(self) -> tuple[Embedder, bool]:
        assert self.provider is not None
        return self.provider, self._owned

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._held()[0].embed(texts)

    def embed_query(self, text: str) -> list[float]:
        return self._held()[0].embed([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self._held()[0].aembed(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return (await self._held()[0].aembed([text]))[0]


class ChatRagLLM(ProviderOwner, BaseChatModel):
    """LangChain chat model over a rag-llm chat provider (any OpenAI-shaped chat API).

    Sync, async and streaming calls; ``usage_metadata`` from the API's usage (streams ask for
    it with ``stream_options={"include_usage": True}`` unless ``stream_usage=False``); tool
    calls the API returns become ``AIMessage.tool_calls`` (arguments that are not JSON,
    ``invalid_tool_calls``), streamed ones ``tool_call_chunks``. Upstream failures raise
    rag-llm's typed errors (:mod:`rag_llm.errors`).

    ``model`` overrides the provider's model in each request, as does a per-call ``model=``.
    ``api_key``, ``timeout`` and ``max_retries`` go into the ``config=`` mapping; with
    ``provider=`` they belong to the provider and setting them here is an error.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True,
                              protected_namespaces=())

    provider: ChatProvider | None = Field(default=None, exclude=True)
    config: SkipValidation[Mapping[str, Any] | None] = Field(default=None, exclude=True,
                                                             repr=False)
    model_name: str | None = Field(default=None, alias="model")
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, alias="max_completion_tokens")
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = Field(default=None, alias="stop_sequences")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Other request fields, sent as given (``response_format``, ``user``, ...)."""
    streaming: bool = False
    """Whether ``invoke`` streams (and aggregates) by default."""
    stream_usage: bool = True
    api_key: SecretStr | None = Field(default=None, exclude=True)
    timeout: float | None = None
    max_retries: int | None = None
    _owned: bool = PrivateAttr(default=False)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self.provider, self._owned = _connect(
            "llm", self.provider, self.config,
            {"api_key": self.api_key, "timeout": self.timeout, "max_retries": self.max_retries})

    def _held(self) -> tuple[ChatProvider, bool]:
        assert self.provider is not None
        return self.provider, self._owned

    @property
    def _llm_type(self) -> str:
        return "rag-llm"

    @property
    def _model(self) -> str:
        return self.model_name or self._held()[0].config.model

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self._model, **self._request_defaults()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model = kwargs.get("model")
        params = LangSmithParams(ls_provider=self._held()[0].config.type,
                                 ls_model_name=model if isinstance(model, str) else self._model,
                                 ls_model_type="chat")
        temperature = kwargs.get("temperature", self.temperature)
        if isinstance(temperature, int | float):
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        stops = _stops(stop or kwargs.get("stop") or self.stop)
        if stops:
            params["ls_stop"] = stops
        return params

    def _request_defaults(self) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.model_kwargs)
        if self.model_name is not None:
            params["model"] = self.model_name
        for name in ("temperature", "max_tokens", "top_p", "seed"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        return params

    def _request(self, messages: list[BaseMessage], stop: list[str] | None,
                 kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The OpenAI messages and the other request fields of one call."""
        params = self._request_defaults()
        stops = _stops(stop or self.stop)
        if stops:
            params["stop"] = stops
        params.update(kwargs)
        return _openai_messages(messages), params

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        kwargs.pop("stream_usage", None)
        wire, params = self._request(messages, stop, kwargs)
        return _chat_result(self._held()[0].chat_completion(wire, **params))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        kwargs.pop("stream_usage", None)
        wire, params = self._request(messages, stop, kwargs)
        return _chat_result(await self._held()[0].achat_completion(wire, **params))

    def _stream_request(self, messages: list[BaseMessage], stop: list[str] | None,
                        kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        usage = kwargs.pop("stream_usage", self.stream_usage)
        wire, params = self._request(messages, stop, kwargs)
        params.pop("stream", None)
        if usage:
            params.setdefault("stream_options", {"include_usage": True})
        return wire, params

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        wire, params = self._stream_request(messages, stop, kwargs)
        for raw in self._held()[0].stream_chunks(wire, **params):
            chunk = _generation_chunk(raw)
            if chunk is not None:
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        wire, params = self._stream_request(messages, stop, kwargs)
        async for raw in self._held()[0].astream_chunks(wire, **params):
            chunk = _generation_chunk(raw)
            if chunk is not None:
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
                   *, tool_choice: dict[str, Any] | str | bool | None = None,
                   strict: bool | None = None, parallel_tool_calls: bool | None = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Send ``tools`` (anything ``convert_to_openai_tool`` takes) with each call.

        ``tool_choice``: a tool's name, ``"auto"``, ``"none"``, ``"required"`` (or ``"any"``,
        ``True``), an OpenAI ``tool_choice`` dict, or None/False for the API's default.
        """
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        names = {tool["function"]["name"] for tool in formatted if "function" in tool}
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        if tool_choice in _FORCE_A_TOOL:
            kwargs["tool_choice"] = "required"
        elif isinstance(tool_choice, str) and tool_choice in names:
            kwargs["tool_choice"] = {"type": "function", "function": {"name": tool_choice}}
        elif isinstance(tool_choice, str | dict):
            kwargs["tool_choice"] = tool_choice
        elif tool_choice not in (None, False):
            raise ConfigError("tool_choice", tool_choice,
                              "must be a tool name, 'auto', 'none', 'required', 'any', "
                              "a bool or an OpenAI tool_choice dict")
        return super().bind(tools=formatted, **kwargs)


def _stops(stop: list[str] | str | None) -> list[str] | None:
    return [stop] if isinstance(stop, str) else (list(stop) if stop else None)


def _usage(usage: Any) -> UsageMetadata | None:
    """LangChain's usage from an OpenAI ``usage`` object (None when there is none)."""
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    metadata = UsageMetadata(input_tokens=prompt, output_tokens=completion,
                             total_tokens=usage.get("total_tokens") or prompt + completion)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if isinstance(cached, int):
        metadata["input_token_details"] = InputTokenDetails(cache_read=cached)
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if isinstance(reasoning, int):
        metadata["output_token_details"] = OutputTokenDetails(reasoning=reasoning)
    return metadata


def _tool_calls(raw_calls: Any) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """An assistant message's ``tool_calls``, parsed; arguments that are not a JSON object
    make an invalid tool call carrying the error, as LangChain's OpenAI models do."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in raw_calls if isinstance(raw_calls, list) else []:
        try:
            parsed = parse_tool_call(raw, return_id=True)
        except (OutputParserException, KeyError, TypeError, json.JSONDecodeError) as exc:
            invalid.append(make_invalid_tool_call(raw, str(exc)))
            continue
        if parsed is None:
            invalid.append(make_invalid_tool_call(raw, "no 'function' in the tool call"))
        else:
            calls.append(ToolCall(name=parsed["name"], args=parsed["args"], id=parsed["id"],
                                  type="tool_call"))
    return calls, invalid


def _chat_result(completion: dict[str, Any]) -> ChatResult:
    usage = _usage(completion.get("usage"))
    model = completion.get("model")
    generations = []
    for choice in completion["choices"]:
        message = choice["message"]
        calls, invalid = _tool_calls(message.get("tool_calls"))
        metadata = {"model_name": model, "finish_reason": choice.get("finish_reason")}
        if completion.get("system_fingerprint"):
            metadata["system_fingerprint"] = completion["system_fingerprint"]
        extra = {"refusal": message["refusal"]} if message.get("refusal") else {}
        ai = AIMessage(content=message.get("content") or "", tool_calls=calls,
                       invalid_tool_calls=invalid, usage_metadata=usage,
                       response_metadata=metadata, additional_kwargs=extra,
                       id=completion.get("id"))
        generations.append(ChatGeneration(
            message=ai, generation_info={"finish_reason": choice.get("finish_reason")}))
    return ChatResult(generations=generations,
                      llm_output={"token_usage": completion.get("usage"), "model_name": model})


def _generation_chunk(chunk: dict[str, Any]) -> ChatGenerationChunk | None:
    """One ``chat.completion.chunk`` as LangChain's chunk; None for one that carries nothing."""
    usage = _usage(chunk.get("usage"))
    choices = chunk.get("choices") or []
    if not choices:
        if usage is None:
            return None
        return ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage))
    choice = choices[0]
    delta = choice.get("delta") or {}
    tool_chunks: list[ToolCallChunk] = [
        tool_call_chunk(name=(call.get("function") or {}).get("name"),
                        args=(call.get("function") or {}).get("arguments"),
                        id=call.get("id"), index=call.get("index"))
        for call in delta.get("tool_calls") or [] if isinstance(call, Mapping)]
    metadata: dict[str, Any] = {}
    # Only the finishing chunk names the model: LangChain concatenates string metadata
    # when it adds chunks up.
    if choice.get("finish_reason"):
        metadata = {"finish_reason": choice["finish_reason"], "model_name": chunk.get("model")}
    message = AIMessageChunk(content=delta.get("content") or "", tool_call_chunks=tool_chunks,
                             usage_metadata=usage, response_metadata=metadata,
                             id=chunk.get("id"))
    return ChatGenerationChunk(message=message)
