"""What every process role reads the same way: Redis, logging and the config file.

Each role (``service.settings.SidecarSettings``, ``monitors.fleet.settings.MonitorSettings``,
``attribution_workers.settings.WorkerSettings``) subclasses :class:`RoleSettings` with its own
fields. Precedence, highest first: arguments, ``VAI_*`` environment variables, the TOML file
named by ``VAI_CONFIG_FILE``, the defaults. All roles read one config file, so a role takes
from it only the keys it declares; the environment and arguments are checked strictly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from common.cardinality import cohort_key_problem

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


class _OwnKeys(TomlConfigSettingsSource):
    """The config file, narrowed to the keys of one role (the file is shared by every role)."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        fields: dict[str, FieldInfo] = self.settings_cls.model_fields
        return {key: value for key, value in values.items() if key in fields}


class RoleSettings(BaseSettings):
    """The base of every role's settings."""

    # No use_attribute_docstrings: the fields' docstrings are for readers of this code (and the README's settings
    # tables); turning them into descriptions made pydantic re-read this source at import, ~30-40 ms of every
    # role's start-up, for descriptions nothing reads.
    model_config = SettingsConfigDict(env_prefix="VAI_", env_nested_delimiter="__", extra="forbid")

    log_level: str = "info"
    """Python logging level name."""
    config_file: Path | None = None
    """TOML file shared by every role (per-model policies, attribution, drift); read once at start-up."""
    redis_url: str | None = None
    """Redis every role shares. The sidecar starts a private embedded ``redis-server`` when unset."""
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
        if not Path(path).is_file():
            raise FileNotFoundError(f"VAI_CONFIG_FILE: no such file: {path}")
        return init_settings, env_settings, _OwnKeys(settings_cls, toml_file=path)

    def configure_logging(self) -> None:
        import logging

        logging.basicConfig(level=self.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
