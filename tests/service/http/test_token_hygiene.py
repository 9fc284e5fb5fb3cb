"""A token no client could send as it is (empty, blank, with spaces, control or non-ASCII characters) stops
``vai-sidecar serve`` naming the setting; and a presented token loses ASCII blanks only, never the Unicode spaces
Python's ``str.strip()`` takes too. An audit found ``admin_tokens = ["adm-real", ""]`` kept its empty token, which
``Authorization: Bearer \\x85`` (stripped to nothing) matched: a policy changed without any token."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from helpers import event, role_env, serve_app
from service.app import create_app
from service.settings import SidecarSettings

ADMIN, READ, INGEST = "admin-token-0123", "read-token-0123", "ingest-token-0123"
TOKENS = {"admin_tokens": (ADMIN,), "read_tokens": (READ,), "ingest_tokens": (INGEST,)}
RULE = (
    "a bearer token is sent in a header: one or more visible ASCII characters (! to ~), no spaces, control or "
    "non-ASCII characters"
)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port in use: a ``serve`` whose settings pass (as they did before this check) fails to bind it at once, with
    status 1, instead of serving until the test times out."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def _serve(tmp_path: Path, port: int, **env: str) -> str:
    """The one line of ``vai-sidecar serve``'s refusal (status 2, no traceback)."""
    answer = subprocess.run(
        [sys.executable, "-m", "common.cli", "serve"],
        env=role_env(VAI_REDIS_URL="redis://127.0.0.1:1", VAI_MONITORS_ENABLED="false", VAI_PORT=str(port), **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert answer.returncode == 2, answer.stderr
    assert "Traceback" not in answer.stderr, answer.stderr
    lines = answer.stderr.splitlines()
    assert len(lines) == 1, answer.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        pytest.param(
            'admin_tokens = ["adm-real-token", ""]\n', "admin_tokens: token 2 of 2 is empty", id="empty-in-a-list"
        ),
        pytest.param('read_tokens = ["   "]\n', "read_tokens: token 1 of 1 has a space at character 1", id="blank"),
        pytest.param(
            'ingest_tokens = ["ingest-token "]\n',
            "ingest_tokens: token 1 of 1 has a space at character 13",
            id="trailing-space",
        ),
        pytest.param(
            'admin_tokens = ["\\u0085"]\n', "admin_tokens: token 1 of 1 has U+0085 at character 1", id="next-line"
        ),
        pytest.param(
            'admin_tokens = ["adm\\u00a0token"]\n', "admin_tokens: token 1 of 1 has U+00A0 at character 4", id="nbsp"
        ),
        pytest.param(
            'admin_tokens = ["adm\\ttoken"]\n', "admin_tokens: token 1 of 1 has U+0009 at character 4", id="tab-inside"
        ),
        pytest.param(
            'read_tokens = "read-token,,other-token"\n',
            "read_tokens: token 2 of 3 is empty",
            id="empty-in-a-comma-list",
        ),
    ],
)
def test_a_token_from_the_config_file_that_no_header_can_carry_is_refused(
    tmp_path: Path, held_port: int, file: str, expected: str
) -> None:
    config = tmp_path / "vai.toml"
    config.write_text(file, encoding="utf-8")
    line = _serve(tmp_path, held_port, VAI_CONFIG_FILE=str(config))
    assert line == f"vai-sidecar serve: {config}: {expected}; {RULE}"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        pytest.param("VAI_ADMIN_TOKENS", "adm-real-token,", "token 2 of 2 is empty", id="trailing-comma"),
        pytest.param("VAI_INGEST_TOKENS", "a-token,,b-token", "token 2 of 3 is empty", id="empty-between-commas"),
        pytest.param("VAI_ADMIN_TOKENS", "\x85", "token 1 of 1 has U+0085 at character 1", id="next-line-alone"),
        pytest.param(
            "VAI_READ_TOKENS", "read-token\xa0", "token 1 of 1 has U+00A0 at character 11", id="nbsp-at-the-end"
        ),
        pytest.param("VAI_READ_TOKENS", "read token", "token 1 of 1 has a space at character 5", id="space-inside"),
        pytest.param("VAI_ADMIN_TOKENS", "adm\x01token", "token 1 of 1 has U+0001 at character 4", id="control"),
        pytest.param("VAI_ADMIN_TOKENS", "jeton-d'accès", "token 1 of 1 has U+00E8 at character 12", id="non-ascii"),
    ],
)
def test_a_token_from_the_environment_that_no_header_can_carry_is_refused(
    tmp_path: Path, held_port: int, variable: str, value: str, expected: str
) -> None:
    line = _serve(tmp_path, held_port, **{variable: value})
    assert line == f"vai-sidecar serve: {variable}: {expected}; {RULE}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a-token, b-token ,\tc-token", ("a-token", "b-token", "c-token"), id="blanks-around-commas"),
        pytest.param("", (), id="empty-variable"),
        pytest.param("  ", (), id="blank-variable"),
        pytest.param("i", ("i",), id="one-character"),
    ],
)
def test_comma_separated_tokens_still_read_as_documented(
    make_settings: Callable[..., SidecarSettings], monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[str]
) -> None:
    monkeypatch.setenv("VAI_ADMIN_TOKENS", value)  # after make_settings cleared the caller's VAI_*
    assert make_settings().admin_tokens == expected


def _request(base: str, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> int:
    """The status of one request sent byte for byte (an HTTP client library would re-encode a latin-1 header)."""
    host, port = base.removeprefix("http://").split(":")
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    request = b"%s %s HTTP/1.1\r\nhost: %s\r\n%scontent-type: application/json\r\ncontent-length: %d\r\n" % (
        method.encode(),
        path.encode(),
        f"{host}:{port}".encode(),
        head,
        len(body),
    )
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request + b"connection: close\r\n\r\n" + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


ROUTES = [
    pytest.param("PUT", "/v1/models/victim/sampling", b'{"every_n": 7}', id="admin-route"),
    pytest.param("GET", "/status", b"", id="read-route"),
    pytest.param("POST", "/v1/events", orjson.dumps(event(model="victim")), id="ingest-route"),
]
UNICODE_SPACES = [b"\x85", b"\xa0", b"\x85\xa0", b"\x85" + ADMIN.encode() + b"\xa0"]
"""Bearers that ``str.strip()`` made empty, or the admin token itself."""


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_a_bearer_of_unicode_spaces_matches_no_token(
    make_settings: Callable[..., SidecarSettings], method: str, path: str, body: bytes
) -> None:
    """As the audit sent it, to a running server. The empty admin token is put in past the settings' check: were one
    ever to slip in again, nothing sent could match it."""
    settings = make_settings(**TOKENS).model_copy(update={"admin_tokens": (ADMIN, "")})
    with serve_app(create_app(settings)) as base:
        answers = {
            token: _request(base, method, path, [(b"authorization", b"Bearer " + token)], body)
            for token in UNICODE_SPACES
        }
    assert answers == dict.fromkeys(UNICODE_SPACES, 401)


def test_ascii_blanks_around_a_token_still_pass(make_settings: Callable[..., SidecarSettings]) -> None:
    with serve_app(create_app(make_settings(**TOKENS))) as base:
        for number, authorization in enumerate((f"Bearer {ADMIN}", f"Bearer  {ADMIN}", f"Bearer \t{ADMIN} \t")):
            headers = [(b"authorization", authorization.encode())]
            sampling = _request(base, "PUT", "/v1/models/victim/sampling", headers, b'{"every_n": 7}')
            ingest = _request(base, "POST", "/v1/events", headers, orjson.dumps(event(f"r{number}")))
            assert (sampling, ingest) == (200, 202), repr(authorization)
