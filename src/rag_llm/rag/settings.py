"""``RagSettings``: where the store lives, how documents are chunked, what the API accepts.

Read from the ``[rag]`` table of the config file (the one :class:`~rag_llm.config.Settings`
reads its providers from), then from ``RAG_LLM_<FIELD>`` environment variables, which win.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from rag_llm.config import ENV_PREFIX, Secret, read_config_file
from rag_llm.errors import ConfigError
from rag_llm.rag.stores import DEFAULT_STORE, check_store, split_password, store_scheme

__all__ = ["DEFAULT_DATA_DIR", "RagSettings"]

DEFAULT_DATA_DIR: Final = ".rag-llm"
# Below the local model's 256-wordpiece window, so no chunk is truncated when embedded.
DEFAULT_CHUNK_SIZE: Final = 200
DEFAULT_CHUNK_OVERLAP: Final = 40
DEFAULT_TOP_K: Final = 5
DEFAULT_EMBED_BATCH_SIZE: Final = 64
DEFAULT_EMBED_CONCURRENCY: Final = 8
DEFAULT_MAX_UPLOAD_BYTES: Final = 20 * 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES: Final = 64 * 1024
# Server-grade stores (a ``store`` URL): connections per process, connect timeout (seconds),
# the HNSW index's build parameters and search breadth, and the size below which search is
# exact. m=16, ef_construction=64 (pgvector's own defaults) and ef_search=100 give recall@10 of
# 0.99-1.0 on clustered 384-dim data at 100k chunks (scripts/bench_vector_search.py);
# ef_construction=128 gains 0.004 there for twice the build and insert time.
DEFAULT_STORE_POOL_MIN_SIZE: Final = 1
DEFAULT_STORE_POOL_MAX_SIZE: Final = 10
DEFAULT_STORE_CONNECT_TIMEOUT: Final = 10
DEFAULT_HNSW_M: Final = 16
DEFAULT_HNSW_EF_CONSTRUCTION: Final = 64
DEFAULT_HNSW_EF_SEARCH: Final = 100
DEFAULT_EXACT_SEARCH_BELOW: Final = 10_000
# The most memory (MiB) an index build may take on the server (its maintenance_work_mem for
# that build): the graph of 1M chunks of 384 dimensions needs about 3 GiB, and a build past
# its memory takes rows several times slower.
DEFAULT_HNSW_BUILD_MEMORY_MB: Final = 1024

_INT_FIELDS: Final = ("chunk_size", "chunk_overlap", "top_k", "embed_batch_size",
                      "embed_concurrency", "max_upload_bytes", "max_request_bytes",
                      "store_pool_min_size", "store_pool_max_size", "store_connect_timeout",
                      "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search",
                      "hnsw_build_memory_mb", "exact_search_below")
_MAX_BUILD_MEMORY_MB: Final = 2_097_151  # PostgreSQL's limit for maintenance_work_mem, 2 TiB
_ZERO_ALLOWED: Final = ("chunk_overlap", "store_pool_min_size", "exact_search_below")


@dataclass(frozen=True, slots=True)
class RagSettings:
    """Validated settings of the RAG service.

    ``store`` names the document store (see :mod:`rag_llm.rag.stores`; SQLite files under
    ``data_dir`` by default) or is a URL (``postgresql://user@host:5432/db``); a password in
    the URL is moved to ``store_password``. The ``store_*``, ``hnsw_*`` and
    ``exact_search_below`` settings apply to server stores (:mod:`rag_llm.rag.pg_store`).
    ``chunk_size`` and ``chunk_overlap`` count tokens; ``api_key``, when set, is required by
    every ``/v1`` endpoint of the HTTP service.

    >>> RagSettings(data_dir=Path("/tmp/rag"), chunk_size=200, chunk_overlap=40).top_k
    5
    """

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    store: str = DEFAULT_STORE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    top_k: int = DEFAULT_TOP_K
    embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE
    embed_concurrency: int = DEFAULT_EMBED_CONCURRENCY
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    api_key: Secret | None = field(default=None)
    store_password: Secret | None = field(default=None)
    store_pool_min_size: int = DEFAULT_STORE_POOL_MIN_SIZE
    store_pool_max_size: int = DEFAULT_STORE_POOL_MAX_SIZE
    store_connect_timeout: int = DEFAULT_STORE_CONNECT_TIMEOUT
    hnsw_m: int = DEFAULT_HNSW_M
    hnsw_ef_construction: int = DEFAULT_HNSW_EF_CONSTRUCTION
    hnsw_ef_search: int = DEFAULT_HNSW_EF_SEARCH
    hnsw_build_memory_mb: int = DEFAULT_HNSW_BUILD_MEMORY_MB
    exact_search_below: int = DEFAULT_EXACT_SEARCH_BELOW

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(_text("data_dir", self.data_dir)))
        check_store(self.store)
        if store_scheme(self.store) is not None:
            url, password = split_password(self.store)
            if password is not None:  # out of the URL, so nothing that shows it shows this
                object.__setattr__(self, "store", url)
                object.__setattr__(self, "store_password", password)
        for secret in ("api_key", "store_password"):
            value = getattr(self, secret)
            if isinstance(value, str):
                object.__setattr__(self, secret, Secret(value) if value else None)
            elif value is not None and not isinstance(value, Secret):
                raise ConfigError(secret, type(value).__name__, "must be a string")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            minimum = 0 if name in _ZERO_ALLOWED else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(name, value, f"must be an integer >= {minimum}")
        if self.chunk_size < 16:
            raise ConfigError("chunk_size", self.chunk_size, "must be at least 16 tokens")
        if self.chunk_overlap >= self.chunk_size:
            raise ConfigError("chunk_overlap", self.chunk_overlap,
                              f"must be smaller than chunk_size={self.chunk_size}")
        if self.store_pool_max_size < max(1, self.store_pool_min_size):
            raise ConfigError("store_pool_max_size", self.store_pool_max_size,
                              f"must be at least store_pool_min_size="
                              f"{self.store_pool_min_size} and 1")
        if self.hnsw_ef_search > 1000:  # pgvector's limits, from here down
            raise ConfigError("hnsw_ef_search", self.hnsw_ef_search, "must be at most 1000")
        if not 2 <= self.hnsw_m <= 100:
            raise ConfigError("hnsw_m", self.hnsw_m, "must be between 2 and 100")
        if not 2 * self.hnsw_m <= self.hnsw_ef_construction <= 1000:
            raise ConfigError("hnsw_ef_construction", self.hnsw_ef_construction,
                              f"must be between 2 * hnsw_m = {2 * self.hnsw_m} and 1000")
        if not 64 <= self.hnsw_build_memory_mb <= _MAX_BUILD_MEMORY_MB:
            raise ConfigError("hnsw_build_memory_mb", self.hnsw_build_memory_mb,
                              f"must be between 64 and {_MAX_BUILD_MEMORY_MB} (MiB)")

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"RagSettings({shown})"

    def with_overrides(self, **values: Any) -> RagSettings:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None,
             environ: Mapping[str, str] | None = None) -> RagSettings:
        """The ``[rag]`` table of the config file (``path`` or ``$RAG_LLM_CONFIG``), then env."""
        env = os.environ if environ is None else environ
        file_path = path if path is not None else env.get(f"{ENV_PREFIX}CONFIG")
        values: dict[str, Any] = dict(_rag_table(Path(file_path))) if file_path else {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"rag.{unknown[0]}", "<set>",
                              f"is not a known setting; known: {', '.join(sorted(known))}")
        for name in known:
            raw = env.get(f"{ENV_PREFIX}{name.upper()}")
            if raw is not None:
                values[name] = _coerce(name, raw)
        return cls(**values)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise ConfigError(name, value, "must be a non-empty path")
    return str(value)


def _coerce(name: str, raw: str) -> object:
    if name not in _INT_FIELDS:
        return raw
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, raw, "must be an integer") from None


def _rag_table(path: Path) -> Mapping[str, Any]:
    """The ``[rag]`` table of ``path``; the file itself is validated by ``Settings.load``."""
    data = read_config_file(path)
    table = data.get("rag", {})
    if not isinstance(table, dict):
        raise ConfigError("rag", type(table).__name__, "must be a table")
    return table
