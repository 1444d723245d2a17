"""Download one image URL under a *total* deadline and an address policy.

Why a module of its own: httpx's timeouts apply to each network operation, so a server that
sends its headers one byte at a time is never cut off by them. Here every operation (DNS
lookup, connect, TLS handshake, each read and write of headers and body) gets only the time
left of one deadline, so :func:`fetch_url` answers within ``timeout`` seconds plus one
scheduling slice, whatever the server does.

The same connection hook enforces the address policy: the host is resolved here and every
address it resolves to is checked before connecting, redirects included. Private, loopback,
link-local and other non-global addresses are refused unless ``allow_private_urls=True``, so a
service that downloads URLs for its clients cannot be made to probe its own network (an SSRF
oracle). The connection goes to the checked address itself (no second lookup to rebind), and
proxies from the environment are not used: a proxy would resolve the host instead.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from functools import lru_cache
from typing import Any, Iterable

from .errors import ImageLoadError
from .redact import redact_uri

__all__ = ["fetch_url", "is_private_address"]

#: how many redirects one download follows
MAX_REDIRECTS = 5


class _Refused(Exception):
    """Raised inside the connection hook: the host is not fetched (policy, DNS); one line."""


def is_private_address(address: str) -> bool:
    """True for an IP address that is not globally reachable: private, loopback, link-local,
    shared (CGNAT), reserved, unspecified or multicast. IPv4-mapped IPv6 is judged as IPv4.

    >>> is_private_address("127.0.0.1"), is_private_address("::ffff:10.0.0.1")
    (True, True)
    >>> is_private_address("8.8.8.8")
    False
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def fetch_url(url: str, *, timeout: float, max_bytes: int, allow_private_urls: bool = False) -> bytes:
    """Download ``url`` (http/https) with everything done within ``timeout`` seconds in all.

    Refuses non-2xx answers, bodies over ``max_bytes`` and, unless ``allow_private_urls``,
    hosts that resolve to private, loopback or link-local addresses. Every failure raises
    :class:`~rsir_sdk.errors.ImageLoadError` naming the URL (credentials in it redacted).
    """
    import httpx  # imported here: only URL sources need it

    shown = redact_uri(url)
    if not timeout > 0:
        raise ValueError(f"url_timeout must be a positive number of seconds, got {timeout!r}")
    clock = _Clock(float(timeout))
    try:
        with httpx.Client(transport=_transport(clock, allow_private_urls), trust_env=False,
                          follow_redirects=True, max_redirects=MAX_REDIRECTS,
                          timeout=float(timeout)) as client:
            with client.stream("GET", url) as resp:
                return _read_body(resp, shown, clock, max_bytes)
    except _Refused as exc:
        raise ImageLoadError(shown, str(exc)) from None
    except httpx.TimeoutException:
        raise ImageLoadError(shown, f"no complete answer within {timeout:g} s "
                                    f"(the URL time limit)") from None
    except httpx.TooManyRedirects:
        raise ImageLoadError(shown, f"more than {MAX_REDIRECTS} redirects") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = redact_uri(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        raise ImageLoadError(shown, f"download failed: {type(exc).__name__}: {reason}") from None


def _read_body(resp: Any, shown: str, clock: "_Clock", max_bytes: int) -> bytes:
    if resp.status_code >= 400:
        raise ImageLoadError(shown, f"HTTP {resp.status_code} {resp.reason_phrase}")
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ImageLoadError(shown, f"response is {int(declared)} bytes, over the "
                                    f"{max_bytes}-byte limit")
    chunks, total = [], 0
    for chunk in resp.iter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise ImageLoadError(shown, f"response exceeds the {max_bytes}-byte limit")
        chunks.append(chunk)
        if clock.expired():
            raise ImageLoadError(shown, f"no complete answer within {clock.total:g} s (the URL "
                                        f"time limit; {total} bytes received)")
    data = b"".join(chunks)
    if not data:
        raise ImageLoadError(shown, "the response body is empty")
    return data


class _Clock:
    """One deadline; :meth:`left` clamps an operation's own timeout to the time that remains."""

    def __init__(self, total: float):
        self.total = total
        self.deadline = time.monotonic() + total

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def left(self, timeout: float | None = None) -> float:
        import httpcore

        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise httpcore.ReadTimeout(f"no complete answer within {self.total:g} s")
        return remaining if timeout is None else min(float(timeout), remaining)


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    import certifi  # httpx's own CA bundle

    return ssl.create_default_context(cafile=certifi.where())


def _transport(clock: _Clock, allow_private: bool) -> Any:
    """An httpx transport whose connections go through :class:`_GuardedBackend`."""
    import httpcore
    import httpx

    transport = httpx.HTTPTransport(verify=_ssl_context())
    if not hasattr(transport, "_pool"):  # pragma: no cover - httpx changed its internals
        raise ImageLoadError("<url>", "this httpx version is not supported for URL downloads")
    transport._pool.close()
    # duck-typed httpcore.NetworkBackend: httpcore is imported only when a URL is fetched
    backend: Any = _GuardedBackend(clock, allow_private)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=_ssl_context(), network_backend=backend, max_connections=4,
        max_keepalive_connections=0)
    return transport


class _GuardedStream:
    """An httpcore network stream whose every operation gets only the deadline's remaining time."""

    def __init__(self, inner: Any, clock: _Clock):
        self._inner, self._clock = inner, clock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._clock.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._clock.left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> "_GuardedStream":
        inner = self._inner.start_tls(ssl_context, server_hostname, self._clock.left(timeout))
        return _GuardedStream(inner, self._clock)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend:
    """httpcore's sync backend with the address policy and the deadline on every connection."""

    def __init__(self, clock: _Clock, allow_private: bool):
        import httpcore

        self._inner = httpcore.SyncBackend()
        self._clock, self._allow_private = clock, allow_private

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> _GuardedStream:
        addresses = _resolve(host, port, self._clock)
        if not self._allow_private:
            for ip in addresses:
                if is_private_address(ip):
                    shown = host if host == ip else f"{host} ({ip})"
                    raise _Refused(
                        f"{shown} is a private, loopback or link-local address; such URLs are "
                        f"fetched only when allowed (allow_private_urls=True; a Retriever's "
                        f"r.encoder.allow_private_urls = True; rsir serve --allow-private-urls)")
        error: Exception | None = None
        for ip in addresses:
            try:
                stream = self._inner.connect_tcp(ip, port, self._clock.left(timeout),
                                                 local_address, socket_options)
            except Exception as exc:  # httpcore.ConnectError / ConnectTimeout: try the next one
                error = exc
                continue
            return _GuardedStream(stream, self._clock)
        assert error is not None
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> Any:
        raise _Refused("unix sockets are not fetched")  # pragma: no cover - httpx never asks

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, max(0.0, self._clock.deadline - time.monotonic())))


def _resolve(host: str, port: int, clock: _Clock) -> list[str]:
    """The IP addresses of ``host`` (a literal is itself), looked up within the deadline."""
    literal = host.strip("[]")
    try:
        ipaddress.ip_address(literal)
        return [literal]
    except ValueError:
        pass
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    worker = threading.Thread(target=lookup, name="rsir-url-dns", daemon=True)
    worker.start()
    worker.join(clock.left())   # a lookup past the deadline is left to end by itself
    if worker.is_alive():
        clock.left(0.0)          # raises the timeout when the deadline has passed
        import httpcore

        raise httpcore.ConnectTimeout(f"DNS lookup of {host} did not finish in time")
    if "error" in box:
        raise _Refused(f"cannot resolve the host {host} ({box['error']})")
    seen: list[str] = []
    for info in box["infos"]:
        ip = str(info[4][0])
        if ip not in seen:
            seen.append(ip)
    if not seen:
        raise _Refused(f"the host {host} has no address")
    return seen
