"""Bearer-token checks for the three scopes: ingest, read, admin."""

from __future__ import annotations

import enum
import hmac

from common.errors import Forbidden, Unauthorized
from service.settings import SidecarSettings

_BLANKS = " \t"
"""What may surround the token: HTTP's blanks only. ``str.strip()`` also takes U+0085 and U+00A0, which a header
carries as latin-1, so ``Bearer \\x85`` became an empty token."""


class Scope(enum.Enum):
    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"


class TokenAuth:
    """Admin tokens are accepted for every scope; every comparison is constant-time."""

    def __init__(self, settings: SidecarSettings) -> None:
        admin = _encode(settings.admin_tokens)
        self._tokens = {
            Scope.INGEST: _encode(settings.ingest_tokens) + admin,
            Scope.READ: _encode(settings.read_tokens) + admin,
            Scope.ADMIN: admin,
        }
        self._all = tuple({token for tokens in self._tokens.values() for token in tokens})
        self.enabled = settings.auth_enabled

    def check(self, authorization: str | None, scope: Scope) -> None:
        """Raise 401 without a known token, 403 with a token of another scope."""
        if not self.enabled:
            return
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip(_BLANKS)
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("authorization: send 'Authorization: Bearer <token>'", field="authorization")
        presented = token.encode()
        if _known(presented, self._tokens[scope]):
            return
        if _known(presented, self._all):
            raise Forbidden(f"authorization: this token may not {scope.value}", field="authorization")
        raise Unauthorized("authorization: unknown token", field="authorization")


def _encode(tokens: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(token.encode() for token in tokens)


def _known(presented: bytes, tokens: tuple[bytes, ...]) -> bool:
    found = False
    for token in tokens:
        found |= hmac.compare_digest(presented, token)
    return found
