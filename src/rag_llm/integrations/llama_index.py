"""LlamaIndex over rag-llm providers: :class:`RagLLMEmbedding` and :class:`RagLLM`.

Both take either ``provider=``, a rag-llm provider the caller made and keeps (the class
borrows it and never closes it), or ``config=``, a provider mapping as
:func:`rag_llm.create_provider` takes it, whose provider the class creates and owns:
``close()``/``aclose()`` (or ``with``/``async with``) release it.

Every call goes through the provider, so its pool, retries, breakers, limits and metrics
apply, and its errors (:mod:`rag_llm.errors`) reach the caller unchanged. The async forms
are the provider's own async calls, not sync calls on a thread.

>>> from llama_index.core import Settings
>>> from rag_llm.integrations.llama_index import RagLLM, RagLLMEmbedding
>>> Settings.embed_model = RagLLMEmbedding(config={"type": "openai",  # doctest: +SKIP
...     "model": "text-embedding-3-small", "api_key": "sk-..."})
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.constants import (
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_EMBED_BATCH_SIZE,
    DEFAULT_NUM_OUTPUTS,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json

from rag_llm.errors import ConfigError
from rag_llm.integrations._owner import ProviderOwner
from rag_llm.providers import ChatProvider, Embedder, EmbeddingProvider, create_provider

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["RagLLM", "RagLLMEmbedding", "openai_messages"]

_F = TypeVar("_F", bound=Callable[..., Any])
# LlamaIndex caps embed_batch_size here; rag-llm splits a bigger list by max_batch_size.
_MAX_EMBED_BATCH: Final = 2048
# Other model families' names for the model's turns; every other role is OpenAI's own.
_ROLES: Final[Mapping[MessageRole, str]] = {
    MessageRole.CHATBOT: "assistant",  # Cohere's
    MessageRole.MODEL: "assistant",  # Gemini's
}
# What a message's additional_kwargs may carry into the OpenAI message, as it is.
_MESSAGE_FIELDS: Final = ("name", "tool_calls", "tool_call_id")
_USAGE: Final = ("prompt_tokens", "completion_tokens", "total_tokens")


def _chat_event(method: _F) -> _F:
    """LlamaIndex's chat instrumentation (events, callbacks, rate limiter) around ``method``."""
    return cast(_F, llm_chat_callback()(method))


def _completion_event(method: _F) -> _F:
    """LlamaIndex's completion instrumentation around ``method``."""
    return cast(_F, llm_completion_callback()(method))


def _exactly_one(provider: object, config: Mapping[str, Any] | None) -> None:
    if provider is None and config is None:
        raise ConfigError("provider", None, "give provider= (a rag-llm provider, borrowed) or "
                                            "config= (a provider mapping, owned)")
    if provider is not None and config is not None:
        raise ConfigError("config", ConfigError.UNSHOWN, "give provider= or config=, not both")


def _embedder(provider: Embedder | None,
              config: Mapping[str, Any] | None) -> tuple[Embedder, bool]:
    """The embedding provider to call, and whether this object owns it."""
    _exactly_one(provider, config)
    if config is not None:
        return create_provider("embedding", config), True
    if isinstance(provider, ChatProvider) or not callable(getattr(provider, "aembed", None)):
        raise ConfigError("provider", provider, "must be a rag-llm embedding provider")
    return cast(Embedder, provider), False


def _chatter(provider: ChatProvider | None,
             config: Mapping[str, Any] | None) -> tuple[ChatProvider, bool]:
    """The chat provider to call, and whether this object owns it."""
    _exactly_one(provider, config)
    if config is not None:
        return create_provider("llm", config), True
    if not isinstance(provider, ChatProvider):
        raise ConfigError("provider", provider, "must be a rag-llm chat provider "
                                                "(create_provider('llm', ...))")
    return provider, False


class RagLLMEmbedding(ProviderOwner, BaseEmbedding):
    """A LlamaIndex embedding model whose calls are a rag-llm embedding provider's.

    ``RagLLMEmbedding(provider=emb)`` borrows ``emb``; ``RagLLMEmbedding(config={...})``
    owns the provider it creates (close it with ``close()``/``aclose()``). Other keyword
    arguments are :class:`~llama_index.core.base.embeddings.base.BaseEmbedding`'s;
    ``embed_batch_size`` defaults to the provider's ``max_batch_size`` (at most 2048), so a
    batch LlamaIndex hands over goes to the provider whole and rag-llm sizes the requests.
    """

    _provider: Embedder = PrivateAttr()
    _owned: bool = PrivateAttr(default=False)

    def __init__(self, *, provider: Embedder | None = None,
                 config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        embedder, owned = _embedder(provider, config)
        try:
            kwargs.setdefault("model_name", _model_of(embedder))
            kwargs.setdefault("embed_batch_size", _batch_size_of(embedder))
            super().__init__(**kwargs)
        except BaseException:
            if owned:
                embedder.close()
            raise
        self._provider = embedder
        self._owned = owned

    @classmethod
    def class_name(cls) -> str:
        return "RagLLMEmbedding"

    @property
    def provider(self) -> Embedder:
        """The rag-llm provider every call goes through (its pool and stats)."""
        return self._provider

    def _held(self) -> tuple[Embedder, bool]:
        return self._provider, self._owned

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._provider.embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._provider.aembed([query]))[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._provider.embed([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._provider.aembed([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._provider.embed(texts) if texts else []

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self._provider.aembed(texts) if texts else []


def _model_of(embedder: Embedder) -> str:
    if isinstance(embedder, EmbeddingProvider):
        return embedder.config.model
    return str(getattr(embedder, "model", embedder.name))


def _batch_size_of(embedder: Embedder) -> int:
    if isinstance(embedder, EmbeddingProvider):
        return min(embedder.config.max_batch_size, _MAX_EMBED_BATCH)
    size = getattr(embedder, "batch_size", None)
    if isinstance(size, int) and size > 0:
        return min(size, _MAX_EMBED_BATCH)
    return DEFAULT_EMBED_BATCH_SIZE


class RagLLM(ProviderOwner, FunctionCallingLLM):
    """A LlamaIndex chat LLM whose calls are a rag-llm chat provider's chat completions.

    ``RagLLM(provider=chat)`` borrows ``chat``; ``RagLLM(config={...})`` owns the provider
    it creates (close it with ``close()``/``aclose()``). ``complete`` sends the prompt as
    one user message. ``model`` (the provider's unless given), ``temperature``,
    ``max_tokens`` and ``additional_kwargs`` go into every request, under the keyword
    arguments of the call itself. Whole answers carry the completion object in ``raw`` and
    its token counts in ``additional_kwargs``; a stream yields one response per chunk with
    text (``delta``), then one with the token counts unless ``stream_usage=False``. Tools
    (``chat_with_tools``, ``predict_and_call``, agents) go as OpenAI ``tools``; set
    ``is_function_calling_model=False`` for a model without them.
    """

    model: str = Field(default="", description="The model each request names; by default "
                                               "the provider's.")
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, gt=0,
                                description="Tokens the model takes, prompt and answer.")
    num_output: int = Field(default=DEFAULT_NUM_OUTPUTS, gt=0,
                            description="Tokens LlamaIndex leaves for the answer.")
    temperature: float | None = Field(default=None, ge=0.0,
                                      description="Sampling temperature; None: the API's.")
    max_tokens: int | None = Field(default=None, gt=0,
                                   description="Most tokens per answer; None: the API's.")
    additional_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further request fields sent with every call.")
    stream_usage: bool = Field(
        default=True, description="Ask streams for token counts (stream_options), yielded "
                                  "as a last response.")
    is_function_calling_model: bool = Field(
        default=True, description="Whether the model takes OpenAI tools.")

    _provider: ChatProvider = PrivateAttr()
    _owned: bool = PrivateAttr(default=False)

    def __init__(self, *, provider: ChatProvider | None = None,
                 config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        chatter, owned = _chatter(provider, config)
        try:
            kwargs.setdefault("model", chatter.config.model)
            super().__init__(**kwargs)
        except BaseException:
            if owned:
                chatter.close()
            raise
        self._provider = chatter
        self._owned = owned

    @classmethod
    def class_name(cls) -> str:
        return "RagLLM"

    @property
    def provider(self) -> ChatProvider:
        """The rag-llm provider every call goes through (its pool and stats)."""
        return self._provider

    def _held(self) -> tuple[ChatProvider, bool]:
        return self._provider, self._owned

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.num_output,
                           is_chat_model=True, model_name=self.model,
                           is_function_calling_model=self.is_function_calling_model)

    def _params(self, kwargs: Mapping[str, Any], *, stream: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        params.update(self.additional_kwargs)
        params.update(kwargs)
        if stream and self.stream_usage:
            params.setdefault("stream_options", {"include_usage": True})
        return params

    # The undecorated calls, which the completion forms reuse without a second chat event.

    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        completion = self._provider.chat_completion(openai_messages(messages),
                                                    **self._params(kwargs))
        return _chat_response(completion)

    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        completion = await self._provider.achat_completion(openai_messages(messages),
                                                           **self._params(kwargs))
        return _chat_response(completion)

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        chunks = self._provider.stream_chunks(openai_messages(messages),
                                              **self._params(kwargs, stream=True))
        return _stream_responses(chunks)

    async def _astream_chat(self, messages: Sequence[ChatMessage],
                            **kwargs: Any) -> ChatResponseAsyncGen:
        chunks = self._provider.astream_chunks(openai_messages(messages),
                                               **self._params(kwargs, stream=True))
        return _astream_responses(chunks)

    @_chat_event
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, **kwargs)

    @_chat_event
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._achat(messages, **kwargs)

    @_chat_event
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(messages, **kwargs)

    @_chat_event
    async def astream_chat(self, messages: Sequence[ChatMessage],
                           **kwargs: Any) -> ChatResponseAsyncGen:
        return await self._astream_chat(messages, **kwargs)

    @_completion_event
    def complete(self, prompt: str, formatted: bool = False,
                 **kwargs: Any) -> CompletionResponse:
        return chat_to_completion_decorator(self._chat)(prompt, **kwargs)

    @_completion_event
    async def acomplete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponse:
        return await achat_to_completion_decorator(self._achat)(prompt, **kwargs)

    @_completion_event
    def stream_complete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self._stream_chat)(prompt, **kwargs)

    @_completion_event
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self._astream_chat)(prompt, **kwargs)

    # -- Tools, as FunctionCallingLLM asks for them --

    def _prepare_chat_with_tools(
            self, tools: Sequence[BaseTool], user_msg: str | ChatMessage | None = None,
            chat_history: list[ChatMessage] | None = None, verbose: bool = False,
            allow_parallel_tool_calls: bool = False, tool_required: bool = False,
            tool_choice: str | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg)
                            if isinstance(user_msg, str) else user_msg)
        specs = [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]
        if specs:
            kwargs["tools"] = specs
            kwargs["tool_choice"] = _tool_choice(tool_choice, tool_required)
        return {"messages": messages, **kwargs}

    def _validate_chat_with_tools_response(
            self, response: ChatResponse, tools: Sequence[BaseTool],
            allow_parallel_tool_calls: bool = False, **kwargs: Any) -> ChatResponse:
        # parallel_tool_calls is not sent (many compatible servers refuse it): keep one here.
        calls = response.message.additional_kwargs.get("tool_calls")
        if not allow_parallel_tool_calls and isinstance(calls, list) and len(calls) > 1:
            response.message.additional_kwargs["tool_calls"] = calls[:1]
        return response

    def get_tool_calls_from_response(self, response: ChatResponse,
                                     error_on_no_tool_call: bool = True,
                                     **kwargs: Any) -> list[ToolSelection]:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError("the model answered without a tool call")
        selections = []
        for call in calls:
            function = call.get("function") or {}
            arguments = function.get("arguments") or "{}"
            try:  # a stream's calls grow chunk by chunk: their arguments may be partial
                parsed = parse_partial_json(arguments)
            except ValueError:
                parsed = {}
            selections.append(ToolSelection(tool_id=call.get("id") or "",
                                            tool_name=function.get("name") or "",
                                            tool_kwargs=parsed if isinstance(parsed, dict)
                                            else {}))
        return selections


def _tool_choice(choice: str | dict[str, Any] | None, required: bool) -> str | dict[str, Any]:
    """OpenAI's ``tool_choice``: a mode, or a tool's name as the one to call."""
    if choice is None:
        return "required" if required else "auto"
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        return {"type": "function", "function": {"name": choice}}
    return choice


def openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as OpenAI chat messages (text content only).

    ``name``, ``tool_calls`` and ``tool_call_id`` in a message's ``additional_kwargs`` are
    carried over, so tool results can go back to the model.
    """
    converted = []
    for i, message in enumerate(messages):
        for block in message.blocks:
            if not isinstance(block, TextBlock):
                raise ValueError(f"messages[{i}] holds a {type(block).__name__}: RagLLM sends "
                                 "text only")
        entry: dict[str, Any] = {"role": _ROLES.get(message.role, message.role.value),
                                 "content": message.content}
        for field in _MESSAGE_FIELDS:
            value = message.additional_kwargs.get(field)
            if value is not None:
                entry[field] = _plain(value)
        converted.append(entry)
    return converted


def _plain(value: Any) -> Any:
    """JSON-ready: SDK objects (tool calls from another LLM class) as their dicts."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def _usage(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The token counts of a completion or chunk, as llama-index-llms-openai reports them."""
    usage = obj.get("usage")
    if not isinstance(usage, Mapping):
        return {}
    return {key: usage.get(key, 0) for key in _USAGE}


def _chat_response(completion: dict[str, Any]) -> ChatResponse:
    # The provider has checked that choices[0] holds a message.
    message = completion["choices"][0]["message"]
    extra = {"tool_calls": message["tool_calls"]} if message.get("tool_calls") else {}
    content = message.get("content")
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT,
                            content=content if isinstance(content, str) else None,
                            additional_kwargs=extra),
        raw=completion, additional_kwargs=_usage(completion))


class _StreamState:
    """The answer so far, from chunk deltas: its text and its tool calls by index."""

    def __init__(self) -> None:
        self.text = ""
        self.tool_calls: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: dict[str, Any]) -> ChatResponse | None:
        """The response ``chunk`` makes, or None when it adds no text, tool call or usage."""
        choices = chunk.get("choices")
        delta = choices[0].get("delta") if isinstance(choices, list) and choices else None
        delta = delta if isinstance(delta, dict) else {}
        piece = delta.get("content")
        piece = piece if isinstance(piece, str) else ""
        calls = delta.get("tool_calls")
        usage = _usage(chunk)
        if not piece and not calls and not usage:
            return None
        self.text += piece
        if isinstance(calls, list):
            self._merge(calls)
        # Copies: each response keeps the calls as they stood at its chunk.
        extra = {"tool_calls": [{**call, "function": dict(call["function"])}
                                for call in self.tool_calls.values()]} if self.tool_calls else {}
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=self.text,
                                additional_kwargs=extra),
            delta=piece, raw=chunk, additional_kwargs=usage)

    def _merge(self, calls: list[Any]) -> None:
        # A tool call streams as pieces of one index: id and name once, arguments in parts.
        for call in calls:
            if not isinstance(call, dict):
                continue
            index = call.get("index", len(self.tool_calls))
            whole = self.tool_calls.setdefault(
                index, {"id": None, "type": "function",
                        "function": {"name": "", "arguments": ""}})
            for key in ("id", "type"):
                if call.get(key):
                    whole[key] = call[key]
            function = call.get("function")
            if isinstance(function, dict):
                whole["function"]["name"] += function.get("name") or ""
                whole["function"]["arguments"] += function.get("arguments") or ""


# A consumer that stops early closes these, and so the provider's stream and its connection.

def _stream_responses(chunks: Iterator[dict[str, Any]]) -> ChatResponseGen:
    state = _StreamState()
    try:
        for chunk in chunks:
            response = state.feed(chunk)
            if response is not None:
                yield response
    finally:
        close = getattr(chunks, "close", None)
        if callable(close):
            close()


async def _astream_responses(chunks: AsyncIterator[dict[str, Any]]) -> ChatResponseAsyncGen:
    state = _StreamState()
    try:
        async for chunk in chunks:
            response = state.feed(chunk)
            if response is not None:
                yield response
    finally:
        aclose = getattr(chunks, "aclose", None)
        if callable(aclose):
            await aclose()
