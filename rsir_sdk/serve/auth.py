"""Bearer-token access for the service, loopback checks, and redaction of secrets in logs.

Two scopes: ``read`` (search, get, count, info, images, metrics) and ``write`` (add, delete).
Which token opens what:

==========================  ===============================  ===============================
tokens configured           reads need                       writes need
==========================  ===============================  ===============================
none                        nothing (loopback, or --insecure) nothing
read token only             the read token                   the read token (one token)
write token only            nothing (public search)          the write token
both                        the read or the write token      the write token
==========================  ===============================  ===============================

Tokens are compared with :func:`hmac.compare_digest` (constant time) and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
from typing import Iterable

from ..redact import redact_text
from .errors import AuthenticationError, ForbiddenError

READ = "read"
WRITE = "write"


class TokenAuth:
    """Decide whether an ``Authorization`` header grants a scope; raise 401/403 errors if not."""

    def __init__(self, read_token: str | None = None, write_token: str | None = None):
        self._read = (read_token or "").encode() or None
        self._write = (write_token or "").encode() or None

    @property
    def enabled(self) -> bool:
        """True when at least one token is configured."""
        return bool(self._read or self._write)

    def describe(self) -> str:
        """What a log line may say about auth (never the tokens)."""
        if self._read and self._write:
            return "read and write tokens"
        if self._read:
            return "one token for reads and writes"
        if self._write:
            return "write token (reads are open)"
        return "none"

    def check(self, authorization: str | None, scope: str) -> None:
        """Raise :class:`AuthenticationError` (401) or :class:`ForbiddenError` (403) unless allowed."""
        needed = self._tokens_for(scope)
        if not needed:
            return
        presented = _bearer(authorization)
        if presented is None:
            raise AuthenticationError(
                f"this service needs a bearer token for {scope}s: send it in an Authorization "
                f"header (scheme Bearer)", 401, "AuthenticationError")
        if any(hmac.compare_digest(presented, t) for t in needed):
            return
        if scope == WRITE and self._read and hmac.compare_digest(presented, self._read):
            raise ForbiddenError("this token may only read: writes need the write token",
                                 403, "ForbiddenError")
        raise AuthenticationError("the bearer token is not valid for this service",
                                  401, "AuthenticationError")

    def _tokens_for(self, scope: str) -> list[bytes]:
        if scope == READ:
            if self._read:
                return [t for t in (self._read, self._write) if t]
            return []
        if self._write:
            return [self._write]
        return [self._read] if self._read else []


def _bearer(header: str | None) -> bytes | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip().encode()


def is_loopback(host: str) -> bool:
    """True when ``host`` names only loopback addresses (``127.0.0.1``, ``::1``, ``localhost``)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {str(info[4][0]) for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


class RedactingFilter(logging.Filter):
    """A logging filter that replaces each secret in a record's text with ``***``.

    Installed on the service's log handlers so that a token can never reach a log line, even
    through a dependency's message.
    """

    def __init__(self, secrets: Iterable[str | None]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler
            return True
        redacted = redact_text(text)
        for s in self.secrets:
            redacted = redacted.replace(s, "***")
        redacted = re.sub(r"(?i)(authorization:\s*bearer\s+)\S+", r"\1***", redacted)
        if redacted != text:
            record.msg, record.args = redacted, ()
        return True
