"""rsir-sdk: remote sensing image retrieval with learned binary hash codes.

The runtime half: load a model bundle, encode images with onnxruntime, store and search
packed binary codes in Milvus, index whole archives. It never imports torch.

>>> from rsir_sdk import Retriever                                    # doctest: +SKIP
>>> r = Retriever("bundle/", uri="./rsir.db", collection="scenes")    # doctest: +SKIP
>>> r.index("archive/", label_from="parent")                          # doctest: +SKIP
>>> r.search("query.jpg", k=5)                                        # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public names and the module each lives in. They load on first use (PEP 562), so
# ``import rsir_sdk`` and the ``rsir`` command start without numpy, pymilvus or onnxruntime
# and a Ctrl-C while a command starts is one line, not an import traceback.
_EXPORTS: dict[str, str] = {
    "RetrievalAPI": "api",
    "ArchiveListing": "archive", "Item": "archive", "open_archive": "archive",
    "Bundle": "bundle", "DatabaseCodes": "bundle",
    "hamming_distances": "codes", "pack_codes": "codes", "topk_bruteforce": "codes",
    "unpack_codes": "codes",
    "Encoded": "encoder", "Encoder": "encoder",
    "ArchiveError": "errors", "BundleError": "errors", "CodeLengthError": "errors",
    "CollectionMismatchError": "errors", "CollectionNotFoundError": "errors",
    "EvaluationError": "errors", "ImageLoadError": "errors", "InvalidInputError": "errors",
    "RasterRuleError": "errors", "RasterRuleMismatchError": "errors", "RsirError": "errors",
    "SplitError": "errors", "StoreError": "errors",
    "Failure": "failures", "FailureReport": "failures",
    "Hit": "hits", "StoredItem": "hits",
    "load_image": "images", "read_image": "images",
    "IngestInterrupted": "ingest", "IngestProgress": "ingest", "IngestSummary": "ingest",
    "IndexOptions": "options", "IngestOptions": "options", "RayOptions": "options",
    "RasterRule": "rasters",
    "Retriever": "retriever",
    "MilvusCodeStore": "store", "list_collections": "store",
    "RemoteRetriever": "serve.client", "HttpOptions": "serve.client",  # needs only httpx
    # what RemoteRetriever raises beyond the core errors (all RsirError; no FastAPI needed)
    "ServiceError": "serve.errors", "AuthenticationError": "serve.errors",
    "ForbiddenError": "serve.errors", "ServiceBusyError": "serve.errors",
    "ServiceTimeoutError": "serve.errors", "ServiceConnectionError": "serve.errors",
    "PayloadTooLargeError": "serve.errors", "InvalidRequestError": "serve.errors",
    "NotFoundError": "serve.errors",
}

__all__ = [
    "ArchiveError", "ArchiveListing", "Bundle", "BundleError", "CodeLengthError",
    "CollectionMismatchError", "CollectionNotFoundError", "DatabaseCodes", "Encoded", "Encoder",
    "EvaluationError", "Failure", "FailureReport", "Hit", "HttpOptions", "ImageLoadError",
    "IndexOptions", "IngestInterrupted", "IngestOptions", "IngestProgress", "IngestSummary",
    "InvalidInputError", "Item", "MilvusCodeStore", "RasterRule", "RasterRuleError",
    "RasterRuleMismatchError", "RayOptions", "RemoteRetriever", "RetrievalAPI", "Retriever",
    "RsirError", "SplitError", "StoreError", "StoredItem", "hamming_distances", "list_collections",
    "load_image", "open_archive", "pack_codes", "read_image", "topk_bruteforce", "unpack_codes",
    "ServiceError", "AuthenticationError", "ForbiddenError", "ServiceBusyError",
    "ServiceTimeoutError", "ServiceConnectionError", "PayloadTooLargeError", "InvalidRequestError",
    "NotFoundError", "__version__",
]  # the names of _EXPORTS, and the version

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .api import RetrievalAPI
    from .archive import ArchiveListing, Item, open_archive
    from .bundle import Bundle, DatabaseCodes
    from .codes import hamming_distances, pack_codes, topk_bruteforce, unpack_codes
    from .encoder import Encoded, Encoder
    from .errors import (
        ArchiveError,
        BundleError,
        CodeLengthError,
        CollectionMismatchError,
        CollectionNotFoundError,
        EvaluationError,
        ImageLoadError,
        InvalidInputError,
        RasterRuleError,
        RasterRuleMismatchError,
        RsirError,
        SplitError,
        StoreError,
    )
    from .failures import Failure, FailureReport
    from .hits import Hit, StoredItem
    from .images import load_image, read_image
    from .ingest import IngestInterrupted, IngestProgress, IngestSummary
    from .options import IndexOptions, IngestOptions, RayOptions
    from .rasters import RasterRule
    from .retriever import Retriever
    from .serve.client import HttpOptions, RemoteRetriever
    from .serve.errors import (
        AuthenticationError,
        ForbiddenError,
        InvalidRequestError,
        NotFoundError,
        PayloadTooLargeError,
        ServiceBusyError,
        ServiceConnectionError,
        ServiceError,
        ServiceTimeoutError,
    )
    from .store import MilvusCodeStore, list_collections

    __version__: str


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use and keep the name here."""
    if name == "__version__":
        value: Any = _version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'rsir_sdk' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (not the helpers this module imports to load them)."""
    return sorted(__all__)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rsir-sdk")
    except PackageNotFoundError:  # a source tree that was not installed
        return "0+unknown"
