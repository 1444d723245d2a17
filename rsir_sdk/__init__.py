"""rsir-sdk: remote sensing image retrieval with learned binary hash codes.

The runtime half: load a model bundle, encode images with onnxruntime, store and search
packed binary codes in Milvus, index whole archives. It never imports torch.

>>> from rsir_sdk import Retriever                                    # doctest: +SKIP
>>> r = Retriever("bundle/", uri="./rsir.db", collection="scenes")    # doctest: +SKIP
>>> r.index("archive/", label_from="parent")                          # doctest: +SKIP
>>> r.search("query.jpg", k=5)                                        # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

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
from .store import MilvusCodeStore, list_collections


def __getattr__(name: str):  # RemoteRetriever: imported on first use (it needs only httpx)
    if name == "RemoteRetriever":
        from .serve.client import RemoteRetriever

        return RemoteRetriever
    if name == "HttpOptions":
        from .serve.client import HttpOptions

        return HttpOptions
    raise AttributeError(f"module 'rsir_sdk' has no attribute {name!r}")


try:
    __version__ = version("rsir-sdk")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "ArchiveError",
    "ArchiveListing",
    "Bundle",
    "BundleError",
    "CodeLengthError",
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "DatabaseCodes",
    "Encoded",
    "Encoder",
    "EvaluationError",
    "Failure",
    "FailureReport",
    "Hit",
    "HttpOptions",
    "ImageLoadError",
    "IndexOptions",
    "InvalidInputError",
    "IngestInterrupted",
    "IngestOptions",
    "IngestProgress",
    "IngestSummary",
    "Item",
    "MilvusCodeStore",
    "RasterRule",
    "RasterRuleError",
    "RasterRuleMismatchError",
    "RayOptions",
    "RemoteRetriever",
    "RetrievalAPI",
    "Retriever",
    "RsirError",
    "SplitError",
    "StoreError",
    "StoredItem",
    "__version__",
    "hamming_distances",
    "list_collections",
    "load_image",
    "open_archive",
    "pack_codes",
    "read_image",
    "topk_bruteforce",
    "unpack_codes",
]
