"""The README's settings tables (Configuration) list every field of each role's settings class, under its
environment variable, with its default, and nothing else."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from attribution_workers.settings import WorkerSettings
from common.settings import ENV_PREFIX, RoleSettings
from monitors.fleet.settings import MonitorSettings
from service.settings import SidecarSettings

README = Path(__file__).resolve().parents[1] / "README.md"
ROLES: dict[str, type[RoleSettings]] = {
    "common.settings.RoleSettings": RoleSettings,
    "service.settings.SidecarSettings": SidecarSettings,
    "monitors.fleet.settings.MonitorSettings": MonitorSettings,
    "attribution_workers.settings.WorkerSettings": WorkerSettings,
}
NOT_A_VALUE = ("(unset)", "(empty)", "see the sections above")


def _tables() -> dict[str, dict[str, str]]:
    """Per settings class named in a table's heading, each row's variable and its default as written."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Configuration") : text.index("\n## Metrics")]
    tables: dict[str, dict[str, str]] = {}
    for name, body in re.findall(r"\(`([\w.]+Settings)`\):\n\n((?:\|.*\n)+)", section):
        rows = re.findall(r"^\| `(VAI_\w+)` \| (.+?) \|", body, flags=re.MULTILINE)
        tables[name] = dict(rows)
    return tables


def _declared(settings: type[RoleSettings]) -> dict[str, FieldInfo]:
    """The fields a role's table lists: its own, and those of the base whose default it changes."""
    base = RoleSettings.model_fields
    return {
        name: field
        for name, field in settings.model_fields.items()
        if settings is RoleSettings or name not in base or field.default != base[name].default
    }


def _written(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def test_every_role_has_a_table() -> None:
    assert set(_tables()) == set(ROLES)


@pytest.mark.parametrize("name", list(ROLES))
def test_a_role_s_table_lists_its_fields_and_nothing_else(name: str) -> None:
    listed = _tables()[name]
    fields = {f"{ENV_PREFIX}{field.upper()}": info for field, info in _declared(ROLES[name]).items()}
    assert set(listed) - set(fields) == set(), "rows that are no setting of the role"
    assert set(fields) - set(listed) == set(), "settings the table leaves out"


@pytest.mark.parametrize("name", list(ROLES))
def test_a_role_s_table_gives_each_default_as_the_class_has_it(name: str) -> None:
    listed = _tables()[name]
    wrong = {}
    for field, info in _declared(ROLES[name]).items():
        shown = listed[f"{ENV_PREFIX}{field.upper()}"]
        if shown in NOT_A_VALUE or info.default is PydanticUndefined or info.default_factory is not None:
            continue
        if info.default is None:
            continue
        value = shown.strip("`")
        if value != _written(info.default):
            wrong[field] = (shown, _written(info.default))
    assert wrong == {}
