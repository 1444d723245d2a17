"""``rsir serve``: the index as an HTTP service, and :class:`RemoteRetriever`, its client.

>>> from rsir_sdk.serve import RemoteRetriever
>>> r = RemoteRetriever("http://127.0.0.1:8000", token="...")          # doctest: +SKIP
>>> r.search("query.jpg", k=5)[0].label                                 # doctest: +SKIP
'Forest'

The client needs httpx only; the server (``create_app``, ``rsir serve``) needs the ``serve``
extra (FastAPI, uvicorn, python-multipart). Names are imported lazily so that an edge box with
the client alone never imports the server side.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HttpOptions", "RemoteRetriever", "ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "RemoteRetriever":
        from .client import RemoteRetriever

        return RemoteRetriever
    if name == "HttpOptions":
        from .client import HttpOptions

        return HttpOptions
    if name == "ServeConfig":
        from .config import ServeConfig

        return ServeConfig
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
