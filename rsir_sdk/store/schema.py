"""What an rsir collection is: its fields, their limits, and the identity record it keeps.

Torch- and pymilvus-free constants, so that listing an archive can check field lengths without
loading Milvus.
"""

from __future__ import annotations

#: Milvus caps topK (and a range search's limit) at this
MAX_TOPK = 16384
#: VARCHAR limits of the collection's fields, in UTF-8 bytes
MAX_ID_LEN = 512
MAX_LABEL_LEN = 512
MAX_PATH_LEN = 4096
#: the key under which a collection's description records the encoder that filled it
SCHEMA_TAG = "rsir"
FIELDS = ("id", "code", "label", "path", "metadata")
OUTPUT_FIELDS = ["label", "path", "metadata"]
UPSERT_BATCH = 5000


def is_lite_uri(uri: str) -> bool:
    """True when ``uri`` names a Milvus Lite file (a path), False for a server URL."""
    return "://" not in str(uri)


def redact_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` part replaced by ``***@`` (for messages and logs).

    >>> redact_uri("http://root:secret@milvus:19530")
    'http://***@milvus:19530'
    """
    text = str(uri)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    host, at, tail = rest.rpartition("@")
    if not at:
        return text
    slash = host.find("/")
    if slash >= 0:  # an "@" after the authority (in a path) is not a credential
        return text
    return f"{scheme}://***@{tail}"
