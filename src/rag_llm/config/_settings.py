"""``Settings``: provider tables and logging, from a TOML or YAML file and the environment.

Each value remembers where it came from (``file PATH``, ``environment VAR``), so an error
in it names the file's table or the variable, and ``rag-llm config check`` can say which
value is a default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from rag_llm.config._provider import FIELD_TYPES
from rag_llm.config._secret import Secret
from rag_llm.config._state import STATE_KEYS, state_config
from rag_llm.errors import ConfigError
from rag_llm.validation import closest, redact_url, refuse_unknown

__all__ = ["ENV_PREFIX", "Settings", "read_config_file"]

ENV_PREFIX: Final = "RAG_LLM_"
LOG_FORMATS: Final = ("console", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


def _coerce_env(name: str, key: str, raw: str) -> object:
    """The value of variable ``name`` as the type setting ``key`` takes."""
    kind = FIELD_TYPES.get(key, str)
    try:
        if kind is bool or (key == "verify" and raw.lower() in ("true", "false", "1", "0")):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ConfigError(name, raw, f"must be {kind.__name__}") from None
    if kind in (dict, list):
        raise ConfigError(name, ConfigError.UNSHOWN,
                          "cannot be set from the environment; use a config file")
    return raw


def env_name(kind: str, key: str) -> str:
    """The environment variable that sets ``key`` of the ``kind`` provider."""
    return f"{ENV_PREFIX}{kind.upper()}__{key.upper()}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Provider configs by kind (``"embedding"``, ``"llm"``) plus logging settings.

    Loaded by :meth:`load` from a TOML or YAML file, then environment variables
    (``RAG_LLM_<KIND>__<FIELD>``, e.g. ``RAG_LLM_EMBEDDING__MAX_CONNECTIONS=50``), which
    take precedence. ``OPENAI_API_KEY`` fills ``api_key`` for ``openai`` providers that set none.
    ``sources`` maps ``providers.KIND.KEY`` to where that value came from.
    """

    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    log_format: str = "console"
    log_level: str = "info"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    # The [state] table (url, prefix, timeout): the Redis every API provider shares
    # limits through, unless it names its own ``state``. Empty: limits stay in-process.
    state: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ConfigError("log_format", self.log_format, "must be 'console' or 'json'")
        if not isinstance(self.log_level, str) or self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError("log_level", self.log_level, "must be a logging level name")
        if not isinstance(self.providers, Mapping) or not all(
                isinstance(table, Mapping) for table in self.providers.values()):
            raise ConfigError("providers", ConfigError.UNSHOWN,
                              "must map provider kinds to tables of settings")
        if not isinstance(self.state, Mapping):
            raise ConfigError("state", ConfigError.UNSHOWN, "must be a table")
        if self.state:
            try:
                state_config(self.state)
            except ConfigError as exc:
                raise self._locate_state(exc) from None

    def _locate_state(self, error: ConfigError) -> ConfigError:
        """``error`` in the [state] table, naming the variable when one set the value."""
        key = error.field.removeprefix("state.")
        origin = self.sources.get(f"state.{key}", "")
        if origin.startswith("environment "):
            return ConfigError(origin.removeprefix("environment "), error.value, error.reason)
        return error

    def __repr__(self) -> str:
        state = redact_url(str(self.state["url"])) if self.state.get("url") else "memory"
        return (f"Settings(providers={sorted(self.providers)!r}, "
                f"log_format={self.log_format!r}, log_level={self.log_level!r}, "
                f"state={state!r})")

    def provider(self, kind: str) -> Mapping[str, Any] | None:
        return self.providers.get(kind)

    def with_providers(self, providers: Mapping[str, Mapping[str, Any]],
                       sources: Mapping[str, str]) -> Settings:
        """A copy with ``providers`` instead, the ``[state]`` table applied to them too."""
        tables = {kind: dict(values) for kind, values in providers.items()}
        known = dict(sources)
        _share_state(tables, self.state, known)
        return replace(self, providers=tables, sources=known)

    def source(self, kind: str, key: str) -> str:
        """Where ``key`` of the ``kind`` provider came from: a file, a variable, or code."""
        if key not in self.providers.get(kind, {}):
            return "default"
        return self.sources.get(f"providers.{kind}.{key}", "code")

    def locate(self, kind: str, error: ConfigError) -> ConfigError:
        """``error`` from building the ``kind`` provider, naming where the bad value was set.

        A key set by a variable is named by the variable (with the one it was likely
        meant to be); any other by its table: ``providers.embedding.max_connections``.
        """
        key = error.field.partition(".")[0].partition("[")[0]
        origin = self.sources.get(f"providers.{kind}.{key}", "")
        if origin.startswith("environment "):
            variable = origin.removeprefix("environment ")
            if variable.startswith(ENV_PREFIX):
                reason = error.reason.replace(f"of [providers.{kind}]", "")
                guess = closest(key, FIELD_TYPES)
                if "did you mean" in reason and guess:
                    reason = reason.partition(";")[0] + f"; did you mean {env_name(kind, guess)}?"
                rest = error.field[len(key):]
                return ConfigError(variable + rest, error.value, reason)
        return error.within(f"providers.{kind}.")

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Read the config file (``path`` or ``$RAG_LLM_CONFIG``), then overlay the environment."""
        env = os.environ if environ is None else environ
        file_path = path if path is not None else env.get(f"{ENV_PREFIX}CONFIG")
        data: dict[str, Any] = _read_file(Path(file_path)) if file_path else {}
        sources: dict[str, str] = {}
        providers: dict[str, dict[str, Any]] = {}
        for kind, values in data.get("providers", {}).items():
            if not isinstance(values, dict):
                raise ConfigError(f"providers.{kind}", type(values).__name__, "must be a table")
            providers[kind] = dict(values)
            sources.update({f"providers.{kind}.{key}": f"file {file_path}" for key in values})
        logging_section = data.get("logging", {})
        log_format = env.get(f"{ENV_PREFIX}LOG_FORMAT", logging_section.get("format", "console"))
        log_level = env.get(f"{ENV_PREFIX}LOG_LEVEL", logging_section.get("level", "info"))
        state: dict[str, Any] = dict(data.get("state", {}))
        sources.update({f"state.{key}": f"file {file_path} [state]" for key in state})
        for name, raw in env.items():
            if not name.startswith(ENV_PREFIX) or "__" not in name:
                continue
            kind, _, key = name[len(ENV_PREFIX):].lower().partition("__")
            if kind == "state":  # RAG_LLM_STATE__URL: the [state] table, not a provider
                if key not in STATE_KEYS:
                    guess = closest(key, STATE_KEYS)
                    raise ConfigError(name, ConfigError.UNSHOWN, "is not a known setting"
                                      + (f"; did you mean {ENV_PREFIX}STATE__{guess.upper()}?"
                                         if guess else ""))
                state[key] = float(raw) if key == "timeout" and _is_number(raw) else raw
                sources[f"state.{key}"] = f"environment {name}"
                continue
            providers.setdefault(kind, {})[key] = _coerce_env(name, key, raw)
            sources[f"providers.{kind}.{key}"] = f"environment {name}"
        _share_state(providers, state, sources)
        openai_key = env.get("OPENAI_API_KEY")
        for kind, values in providers.items():
            if openai_key and values.get("type") == "openai" and not values.get("api_key"):
                values["api_key"] = Secret(openai_key)
                sources[f"providers.{kind}.api_key"] = "environment OPENAI_API_KEY"
        return cls(providers=providers, log_format=log_format, log_level=log_level,
                   sources=sources, state=state)


def _is_number(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def _share_state(providers: dict[str, dict[str, Any]], state: Mapping[str, Any],
                 sources: dict[str, str]) -> None:
    """Give ``state`` (the ``[state]`` table) to every API provider that names none."""
    if not state.get("url"):
        return
    for kind, values in providers.items():
        # In-process models call no API: they share no limits.
        if "state" not in values and values.get("type") != "local":
            values["state"] = dict(state)
            sources[f"providers.{kind}.state"] = sources.get("state.url", "code")


def read_config_file(path: Path) -> dict[str, Any]:
    """The parsed TOML or YAML file at ``path``, as a mapping of its top-level tables."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config_file", str(path), f"cannot be read: {exc.strerror}") from None
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError("config_file", str(path), "must end in .toml, .yaml or .yml")
    data, problem = _parse(path, text)
    if problem is not None:
        # Raised outside the parser's except block: the parser's error quotes the file's
        # lines (PyYAML shows the offending one), and the file may hold an api_key.
        raise ConfigError("config_file", str(path), f"is not valid: {problem}")
    if not isinstance(data, dict):
        raise ConfigError("config_file", str(path), "must hold tables such as [providers]")
    return data


def _parse(path: Path, text: str) -> tuple[object, str | None]:
    """The parsed ``text``, or None and where and why it is not valid, quoting none of it."""
    if path.suffix == ".toml":
        import tomllib  # imported here: parsing config is off the import path

        try:
            return tomllib.loads(text), None
        except tomllib.TOMLDecodeError as exc:
            return None, str(exc)  # "Invalid value (at line 2, column 11)": no text quoted
    import yaml  # imported here: only YAML users pay for it

    try:
        return yaml.safe_load(text) or {}, None
    except yaml.MarkedYAMLError as exc:
        # Its context and problem are PyYAML's own phrases; its str() adds the lines.
        said = [f"{what}{_at(mark)}" for what, mark in ((exc.context, exc.context_mark),
                                                        (exc.problem, exc.problem_mark))
                if what]
        return None, ", ".join(said) or "malformed YAML"
    except yaml.YAMLError:
        return None, "malformed YAML"


def _at(mark: object) -> str:
    line, column = getattr(mark, "line", None), getattr(mark, "column", None)
    return "" if line is None or column is None else f" (at line {line + 1}, column {column + 1})"


# The file's top-level tables: providers, logging, and the RAG service's own.
_TABLES: Final = ("providers", "logging", "rag", "state")


def _read_file(path: Path) -> dict[str, Any]:
    data = read_config_file(path)
    for table in data:
        if table not in _TABLES:
            guess = closest(table, _TABLES)
            hint = f"did you mean [{guess}]?" if guess else f"known: {', '.join(_TABLES)}"
            raise ConfigError(table, ConfigError.UNSHOWN,
                              f"is not a known table of {path}; {hint}")
    if not isinstance(data.get("providers", {}), dict):
        raise ConfigError("config_file", str(path), "must hold a 'providers' table")
    state_section = data.get("state", {})
    if not isinstance(state_section, dict):
        raise ConfigError("state", type(state_section).__name__, "must be a table")
    refuse_unknown(state_section, STATE_KEYS, table="state")
    logging_section = data.get("logging", {})
    if not isinstance(logging_section, dict):
        raise ConfigError("logging", type(logging_section).__name__, "must be a table")
    for key in logging_section:
        if key not in ("format", "level"):
            guess = closest(key, ("format", "level"))
            raise ConfigError(f"logging.{key}", ConfigError.UNSHOWN,
                              "is not a known setting of [logging]"
                              + (f"; did you mean `{guess}`?" if guess else ""))
    return data
