"""Exception classes of the SDK: each names what was wrong and what to do about it."""

from __future__ import annotations


class RsirError(Exception):
    """Base class of every error the SDK raises on purpose."""


class CodeLengthError(RsirError, ValueError):
    """Codes of the wrong bit length, or a bit length that is not a multiple of 8 in 8..32768."""


class ImageLoadError(RsirError, ValueError):
    """An image could not be read or decoded; the message names the source and the reason."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"cannot load image {source}: {reason}")


class BundleError(RsirError, ValueError):
    """A model bundle is missing a file or field, or its parts disagree."""


class CollectionMismatchError(RsirError, ValueError):
    """A Milvus collection holds codes of another length or from another encoder."""


class StoreError(RsirError, RuntimeError):
    """Milvus could not be reached or refused an operation."""
