"""Credentials never reach output: URIs and messages with their secrets replaced by ``***``.

One implementation for every place that prints, logs or returns a Milvus URI or a message that
may quote one (the store's messages, ``rsir`` output and ``--json``, the gallery, the service).
"""

from __future__ import annotations

import re

__all__ = ["redact_text", "redact_uri"]

# greedy up to the last "@" of the authority: a password may hold a raw "@" ("u:p@ss@host")
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@")
# a query value up to "&", a space or the end, less one punctuation mark before a space or the
# end: "...?token=abc: cannot resolve" keeps its ": " (the message read "token=*** cannot ...")
_QUERY_SECRET = re.compile(r"(?i)((?:token|password|secret|key)=)[^&\s]*?(?=[:;,.)]?(?:[&\s]|$))")


def redact_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` part and token-like query values replaced by ``***``.

    >>> redact_uri("http://root:Milvus@db:19530?token=abc")
    'http://***@db:19530?token=***'
    >>> redact_uri("./rsir.db")
    './rsir.db'
    """
    return redact_text(str(uri))


def redact_text(text: str) -> str:
    """``text`` with credentials inside any URL it holds replaced by ``***``.

    >>> redact_text("cannot connect to Milvus at http://root:Milvus@db:19530: refused")
    'cannot connect to Milvus at http://***@db:19530: refused'
    >>> redact_text("cannot load image https://u:p@ss@host/x.jpg: HTTP 404")
    'cannot load image https://***@host/x.jpg: HTTP 404'
    >>> redact_text("cannot load image https://host/x.jpg?token=a:b&n=1: cannot resolve")
    'cannot load image https://host/x.jpg?token=***&n=1: cannot resolve'
    """
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1***@", text))
