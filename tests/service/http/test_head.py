"""HEAD answers as GET without the body: uptime checkers and load balancers probe with it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize("path", ["/livez", "/status", "/ui", "/openapi.json"])
def test_head_has_get_s_status_and_headers_and_no_body(client: TestClient, path: str) -> None:
    got, head = client.get(path), client.head(path)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert head.headers["content-type"] == got.headers["content-type"]


def test_head_is_refused_where_get_is(make_client: Callable[..., TestClient]) -> None:
    client = make_client(read_tokens="read-token")
    head = client.head("/v1/explanations", params={"model": "digits"})
    assert head.status_code == 401 and head.content == b""
    assert client.head("/no/such/path").status_code == 404
