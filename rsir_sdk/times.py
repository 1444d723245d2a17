"""UTC times for places and periods: ISO 8601, TIFF/EXIF and epoch seconds in, epoch seconds
and ISO 8601 out.

Pure Python (no dateutil): what :mod:`rsir_sdk.geo`'s :class:`~rsir_sdk.geo.Period`, the
GeoTIFF reader (:mod:`rsir_sdk.georef`), the archive's metadata columns and the HTTP API share,
so a time typed on the command line, sent over HTTP or read from an image tag means the same
instant everywhere. Times without an offset are UTC; an inclusive end (``end=True``) of a day,
month or year is its last microsecond.
"""

from __future__ import annotations

import math
import numbers
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

from .errors import InvalidInputError

__all__ = ["finite_number", "iso", "parse_time"]


def finite_number(value: Any, name: str) -> float:
    """``value`` as a finite float, or one line naming ``name`` (booleans are refused)."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise InvalidInputError(f"{name} must be finite, got {value!r}")
    return out


_PARTIAL = re.compile(r"^\s*(\d{4})(?:-(\d{2}))?\s*$")
_WEEK = re.compile(r"^\d{4}-?W\d{2}$", re.IGNORECASE)  # an ISO week without its day
_EXIF = re.compile(r"^\s*(\d{4}):(\d{2}):(\d{2})(?:[ T](\d{2}):(\d{2}):(\d{2}))?\s*$")
#: a time of day, then a space where an offset's sign should be: ``+02:00`` in a URL's query
#: string that was not escaped as ``%2B`` arrives as `` 02:00`` (a ``+`` is a space there)
_LOST_PLUS = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?) (\d{2}(?::?\d{2})?)$")


def parse_time(value: Any, name: str = "time", end: bool = False) -> float:
    """ISO 8601 (``2021-06-01``, ``2021-06-01T10:30:00Z``, ``+02:00`` offsets, ``2021``,
    ``2021-06``, the basic ``20210601`` and week ``2021-W22`` forms), a TIFF/EXIF ``2021:06:01
    10:30:00`` (or its date alone), a ``datetime``/``date`` or epoch seconds → UTC epoch seconds. Times without an
    offset are UTC. With ``end=True`` a date, week, month or year means its last instant (an
    inclusive end). An offset whose ``+`` became a space (``10:30:00 02:00``: a URL's query
    string not escaped) is read as ``+02:00``. One line naming ``name`` when it does not parse."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy numbers too
        return finite_number(value, name)
    if isinstance(value, datetime):
        return _epoch(value)
    if isinstance(value, date):
        return _day(value, end)
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be an ISO 8601 time, got {value!r}")
    text = value.strip()
    m = _PARTIAL.match(text)
    try:
        if m:
            year, month = int(m.group(1)), int(m.group(2) or 0)
            first = date(year, month or 1, 1)
            if not end:
                return _day(first, False)
            nxt = date(year + 1, 1, 1) if month in (0, 12) else date(year, month + 1, 1)
            return _day(nxt, False) - 1e-6
        m = _EXIF.match(text)
        if m:  # a TIFF/EXIF DateTime, or its date alone (some writers leave the time out)
            y, mo, d = (int(g) for g in m.groups()[:3])
            if m.group(4) is None:
                return _day(date(y, mo, d), end)
            h, mi, sec = (int(g) for g in m.groups()[3:])
            return _epoch(datetime(y, mo, d, h, mi, sec))
        if "T" not in text.upper() and ":" not in text:  # a date: 2021-06-01, 20210601, 2021-W22
            day = date.fromisoformat(text)
            if end and _WEEK.match(text):  # the whole week, Monday to Sunday
                return _day(day + timedelta(days=6), True)
            return _day(day, end)
        text = _LOST_PLUS.sub(r"\1+\2", text.replace("z", "Z").replace("Z", "+00:00"))
        return _epoch(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        pass
    raise InvalidInputError(f"{name} {value!r} is not an ISO 8601 time (e.g. 2021-06-01T10:30:00Z)")


def _epoch(dt: datetime) -> float:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(seconds=1)


def _day(d: date, end: bool) -> float:
    start = _epoch(datetime(d.year, d.month, d.day))
    return start + 86400.0 - 1e-6 if end else start


def iso(t: float) -> str:
    """UTC epoch seconds → ISO 8601 ``YYYY-MM-DDTHH:MM:SSZ`` (microseconds when present)."""
    dt = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=t)
    text = dt.isoformat(timespec="microseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")
