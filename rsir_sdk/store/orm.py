"""Column writes and bulk-insert calls through pymilvus' ORM, for :class:`.connect.Connection`.

pymilvus 3.0.2's ``MilvusClient.insert`` takes row dicts only; column lists (a tenth of the
client's work) and the ``utility`` bulk-insert functions go through the ORM, deprecated for
pymilvus 3.1, so they are used here and nowhere else. :class:`OrmWrites` is a part of
``Connection`` kept in its own module: it opens one ORM connection per ``Connection`` (under an
alias never used before in the process) and closes it with it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from typing import Any, Callable, Iterator

from ..errors import StoreError
from . import rpc

#: numbers of this process' ORM connection aliases (:meth:`OrmWrites.orm_alias`)
_ORM_ALIASES = itertools.count(1)

#: MilvusClient keyword arguments the ORM connection takes as well (TLS, database)
_ORM_KWARGS = ("db_name", "secure", "server_pem_path", "server_name", "ca_pem_path",
               "client_pem_path", "client_key_path", "user", "password")


@contextlib.contextmanager
def no_deprecation_warnings() -> Iterator[None]:
    """pymilvus 3.0.2 warns (a FutureWarning) on every ORM call that the ORM goes away in 3.1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


class OrmWrites:
    """The ORM half of a connection (mixed into :class:`.connect.Connection`, which sets the
    attributes declared here)."""

    uri: str
    timeout: float | None
    _broken: str | None
    _token: str | None
    _client_kwargs: dict[str, Any]
    _orm_alias: str | None
    _orm_collections: dict[str, Any]
    client: Any
    closed_message: Callable[[], str]
    _error: Callable[[BaseException, str, str | None], Exception]
    _wait_for_lite_clock: Callable[[], None]
    _after_lite_write: Callable[[str, int], None]

    def orm_collection(self, name: str) -> Any:
        """A ``pymilvus.Collection`` for ``name`` on this connection's ORM alias.

        pymilvus 3.0.2's ``MilvusClient.insert`` takes row dicts only; column lists (a tenth of
        the client's work) go through the ORM ``Collection``, deprecated for pymilvus 3.1, so it
        is used here and nowhere else.
        """
        col = self._orm_collections.get(name)
        if col is not None:
            return col
        from pymilvus import Collection

        alias = self.orm_alias()
        with no_deprecation_warnings():
            try:
                col = Collection(name, using=alias)
            except Exception as exc:
                raise self._error(exc, f"opening collection {name!r} for writing", None) from None
        self._orm_collections[name] = col
        return col

    def orm_alias(self) -> str:
        """The alias of this connection's ORM connection (opened on first use)."""
        if self._orm_alias is not None:
            return self._orm_alias
        if self.client is None:  # closed: pymilvus would start a new Lite server, never stopped
            raise StoreError(self.closed_message())
        from pymilvus import connections

        # a number never used before in this process: ``id(self)`` came back for a new
        # connection once an old one was freed, and pymilvus refused the alias it still knew
        # ("already creating connections, but the configure is not the same")
        alias = f"rsir-{os.getpid()}-{next(_ORM_ALIASES)}"
        kw: dict[str, Any] = {k: v for k, v in self._client_kwargs.items() if k in _ORM_KWARGS}
        if self._token:
            kw["token"] = self._token
        with no_deprecation_warnings():
            try:
                connections.connect(alias=alias, uri=self.uri, **kw)
            except Exception as exc:
                raise self._error(exc, "opening a write connection", None) from None
        self._orm_alias = alias
        return alias

    def orm_call(self, fn: Any, *args: Any, what: str, **kwargs: Any) -> Any:
        """``fn(*args, using=<ORM alias>, **kwargs)`` (a ``pymilvus.utility`` function) with
        one-line errors."""
        if self._broken:
            raise StoreError(self._broken)
        alias = self.orm_alias()
        if self.timeout is not None:
            kwargs.setdefault("timeout", self.timeout)
        self._wait_for_lite_clock()
        try:
            with no_deprecation_warnings(), rpc.interrupts_held():
                return fn(*args, using=alias, **kwargs)
        except Exception as exc:
            raise self._error(exc, what, None) from None

    def write_columns(self, verb: str, name: str, columns: list[list[Any]], *, what: str) -> Any:
        """``Collection.<verb>(columns)`` (insert or upsert): one request, one-line errors.

        An ``insert`` is never retried by pymilvus (a retried insert that had reached the
        server would store its rows twice); the caller decides what to do on failure.
        """
        if self._broken:
            raise StoreError(self._broken)
        col = self.orm_collection(name)
        kwargs: dict[str, Any] = {"retry_times": 0 if verb == "insert" else rpc.RETRIES}
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        self._wait_for_lite_clock()
        try:
            with no_deprecation_warnings(), rpc.interrupts_held():
                return getattr(col, verb)(columns, **kwargs)
        except Exception as exc:
            raise self._error(exc, what, None) from None
        finally:  # a failed request may have been written in part
            self._after_lite_write(verb, len(columns[0]) if columns else 0)

    def forget_collection(self, name: str) -> None:
        """Drop the cached ORM handle of ``name`` (after a drop or an index change)."""
        self._orm_collections.pop(name, None)

    def _close_orm(self) -> None:
        alias, self._orm_alias = self._orm_alias, None
        self._orm_collections.clear()
        if alias is None:
            return
        try:
            from pymilvus import connections

            with no_deprecation_warnings():
                connections.disconnect(alias)
                connections.remove_connection(alias)
        except Exception:  # a connection already gone is not an error here
            pass
