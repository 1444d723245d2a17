"""Milvus Lite's millisecond clock: a call after a write waits until the write is in its past.

Milvus Lite 2.5.1 stamps each operation from the wall clock in milliseconds: a read and a
delete at ``ms << 18``, an insert at ``(ms << 18) + n`` where ``n`` counts the rows its server
process inserted before (``src/segcore_wrapper.cpp``, ``src/insert_task.cpp``). A read sees,
and a delete removes, only rows stamped no later than itself. So a read in the same
millisecond as the insert (or upsert) before it does not see that insert, and a delete in that
millisecond does not remove it: on a fast machine an upsert followed at once by a count read
0 rows (CI, 2026-12-06: ``tests/test_strings_roundtrip.py``, ``0 == 0 + 1``). The store calls
:func:`after_write` when a write returns and :func:`wait` before every call; the wait is at
most a millisecond (plus one per 2**18 rows the server inserted) and only right after a write.
"""

from __future__ import annotations

import threading
import time

#: an insert's stamp runs ahead of the clock by the rows inserted before it, in units of 2**18
_ROWS_PER_MS = 1 << 18

_lock = threading.Lock()
#: server key -> (rows its server inserted, wall-clock ms from which the last write is past)
_state: dict[str, tuple[int, int]] = {}


def after_write(key: str, rows: int) -> None:
    """Note a write to the server of ``key`` that just returned (``rows`` inserted; 0 for a
    delete): later calls go out from the next millisecond on, or later by the rows'
    lead."""
    now_ms = int(time.time() * 1000)
    with _lock:
        inserted = _state.get(key, (0, 0))[0] + max(0, rows)
        lead = -(-inserted // _ROWS_PER_MS)  # whole milliseconds, rounded up
        _state[key] = (inserted, now_ms + 1 + lead)


def wait(key: str) -> None:
    """Sleep until the last write to the server of ``key`` is in its clock's past."""
    state = _state.get(key)
    if state is None:
        return
    delay_ms = state[1] - time.time() * 1000
    if delay_ms > 0:
        time.sleep(delay_ms / 1000)


def forget(key: str) -> None:
    """The server of ``key`` stopped: a new one counts its inserted rows from 0."""
    with _lock:
        _state.pop(key, None)
