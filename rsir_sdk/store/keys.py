"""The one way user text reaches a Milvus expression: as a BLAKE2b-128 hex digest.

Why: Milvus Lite 2.5.1 and the Milvus 2.3.5 server read string literals differently (``\\n`` is
``n`` on Lite, a newline on the server; a lone CR has no spelling on Lite at all), Lite's own
SQL breaks on a primary key holding ``'``, and pymilvus quotes ``get``/``delete`` ids without
escaping (see ``docs/runtime.md``, "Ids, filters and limits"). So no user string ever becomes a
primary key or part of an expression. Instead each row carries

* ``pk``: :func:`digest` of its id (the primary key; the id itself is a plain field),
* ``label_h``, ``path_h``: digests of its label and path,
* ``meta_h``: ``{"k<digest of key>": digest of canonical JSON value}`` for each metadata key,

and dict filters, ``get``, ``delete`` and resume compare digests. Expressions built here hold
only field names, 32-character lowercase hex literals and the operators ``==``, ``in``,
``and``, ``>=`` and ``<``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping, Sequence

from ..errors import InvalidInputError
from . import values

_HEX = re.compile(r"[0-9a-f]{32}")
_PREFIX = re.compile(r"[0-9a-f]{0,31}")
#: dict filter keys that name a column (compared through its digest column)
COLUMN_DIGESTS = {"id": "pk", "label": "label_h", "path": "path_h"}


def digest(text: str) -> str:
    """32 lowercase hex characters of BLAKE2b-128 over the UTF-8 bytes of ``text``.

    >>> digest("O'Brien.jpg")
    '533b0dcba60c3e2971d3d87acb6991a6'
    """
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def canonical_value(value: Any) -> str:
    """The canonical JSON text of a metadata value (what equality in a dict filter compares).

    Integral floats within 2**53 count as integers, so ``{"year": 2020.0}`` finds 2020.

    >>> canonical_value({"b": 1, "a": "é"})
    '{"a":"é","b":1}'
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)


def meta_key(key: str) -> str:
    """The ``meta_h`` key of a metadata key: ASCII, never empty, starts with a letter."""
    return "k" + digest(key)


def meta_digests(meta: Mapping[str, Any]) -> dict[str, str]:
    """The ``meta_h`` object of one item's (validated) metadata."""
    return {meta_key(k): digest(canonical_value(v)) for k, v in meta.items()}


def hex_literal(hexdigest: str) -> str:
    """The only literal the store writes into an expression: a digest in double quotes."""
    if not isinstance(hexdigest, str) or not _HEX.fullmatch(hexdigest):
        raise AssertionError(f"not a digest: {hexdigest!r}")
    return f'"{hexdigest}"'


def in_list(field: str, digests: Sequence[str]) -> str:
    """``field == "<hex>"`` or ``field in ["<hex>", ...]``."""
    if not digests:
        raise AssertionError("an empty digest list matches nothing")
    if len(digests) == 1:
        return f"{field} == {hex_literal(digests[0])}"
    return f"{field} in [{', '.join(hex_literal(d) for d in digests)}]"


def pk_prefix(prefix: str) -> str:
    """Rows whose primary key starts with the hex ``prefix`` (splits a search past topK)."""
    if not _PREFIX.fullmatch(prefix):
        raise AssertionError(f"not a hex prefix: {prefix!r}")
    return f'pk >= "{prefix}" and pk < "{prefix}g"' if prefix else ""


def pk_range(lo: str, hi: str) -> str:
    """Rows whose primary key is in ``[lo, hi)`` (hex; ``hi == ""``: no upper bound): a
    uniform random sample of the collection, whatever the insertion order."""
    if not _PREFIX.fullmatch(lo) or not _PREFIX.fullmatch(hi):
        raise AssertionError(f"not a hex range: {lo!r}, {hi!r}")
    return f'pk >= "{lo}" and pk < "{hi}"' if hi else f'pk >= "{lo}"'


def build_filter(filter: str | Mapping[str, Any] | None) -> str:
    """Turn a filter into a Milvus boolean expression.

    * ``None`` or ``{}``: no filter (``""``).
    * A mapping: equality on each key, all of them (``and``); a list, tuple or set value means
      "any of". ``id``, ``label`` and ``path`` are columns; any other key is a top-level
      metadata key, compared with the whole value (numbers, booleans, strings). Every value goes
      through its digest, so any Unicode text works.
    * A string: the caller's own Milvus expression, passed through as it is (an advanced escape
      hatch: it sees the raw ``id``, ``label``, ``path`` and ``metadata`` fields, and only text
      without line breaks can be written in it portably).

    Anything else raises :class:`~rsir_sdk.errors.InvalidInputError`.

    >>> build_filter({"label": "forêt"})
    'label_h == "d58e249580538b58158d8e5ba9e1865b"'
    """
    if filter is None:
        return ""
    if isinstance(filter, str):
        values.text(filter, "filter expression", 1 << 20)
        check_like_patterns(filter)
        check_divisors(filter)
        return filter.strip()
    if not isinstance(filter, Mapping):
        raise InvalidInputError(
            f"filter must be a dict such as {{'label': 'forest'}} or a Milvus expression string, "
            f"got {type(filter).__name__} {filter!r:.60}"
        )
    parts = []
    for key, value in filter.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"filter keys must be strings, got {type(key).__name__} {key!r:.40}")
        values.text(key, "filter key", values.MAX_KEY_BYTES)
        checked = values.filter_value(key, value)
        items = checked if isinstance(checked, list) else [checked]
        if key in COLUMN_DIGESTS:
            for v in items:
                if not isinstance(v, str):
                    raise InvalidInputError(
                        f"filter on {key!r}: values must be strings, got {type(v).__name__} {v!r:.40}"
                    )
            parts.append(in_list(COLUMN_DIGESTS[key], sorted({digest(v) for v in items})))
        else:
            digests = sorted({digest(canonical_value(v)) for v in items})
            parts.append(in_list(f'meta_h["{meta_key(key)}"]', digests))
    return " and ".join(parts)


def combine(*exprs: str) -> str:
    """``(a) and (b)`` of the non-empty expressions."""
    parts = [e for e in exprs if e]
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return " and ".join(f"({e})" for e in parts)


_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_LIKE_WITHOUT_PATTERN = re.compile(r"\blike\b(?!\s*\"\")", re.IGNORECASE)


def check_like_patterns(expression: str) -> None:
    """Refuse a ``like`` whose pattern is not a quoted string (``label like 5``).

    Why here: Milvus Lite 2.5.1's server process dies on it ("mismatched input '5' expecting
    StringLiteral") instead of answering an error, taking every other request with it.

    >>> check_like_patterns('label like "fo%" and path like "%.tif"')
    >>> check_like_patterns('label like 5')
    Traceback (most recent call last):
    rsir_sdk.errors.InvalidInputError: invalid filter expression 'label like 5': like takes a quoted pattern, e.g. label like "fo%"
    """
    quoted_out = _STRING_LITERAL.sub('""', expression)
    if _LIKE_WITHOUT_PATTERN.search(quoted_out):
        raise InvalidInputError(f"invalid filter expression {expression!r:.200}: like takes a "
                                f'quoted pattern, e.g. label like "fo%"')


#: ``/`` or ``%`` and what follows it: an optional ``(``, a signed number literal, an optional
#: ``)`` and up to two ``*`` (a ``**`` there raises the divisor to a power)
_DIVISION = re.compile(
    r"[/%]\s*(?P<open>\(\s*)?(?P<number>[+-]?\s*(?:0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO]?[0-7]+"
    r"|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))?(?P<close>\s*\))?"
    r"\s*(?P<stars>\*{0,2})")


def check_divisors(expression: str) -> None:
    """Refuse a ``/`` or ``%`` whose right side is not a nonzero number (``t % 0 == 0``,
    ``id == 1/(1-1)``).

    Why here: Milvus Lite 2.5.1's server process dies on an integer division by zero while it
    plans the expression, taking every other request with it (a service's other users got 503s
    until it started again). Field arithmetic takes a number on the right anyway
    (``t % 86400 == 0``; ``t % t`` is refused by Milvus), so only constant expressions are
    lost: write their value.

    >>> check_divisors('t % 86400 == 0 and path like "%/a%"')
    >>> check_divisors('t % (2 - 2) == 0')
    Traceback (most recent call last):
    rsir_sdk.errors.InvalidInputError: invalid filter expression 't % (2 - 2) == 0': / and % take a nonzero number on their right (t % 86400), not an expression (Milvus Lite's server dies on a division by zero): write the value
    """
    quoted_out = _STRING_LITERAL.sub('""', expression)
    for m in _DIVISION.finditer(quoted_out):
        number, opened, closed = m.group("number"), bool(m.group("open")), bool(m.group("close"))
        # "(2 - 2)": the bracket holds more than the number; "2**x" or "(2)**x": a power of
        # it; a ")" that closes an outer bracket ("(t % 5) == 0", "(t % 5)**2") is fine
        longer = opened and not closed
        power = m.group("stars") == "**" and (opened or not closed)
        if number and not longer and not power and _nonzero(number):
            continue
        raise InvalidInputError(
            f"invalid filter expression {expression!r:.200}: / and % take a nonzero number on "
            f"their right (t % 86400), not an expression (Milvus Lite's server dies on a "
            f"division by zero): write the value")


def _nonzero(literal: str) -> bool:
    """Whether a number literal of a Milvus expression (decimal, hex, octal, binary, float;
    signed) is not zero."""
    text = literal.replace(" ", "").lstrip("+-")
    if re.fullmatch(r"0[oO]?[0-7]+", text):
        return int(text.lstrip("0oO") or "0", 8) != 0
    try:
        return int(text, 0) != 0
    except ValueError:
        return float(text) != 0.0
