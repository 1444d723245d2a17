"""``ServeConfig``: every limit and switch of the service in one validated, frozen object.

The command line (:mod:`rsir_sdk.serve.cli`) fills it from arguments and the environment;
:func:`rsir_sdk.serve.app.create_app` reads it. Defaults are the safe ones: loopback only, limits
on, URL fetching on (it is part of the documented API; ``allow_urls=False`` turns it off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

try:
    from ..store import MAX_TOPK
except ImportError:  # pragma: no cover - the store's layout changed: Milvus' own cap
    MAX_TOPK = 16384

#: the service's default pixel limit (40 megapixels, e.g. 6325 x 6325): see ``docs/serve.md``
DEFAULT_SERVE_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ServeConfig:
    """What the service allows and how it protects itself.

    >>> ServeConfig(max_k=50).max_k
    50
    """

    #: bearer token that opens reads (see :mod:`rsir_sdk.serve.auth`); None = no read token
    read_token: str | None = field(default=None, repr=False)
    #: bearer token that opens writes (and reads); None = no write token
    write_token: str | None = field(default=None, repr=False)
    #: folder hit images are served from (``GET /v1/image``); None = the endpoint answers 404
    archive_root: Path | None = None
    #: largest request body in bytes (413 above)
    max_upload_bytes: int = 20 * 1024 * 1024
    #: largest k of one search (422 above)
    max_k: int = 1000
    #: most images in one request (batch search, add images; 422 above)
    max_batch: int = 32
    #: most codes or ids in one request (code search, add codes, get, delete; 422 above)
    max_codes: int = 10000
    #: most hits one request may answer (codes x k; 422 above): 100,000 hits are ~30 MB of
    #: JSON built in the service's memory, and the defaults above would otherwise allow 10M
    max_hits: int = 100_000
    #: seconds one request may spend in the retriever (504 after)
    request_timeout: float = 30.0
    #: retriever calls that run at once (threads)
    concurrency: int = 2
    #: requests that may wait for a thread; one more gets 503 + Retry-After
    max_queue: int = 64
    #: seconds the 503 answers ask clients to wait
    retry_after: float = 1.0
    #: whether search/add accept image URLs that the service downloads
    allow_urls: bool = True
    #: seconds a URL download may take in all (connect, headers and body)
    url_timeout: float = 20.0
    #: images with more pixels than this are refused (422) from their header, before decoding;
    #: lower than the library's 100 MP because one decode here holds memory of a shared process
    max_pixels: int = DEFAULT_SERVE_MAX_PIXELS
    #: seconds a connection may take to send a request's headers (closed after)
    header_timeout: float = 10.0
    #: seconds a request's body may take to arrive after its headers (408 after)
    body_timeout: float = 120.0
    #: connections that may wait for their request headers at once (the oldest closed beyond)
    max_incomplete_connections: int = 256
    #: whether URLs at private, loopback or link-local addresses are downloaded (off: no SSRF)
    allow_private_urls: bool = False
    #: whether reads accept Milvus expression strings as ``filter`` (dicts are always accepted)
    allow_expressions: bool = True
    #: whether ``POST /v1/index`` may index archives inside the archive root (write token)
    allow_index: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_k <= MAX_TOPK:
            raise ValueError(f"max_k must be between 1 and {MAX_TOPK}, got {self.max_k}")
        for name in ("max_upload_bytes", "max_batch", "max_codes", "max_hits", "concurrency",
                     "max_pixels",
                     "max_incomplete_connections"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        from ..call_checks import check_bearer_token

        check_bearer_token(self.read_token, "the read token (--read-token, $RSIR_READ_TOKEN)")
        check_bearer_token(self.write_token, "the write token (--write-token, $RSIR_WRITE_TOKEN)")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if min(self.request_timeout, self.url_timeout, self.header_timeout, self.body_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.archive_root is not None:
            root = Path(self.archive_root)
            if not root.is_dir():
                raise ValueError(f"archive root {root} is not a folder")
            object.__setattr__(self, "archive_root", root.resolve())
