"""What may be stored and asked for: ids, labels, paths, metadata, ``k``, ``radius``, filters.

Why one module: a write must be checked completely before its first row reaches Milvus, so that
a bad call changes nothing even when it spans many batches, and Milvus' own refusals (an int
beyond 64 bits in JSON, a string over a VARCHAR limit in bytes, ...) must be caught here first,
with a message that names the offending item. Every check raises
:class:`~rsir_sdk.errors.InvalidInputError` (a ``ValueError``).

Strings are Python ``str`` encodable as UTF-8: any Unicode character, including quotes,
backslashes, newlines, NUL and emoji, but not lone surrogates (which no UTF-8 store can hold).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .schema import MAX_ID_LEN, MAX_LABEL_LEN, MAX_PATH_LEN, MAX_TOPK

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: nesting deeper than this in metadata is refused (Milvus JSON fields are meant to be flat)
MAX_METADATA_DEPTH = 16
#: the encoded JSON of one item's metadata may not exceed this (the Milvus server refuses a JSON
#: field over 65,536 bytes; Milvus Lite has no limit, so the check is ours, for both)
MAX_METADATA_BYTES = 65_536
#: a metadata key (or a dict filter key) may not exceed this many UTF-8 bytes
MAX_KEY_BYTES = 1024


def text(value: Any, what: str, max_bytes: int, *, allow_empty: bool = True) -> str:
    """``value`` as a storable string, or :class:`InvalidInputError` naming ``what``."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {type(value).__name__} {value!r:.60}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInputError(
            f"{what} {value!r:.60} holds a lone surrogate: it is not valid Unicode text and "
            f"cannot be stored or searched (a file name that is not UTF-8? rename the file)"
        ) from None
    if not allow_empty and not value:
        raise InvalidInputError(f"{what} must not be empty")
    if size > max_bytes:
        raise InvalidInputError(f"{what} is {size} bytes in UTF-8, over the {max_bytes}-byte limit: "
                                f"{value[:60]!r}...")
    return str(value)


def _plain(values: list[Any], max_bytes: int, allow_empty: bool = True) -> bool:
    """Whether every value is a plain ASCII ``str`` within ``max_bytes`` (and non-empty unless
    ``allow_empty``): the common case, checked without encoding (ASCII: one byte a character)."""
    for v in values:
        if type(v) is not str or not v.isascii() or len(v) > max_bytes or not (allow_empty or v):
            return False
    return True


def ids(values: Any) -> list[str]:
    """Check a sequence of unique, non-empty ids (a lone string is refused: pass ``[id]``)."""
    if isinstance(values, (str, bytes, bytearray)) or not isinstance(values, (Sequence, np.ndarray)):
        if isinstance(values, (str, bytes, bytearray)):
            raise InvalidInputError(
                f"ids must be a list of strings, got one {type(values).__name__} {values!r:.60} "
                f"(for one item pass [id])"
            )
        try:
            values = list(values)
        except TypeError:
            raise InvalidInputError(
                f"ids must be a list of strings, got {type(values).__name__}") from None
    items = list(values)
    out = items if _plain(items, MAX_ID_LEN, False) else [
        text(v, "id", MAX_ID_LEN, allow_empty=False) for v in items]
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dupes = [i for i in out if i in seen or seen.add(i)][:5]  # type: ignore[func-returns-value]
        raise InvalidInputError(f"ids must be unique within one call; repeated: {dupes}")
    return out


def column(values: Any, n: int, name: str, max_bytes: int) -> list[str]:
    """A text column of ``n`` values (``None`` = all empty; ``None`` entries = empty)."""
    if values is None:
        return [""] * n
    if isinstance(values, (str, bytes)):
        raise InvalidInputError(f"{name} must be a list with one value per id, got a single "
                                f"{type(values).__name__}")
    values = list(values)
    if len(values) != n:
        raise InvalidInputError(f"{n} ids but {len(values)} {name}")
    if _plain(values, max_bytes):
        return values
    singular = name[:-1] if name.endswith("s") else name
    return ["" if v is None else text(v, singular, max_bytes) for v in values]


def labels(values: Any, n: int) -> list[str]:
    """The label column."""
    return column(values, n, "labels", MAX_LABEL_LEN)


def paths(values: Any, n: int) -> list[str]:
    """The path column."""
    return column(values, n, "paths", MAX_PATH_LEN)


def metadata(values: Any, ids_: Sequence[str]) -> list[dict[str, Any]]:
    """One JSON object per id: string keys; values None, bool, int64, finite float, str, lists
    and objects of those. Checked recursively (Milvus would refuse or alter anything else)."""
    return metadata_sized(values, ids_)[0]


def metadata_sized(values: Any, ids_: Sequence[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """:func:`metadata` and the JSON size of each object (bytes)."""
    n = len(ids_)
    if values is None:
        return [{} for _ in range(n)], [2] * n
    if isinstance(values, Mapping):
        raise InvalidInputError("metadata must be a list with one dict per id, got one dict")
    values = list(values)
    if len(values) != n:
        raise InvalidInputError(f"{n} ids but {len(values)} metadata entries")
    out: list[dict[str, Any]] = []
    sizes = []
    for i, meta in zip(ids_, values):
        if not meta:
            if meta is None or isinstance(meta, Mapping):
                out.append({})
                sizes.append(2)
                continue
        if not isinstance(meta, Mapping):
            raise InvalidInputError(f"metadata for id {i!r} must be a dict, got {type(meta).__name__}")
        checked = dict(meta) if _flat(meta) else _json_value(meta, f"metadata of id {i!r}", 0)
        size = json_size(checked)
        if size > MAX_METADATA_BYTES:
            raise InvalidInputError(f"metadata of id {i!r} is {size} bytes as JSON, over the "
                                    f"{MAX_METADATA_BYTES}-byte limit")
        out.append(checked)
        sizes.append(size)
    return out, sizes


def _flat(meta: Mapping[str, Any]) -> bool:
    """Whether ``meta`` is a flat object of plain values that :func:`_json_value` would keep as
    they are (ASCII keys and strings, int64, finite floats, bools, None): checked fast."""
    for k, v in meta.items():
        if type(k) is not str or not k.isascii() or len(k) > MAX_KEY_BYTES:
            return False
        t = type(v)
        if t is str:
            if not v.isascii() or len(v) > MAX_METADATA_BYTES:
                return False
        elif t is int:
            if not INT64_MIN <= v <= INT64_MAX:
                return False
        elif t is float:
            if not math.isfinite(v):
                return False
        elif t is not bool and v is not None:
            return False
    return True


def json_size(value: Any) -> int:
    """Bytes of ``value`` as the compact JSON pymilvus sends (orjson; the same text as
    ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``)."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - pymilvus depends on orjson
        import json

        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False).encode("utf-8"))
    return len(orjson.dumps(value))


def _json_value(value: Any, where: str, depth: int) -> Any:
    if depth > MAX_METADATA_DEPTH:
        raise InvalidInputError(f"{where}: nested deeper than {MAX_METADATA_DEPTH} levels")
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, (int, np.integer)):
        v = int(value)
        if not INT64_MIN <= v <= INT64_MAX:
            raise InvalidInputError(f"{where}: integer {v} does not fit in 64 bits (store it as a "
                                    f"string or a float)")
        return v
    if isinstance(value, (float, np.floating)):
        # a float32/float16 by its shortest decimal form: np.float32(0.1) is stored as 0.1 (not
        # 0.10000000149011612, which a filter {"f": 0.1} never found)
        f = float(str(value)) if isinstance(value, np.floating) and value.itemsize < 8 else float(value)
        if not math.isfinite(f):
            raise InvalidInputError(f"{where}: {f} is not a finite number (JSON has no NaN or "
                                    f"infinity; use null)")
        return f
    if isinstance(value, str):
        return text(value, f"{where}: value", MAX_METADATA_BYTES)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInputError(f"{where}: keys must be strings, got {type(k).__name__} {k!r:.40}")
            text(k, f"{where}: key", MAX_KEY_BYTES)
            out[k] = _json_value(v, where, depth + 1)
        return out
    if isinstance(value, np.ndarray) and value.ndim == 0:  # a numpy scalar in an array
        return _json_value(value[()], where, depth)
    if isinstance(value, np.ndarray):  # float32 elements kept as numpy scalars: see above
        value = list(value) if value.dtype.kind == "f" and value.itemsize < 8 else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_json_value(v, where, depth + 1) for v in value]
    raise InvalidInputError(f"{where}: {type(value).__name__} is not a JSON value")


def k(value: Any) -> int:
    """``k`` of a top-k search: an integer in 1..16384 (Milvus' topK cap)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"k must be an integer, got {type(value).__name__} {value!r:.40}")
    if not 1 <= int(value) <= MAX_TOPK:
        raise InvalidInputError(f"k must be between 1 and {MAX_TOPK} (Milvus' topK cap), got {value}")
    return int(value)


def radius(value: Any) -> int | None:
    """A Hamming radius: ``None`` or an integer >= 0."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"radius must be an integer, got {type(value).__name__} {value!r:.40}")
    if int(value) < 0:
        raise InvalidInputError(f"radius must be >= 0, got {value}")
    return int(value)


def filter_value(key: str, value: Any) -> Any:
    """A value in a dict filter: a scalar (str, int, float, bool, None), or a non-empty list of
    scalars ("any of")."""
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if not items:
            raise InvalidInputError(f"filter on {key!r}: an empty list matches nothing; give at "
                                    f"least one value")
        return [w for v in items for w in _forms(key, v)]
    forms = _forms(key, value)
    return forms[0] if len(forms) == 1 else forms


def _forms(key: str, value: Any) -> list[Any]:
    """A filter value, and for a float32/float16 also its widened form: rows written before
    such values were stored by their shortest decimal form hold the widened one
    (``np.float32(0.1)`` as 0.10000000149011612), and a filter with that value found them."""
    out = [_scalar(key, value)]
    if isinstance(value, np.floating) and value.itemsize < 8 and float(value) != out[0]:
        out.append(float(value))
    return out


def _scalar(key: str, value: Any) -> Any:
    if value is None:  # matches a metadata value that is null (not a missing key)
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return _json_value(value, f"filter on {key!r}", 0)
    if isinstance(value, (float, np.floating)):
        return _json_value(value, f"filter on {key!r}", 0)
    if isinstance(value, str):
        return text(value, f"filter on {key!r}: value", MAX_METADATA_BYTES)
    raise InvalidInputError(f"filter on {key!r}: values must be strings, numbers, booleans or "
                            f"None (or a non-empty list of them), got {type(value).__name__}")


def lookup_ids(values: Any) -> list[str]:
    """Ids to look up (get, delete, exists): strings, repeats allowed, order kept."""
    if isinstance(values, (str, bytes, bytearray)):
        raise InvalidInputError(
            f"ids must be a list of strings, got one {type(values).__name__} {values!r:.60} "
            f"(for one item pass [id])"
        )
    try:
        items = list(values)
    except TypeError:
        raise InvalidInputError(f"ids must be a list of strings, got {type(values).__name__}") from None
    return [text(v, "id", 1 << 30) for v in items]


def positive_int(value: Any, what: str) -> int:
    """An integer >= 1 (``bool`` and floats refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{what} must be a positive integer, got {value!r:.40}")
    return int(value)


#: the longest collection name: Milvus' 255 less the companions' longest suffix (``__codes``)
MAX_COLLECTION_NAME = 255 - len("__codes")
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,%d}" % (MAX_COLLECTION_NAME - 1))


def collection_name(value: Any) -> str:
    """A Milvus collection name: a letter or ``_``, then letters, digits and ``_`` (at most
    :data:`MAX_COLLECTION_NAME`: the fine-code companions add a suffix), not ending in a
    companion's suffix."""
    if not isinstance(value, str) or not _COLLECTION_NAME.fullmatch(value):
        raise InvalidInputError(
            f"collection names hold letters, digits and '_' and start with a letter or '_' (at "
            f"most {MAX_COLLECTION_NAME}), got {value!r:.80}"
        )
    if value.endswith(("__fine", "__codes")):  # the companions' suffixes (:mod:`.fine`)
        raise InvalidInputError(
            f"collection names may not end in '__fine' or '__codes' (the store keeps a "
            f"collection's fine codes under those names), got {value!r:.80}")
    return value


#: the index keywords of :class:`~rsir_sdk.store.MilvusCodeStore` (those of
#: :class:`~rsir_sdk.options.IndexOptions`)
INDEX_OPTIONS = ("index_type", "index_params", "search_params")


def index_options(options: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """``(index_type, index_params, search_params)`` of a store's index keywords; any other
    keyword is refused in one line (as a misspelt argument would be)."""
    bad = [k for k in options if k not in INDEX_OPTIONS]
    if bad:
        raise InvalidInputError(f"MilvusCodeStore got unexpected keyword(s) {', '.join(bad)}; "
                                f"it takes {', '.join(INDEX_OPTIONS)} besides its named ones")
    return tuple(options.get(k) for k in INDEX_OPTIONS)  # type: ignore[return-value]
