"""rsir-sdk: remote sensing image retrieval with learned binary hash codes.

The runtime half: load a model bundle, encode images with onnxruntime, store and search
packed binary codes in Milvus. It never imports torch.

>>> from rsir_sdk import Retriever                                    # doctest: +SKIP
>>> r = Retriever("bundle/", uri="./rsir.db", collection="scenes")    # doctest: +SKIP
>>> r.search("query.jpg", k=5)                                        # doctest: +SKIP
"""

from .bundle import Bundle, DatabaseCodes
from .codes import hamming_distances, pack_codes, topk_bruteforce, unpack_codes
from .encoder import Encoded, Encoder
from .errors import (
    BundleError,
    CodeLengthError,
    CollectionMismatchError,
    ImageLoadError,
    RsirError,
    StoreError,
)
from .images import load_image
from .retriever import Hit, Retriever
from .store import MilvusCodeStore, StoreHit, list_collections

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "DatabaseCodes",
    "Encoded",
    "Encoder",
    "Hit",
    "MilvusCodeStore",
    "Retriever",
    "StoreHit",
    "hamming_distances",
    "list_collections",
    "load_image",
    "pack_codes",
    "topk_bruteforce",
    "unpack_codes",
    "BundleError",
    "CodeLengthError",
    "CollectionMismatchError",
    "ImageLoadError",
    "RsirError",
    "StoreError",
    "__version__",
]
