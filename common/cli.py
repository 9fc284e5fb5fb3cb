"""``vai-sidecar``: one command, one process role per sub-command.

Each role owns its entry point (``main(argv) -> int``) in its own package; this table only
names them, so the roles never import one another and a process loads only what its role needs.

A setting a role cannot start with (a value of the wrong type or out of range, an unreadable
config file, a worker's ``/metrics`` port in use) ends the role here with status 2 and one line on stderr
that names the setting as the user gave it (``--port``, ``VAI_PORT``, or the key of the config
file), instead of a traceback that named a field and left the reader to guess where it came from.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

ROLES = {
    "serve": ("service.main", "the sidecar beside a model server: ingest, sampling, labels, read APIs, viewer"),
    "monitor": ("monitors.fleet.main", "drift and labelled windows for the whole fleet (leases share the models)"),
    "worker": ("attribution_workers.main", "explain sampled events with Captum (GPU or CPU)"),
    "demo": ("demo.main", "the whole loop on the digits CNN: embedded Redis and every role, replayed traffic"),
}
SETTINGS = ("service.settings", "monitors.fleet.settings", "attribution_workers.settings")
"""Every role's settings module, imported before a role starts (~6 ms more for the sidecar, ~50 for the worker): one
environment and one config file serve every role, so a ``VAI_*`` variable is misspelt only when no role declares
it (:func:`common.settings.warn_undeclared`), not when another role reads it."""
SETTINGS_ERROR = 2
"""Exit status of a role refused for its settings (as argparse's for a wrong option)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ROLES:
        asked = args[:1] in (["-h"], ["--help"])
        print(_usage(), file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    return _run(args[0], args[1:])


def _usage() -> str:
    roles = "\n".join(f"  {name:8} {text}" for name, (_, text) in ROLES.items())
    return (
        f"usage: vai-sidecar {{{','.join(ROLES)}}} [options]\n\n{roles}\n\n"
        "Settings: VAI_* environment variables (nested ones with __, e.g. VAI_SAMPLING__EVERY_N=10) or the TOML\n"
        "file named by VAI_CONFIG_FILE; the environment wins (README: Configuration).\n"
        "Options of a role: vai-sidecar ROLE --help"
    )


def _run(role: str, args: list[str]) -> int:
    from pydantic import ValidationError  # not for --help: pydantic and its settings take ~60 ms

    from common.settings import SettingsError, role_classes

    for name in SETTINGS:
        importlib.import_module(name)
    module = importlib.import_module(ROLES[role][0])
    try:
        code: int = module.main(args)
    except SettingsError as error:
        return _refuse(role, str(error))
    except ValidationError as error:
        if error.title not in {cls.__name__ for cls in role_classes()}:
            raise  # not the settings: a bug, whose traceback is worth having
        return _refuse(role, describe(error, options=args))
    return code


def _refuse(role: str, reason: str) -> int:
    print(f"vai-sidecar {role}: {' '.join(reason.split())}", file=sys.stderr)
    return SETTINGS_ERROR


def describe(error: ValidationError, *, options: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> str:
    """Each wrong value of a role's settings ``error``, named as the user gave it, on one line.

    pydantic names a field (``port``, ``sampling.every_n``); the user wrote ``--port``, ``VAI_PORT``,
    ``VAI_SAMPLING__EVERY_N`` or ``every_n`` under ``[sampling]`` in the config file. Precedence decides: an option
    given (``options``: the role's arguments) wins, then a variable of ``environ`` (``os.environ``) naming the key
    itself, then the file. Where it cannot tell (a variable set the section and the file has the key too, or
    neither holds it), both forms are named."""
    from common.settings import ConfigFileError, read_config_file, role_classes

    environ = os.environ if environ is None else environ
    path = environ.get("VAI_CONFIG_FILE")
    try:
        file = (path, read_config_file(path)) if path else None
    except ConfigFileError:
        file = None
    given = [arg.split("=", 1)[0][2:] for arg in options if arg.startswith("--")]
    names = {name.upper(): name for name in environ}  # pydantic-settings reads them in any case
    roots = [cls for cls in role_classes() if cls.__name__ == error.title]
    lines = []
    for entry in error.errors():
        where = _where(entry["loc"], given=given, names=names, file=file)
        lines.append(f"{where}: {_what(entry, roots)}" if where else _what(entry, roots))
    return "; ".join(lines)


def _where(
    loc: tuple[int | str, ...], *, given: list[str], names: dict[str, str], file: tuple[str, dict[str, Any]] | None
) -> str:
    from common.settings import ENV_PREFIX, NESTED_DELIMITER

    if not loc:  # a check across settings: its message names them
        return ""
    dashed = str(loc[0]).replace("_", "-")
    # --metrics-port sets monitor_metrics_port; --port does not (the demo's --port is the sidecar's)
    option = next((name for name in given if dashed == name or ("-" in name and dashed.endswith(f"-{name}"))), None)
    if option is not None and len(loc) == 1:
        return f"--{option}"
    exact, variables = _variables(loc, names)
    if exact:  # it wins over the file (and over a JSON variable of the section)
        return variables[0]
    value = _ABSENT if file is None else _at(file[1], loc)
    key = _toml_key(loc, table=isinstance(value, dict))
    if file is not None and value is not _ABSENT:
        return f"{', '.join(variables)} or {file[0]}: {key}" if variables else f"{file[0]}: {key}"
    if variables:
        return ", ".join(variables)
    return f"{ENV_PREFIX}{NESTED_DELIMITER.join(str(part) for part in loc).upper()} or {key} in the config file"


def _variables(loc: tuple[int | str, ...], names: dict[str, str]) -> tuple[bool, list[str]]:
    """The variables that set ``loc``, a part of it (``VAI_DRIFT__ERT`` for a check of ``drift``) or a section
    holding it (``VAI_SAMPLING='{"every_n": 0}'``), as the user spelt them; first, whether one names ``loc`` itself
    (then only that one)."""
    from common.settings import ENV_PREFIX, NESTED_DELIMITER

    parts = [str(part).upper() for part in loc]
    found = []
    for upper, name in sorted(names.items()):
        path = upper.removeprefix(ENV_PREFIX).split(NESTED_DELIMITER)
        if not upper.startswith(ENV_PREFIX):
            continue
        if path == parts:
            return True, [name]
        if path == parts[: len(path)] or parts == path[: len(parts)]:
            rest = ".".join(str(part) for part in loc[len(path) :])
            found.append(f"{name} ({rest})" if rest else name)
    return False, found


def _what(entry: ErrorDetails, roots: Sequence[Any]) -> str:
    from common.settings import declared_depth, error_text, suggestion

    if entry["type"] == "extra_forbidden":
        _, siblings = declared_depth(roots, [str(part) for part in entry["loc"]])
        close = suggestion(str(entry["loc"][-1]), siblings)
        return f"no such setting (did you mean {close}?)" if close else "no such setting"
    return error_text(entry)


def _toml_key(loc: tuple[int | str, ...], *, table: bool = False) -> str:
    """``loc`` as the config file spells it: ``max_batch``, ``[sampling] every_n``, ``[drift]`` (a whole table)."""
    section, key = (list(loc), "") if table else (list(loc[:-1]), str(loc[-1]))
    if key and isinstance(loc[-1], int) and section:
        key = f"{section.pop()}[{key}]"
    head = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in section).lstrip(".")
    if not head:
        return key
    return f"[{head}] {key}" if key else f"[{head}]"


def _at(data: Any, loc: tuple[int | str, ...]) -> Any:
    """The config file's value at ``loc``, or :data:`_ABSENT`."""
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part, _ABSENT)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return _ABSENT
    return data


_ABSENT = object()


if __name__ == "__main__":
    sys.exit(main())
