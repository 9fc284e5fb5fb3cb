"""What every process role reads the same way: Redis, logging and the config file.

Each role (``service.settings.SidecarSettings``, ``monitors.fleet.settings.MonitorSettings``,
``attribution_workers.settings.WorkerSettings``) subclasses :class:`RoleSettings` with its own
fields. Precedence, highest first: arguments, ``VAI_*`` environment variables, the TOML file
named by ``VAI_CONFIG_FILE``, the defaults. All roles read one config file and one environment, so
a role takes from them only the keys it declares; a ``VAI_*`` variable or a top-level key of the file
that no role declares is logged as a warning at start-up (:meth:`RoleSettings.configure_logging`).
Values are checked strictly: a wrong one stops the role before it starts anything, and ``vai-sidecar``
names it on one line (:mod:`common.cli`).
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from common.cardinality import cohort_key_problem

log = logging.getLogger(__name__)

ENV_PREFIX = "VAI_"
NESTED_DELIMITER = "__"
"""How an environment variable names a nested setting: ``VAI_SAMPLING__EVERY_N`` is ``sampling.every_n``."""
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
"""What redis-py's ``from_url`` takes (case-sensitive); anything else failed only when a client first connected."""


class SettingsError(Exception):
    """A setting that cannot work, said in one line that names it: ``vai-sidecar`` prints it and exits 2."""


class ConfigFileError(SettingsError):
    """``VAI_CONFIG_FILE`` names no file, or one that is not TOML."""


CommaList = Annotated[tuple[str, ...], NoDecode]
"""A tuple of strings that the environment gives comma-separated (``VAI_COHORT_KEYS=region,device``)."""


def _cohort_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    for key in keys:
        problem = cohort_key_problem(key)
        if problem is not None:
            raise ValueError(problem)
    return keys


CohortKeys = Annotated[tuple[str, ...], NoDecode, AfterValidator(_cohort_keys)]
"""Cohort keys, comma-separated in the environment; refused at start-up if one cannot name a slice
(:func:`common.cardinality.cohort_key_problem`)."""


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


LogLevel = Annotated[Literal["critical", "error", "warning", "info", "debug"], BeforeValidator(_lower)]
"""A level both Python logging and uvicorn know, in any case: ``warn`` and ``fatal`` pass Python's logging but
stopped uvicorn after the embedded Redis and monitor had started, and ``trace`` the other way round."""


def _unset_if_empty(value: object) -> object:
    """An empty variable is no value (as an empty ``VAI_MONITOR_ID`` or ``VAI_WORKER_CONSUMER`` is), not an empty path
    or URL: ``VAI_CONFIG_FILE=`` read no file but was the working directory."""
    return None if value == "" else value


def _redis_url(value: object) -> object:
    value = _unset_if_empty(value)
    if isinstance(value, str) and not value.startswith(REDIS_SCHEMES):  # the value itself may hold a password
        raise ValueError(f"must start with {', '.join(REDIS_SCHEMES)} (e.g. redis://host:6379/0)")
    return value


class _OwnKeys(TomlConfigSettingsSource):
    """The config file, narrowed to the keys of one role (the file is shared by every role)."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        fields: dict[str, FieldInfo] = self.settings_cls.model_fields
        return {key: value for key, value in values.items() if key in fields}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The TOML file ``path``, or :class:`ConfigFileError` saying why it cannot be read."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigFileError(f"VAI_CONFIG_FILE: no such file: {path}") from None
    except OSError as error:
        raise ConfigFileError(f"VAI_CONFIG_FILE: cannot read {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"VAI_CONFIG_FILE: {path} is not valid TOML: {error}") from None


class RoleSettings(BaseSettings):
    """The base of every role's settings."""

    # No use_attribute_docstrings: the fields' docstrings are for readers of this code (and the README's settings
    # tables); turning them into descriptions made pydantic re-read this source at import, ~30-40 ms of every
    # role's start-up, for descriptions nothing reads.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED_DELIMITER, extra="forbid")

    log_level: LogLevel = "info"
    """Logging level of the role and of its HTTP server: ``critical``, ``error``, ``warning``, ``info`` or ``debug``
    (any case)."""
    config_file: Annotated[Path | None, BeforeValidator(_unset_if_empty)] = None
    """TOML file shared by every role (per-model policies, attribution, drift); read once at start-up."""
    redis_url: Annotated[str | None, BeforeValidator(_redis_url)] = None
    """Redis every role shares (``redis://``, ``rediss://`` or ``unix://``). The sidecar starts a private embedded
    ``redis-server`` when unset (or empty)."""
    redis_timeout_s: float = Field(default=0.5, gt=0)
    """Socket timeout of every Redis call (no hidden retries); the sidecar's background writers have their own,
    ``redis_writer_timeout_s``."""

    @field_validator("*", mode="before")
    @classmethod
    def _split_commas(cls, value: object, info: Any) -> object:
        field = cls.model_fields.get(info.field_name)
        if isinstance(value, str) and field is not None and NoDecode in field.metadata:
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        kwargs = getattr(init_settings, "init_kwargs", {})
        path = kwargs.get("config_file") or os.environ.get("VAI_CONFIG_FILE")
        if not path:
            return init_settings, env_settings
        read_config_file(path)  # its errors as ours, before pydantic-settings reads it (they would be a traceback)
        return init_settings, env_settings, _OwnKeys(settings_cls, toml_file=path)

    def configure_logging(self) -> None:
        """Set up logging, then warn about what no role reads (each role calls this once, at start-up)."""
        logging.basicConfig(level=self.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        warn_undeclared(os.environ, self.config_file)


def role_classes() -> list[type[RoleSettings]]:
    """Every role's settings class imported so far (``vai-sidecar`` imports all of them before it starts a role)."""
    found: list[type[RoleSettings]] = []
    pending = [RoleSettings]
    while pending:
        for subclass in pending.pop().__subclasses__():
            found.append(subclass)
            pending.append(subclass)
    return found


def _options(annotation: Any) -> Iterator[Any]:
    """The types a value of ``annotation`` may have (``Optional`` and unions taken apart)."""
    if get_origin(annotation) is Annotated:
        yield from _options(get_args(annotation)[0])
    elif get_origin(annotation) in (Union, types.UnionType):
        for option in get_args(annotation):
            yield from _options(option)
    else:
        yield annotation


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The models among the types a value of ``annotation`` may have."""
    return (option for option in _options(annotation) if isinstance(option, type) and issubclass(option, BaseModel))


def _inner(annotation: Any, key: str) -> list[Any]:
    """What ``key`` of a value of ``annotation`` holds: one type per option that has it (none: no such key)."""
    found: list[Any] = [
        model.model_fields[key].annotation for model in _models(annotation) if key in model.model_fields
    ]
    for option in _options(annotation):
        if option is dict or get_origin(option) is dict:  # free keys, e.g. a [models.NAME] section
            found.append(get_args(option)[1] if get_args(option) else Any)
        elif option is Any:
            found.append(Any)
    return found


def declared_depth(roots: Iterable[Any], path: Sequence[str]) -> tuple[int, list[str]]:
    """How many leading parts of the key ``path`` one of ``roots`` (settings classes) declares, and the keys declared
    beside the first part it does not (for a suggestion); all of ``path``: a setting some root reads."""
    level = list(roots)
    for depth, part in enumerate(path):
        below = [inner for annotation in level for inner in _inner(annotation, part)]
        if not below:
            siblings = {name for annotation in level for model in _models(annotation) for name in model.model_fields}
            return depth, sorted(siblings)
        level = below
    return len(path), []


def error_text(entry: ErrorDetails) -> str:
    """What is wrong with one value, without pydantic's type codes and links; with the value itself unless the
    check is ours (``value_error``): ours say what is wrong in their own words, and keep a Redis URL's password out."""
    message = entry["msg"].removeprefix("Value error, ")
    value = entry.get("input")
    if entry["type"] != "value_error" and isinstance(value, str | int | float | bool):
        message += f" (got {value!r})"
    return message


def errors_in_brief(error: ValidationError) -> str:
    """``error`` on one line (``every_n: Input should be greater than or equal to 1 (got 0)``), for a message of a
    settings check that quotes a nested model's errors (pydantic's own text takes three lines per value)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in entry['loc'])}: {error_text(entry)}" if entry["loc"] else error_text(entry)
        for entry in error.errors()
    )


def suggestion(word: str, choices: Iterable[str]) -> str | None:
    """The declared name ``word`` is most likely a misspelling of."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return close[0] if close else None


def undeclared_variables(environ: Mapping[str, str], roots: Sequence[Any]) -> list[str]:
    """The ``VAI_*`` variables of ``environ`` that none of ``roots`` reads (names as in ``environ``, with the
    declared name each is most likely a misspelling of)."""
    found = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split(NESTED_DELIMITER)
        depth, siblings = declared_depth(roots, path)
        if depth < len(path):
            close = suggestion(path[depth], siblings)
            fix = (ENV_PREFIX + NESTED_DELIMITER.join([*path[:depth], close])).upper() if close else None
            found.append(f"{name} ({fix}?)" if fix else name)
    return found


def warn_undeclared(environ: Mapping[str, str], config_file: str | Path | None) -> None:
    """Log once each ``VAI_*`` variable and top-level key of ``config_file`` that no role declares: pydantic-settings
    reads only the names a class declares, so a misspelt one was ignored without a word."""
    roots = role_classes()
    variables = undeclared_variables(environ, roots)
    if variables:
        log.warning("%s: no role has such a setting; ignored (see the README's Configuration)", ", ".join(variables))
    if not config_file:
        return
    try:
        keys = read_config_file(config_file)
    except ConfigFileError:  # the role has read it: it changed since
        return
    declared = {name for root in roots for name in root.model_fields}
    unknown = [
        f"{key} ({close}?)" if (close := suggestion(key, declared)) else key for key in keys if key not in declared
    ]
    if unknown:
        log.warning("%s: %s: no role has such a setting; ignored", config_file, ", ".join(unknown))
