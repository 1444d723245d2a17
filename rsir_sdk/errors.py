"""Exception classes of the SDK: each names what was wrong and what to do about it.

Every error the SDK raises on purpose derives from :class:`RsirError`, so callers (the ``rsir``
command, the HTTP service) can turn any of them into one line; the service reports the class
name as the error ``kind`` and :class:`~rsir_sdk.serve.client.RemoteRetriever` raises the same
class again on the client side.
"""

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

    def __reduce__(self):  # keep (source, reason) through pickling (thread/process pools)
        return (type(self), (self.source, self.reason))


class BundleError(RsirError, ValueError):
    """A model bundle is missing a file or field, or its parts disagree."""


class SplitError(RsirError, ValueError):
    """A split file cannot be read, cannot be drawn, or does not match the archive."""


class ArchiveError(RsirError, ValueError):
    """An archive folder or CSV manifest cannot be listed (missing, bad CSV, unknown column)."""


class RasterRuleError(RsirError, ValueError):
    """A raster rule is malformed (unknown stretch, bad band list, bad percentiles)."""


class CollectionMismatchError(RsirError, ValueError):
    """A Milvus collection holds codes of another length or from another encoder."""


class RasterRuleMismatchError(CollectionMismatchError):
    """The collection was filled with images converted by another raster rule."""


class StoreError(RsirError, RuntimeError):
    """Milvus could not be reached or refused an operation."""


class CollectionNotFoundError(StoreError):
    """The collection to read does not exist; the message names the ones that do."""


class EvaluationError(RsirError, ValueError):
    """A bundle cannot be evaluated: no split file, no archive, ids missing from the archive."""


class InvalidInputError(RsirError, ValueError):
    """A value given to the SDK cannot be used: wrong type, out of range, or not storable."""
