"""Milvus Lite's millisecond stamps: a read or delete right after a write sees that write.

Milvus Lite 2.5.1 stamps reads and deletes at ``ms << 18`` and inserts at ``(ms << 18) + rows
inserted before``, so a call in the same millisecond as the write before it misses that write
(CI on a fast machine: a count of 0 right after an upsert). :mod:`rsir_sdk.store.lite_clock`
makes the store wait out that millisecond. Real Milvus Lite servers; the tight loops below are
what failed on a fast machine, and the clock's own waits are checked against the wall clock.
"""

from __future__ import annotations

import time

import numpy as np

from rsir_sdk import MilvusCodeStore
from rsir_sdk.store import lite, lite_clock

CODE = np.arange(8, dtype=np.uint8).reshape(1, 8)


def test_every_read_and_delete_right_after_a_write_sees_it(tmp_path):
    """Upsert, upsert again, read, delete, read: 150 rounds back to back on one id."""
    with MilvusCodeStore(str(tmp_path / "clock.db"), "c", bits=64) as store:
        for round_ in range(150):
            meta = [{"round": round_}]
            store.upsert(["same"], CODE, ["x"], ["p"], [{"round": -1}])
            store.upsert(["same"], CODE, ["x"], ["p"], meta)  # replaces the row just written
            assert store.count() == 1, round_
            assert [i.metadata for i in store.get(["same"])] == meta, round_
            assert store.delete(["same"]) == 1, round_
            assert store.count() == 0 and store.get(["same"]) == [], round_


def test_the_store_notes_each_write_and_forgets_a_stopped_server(tmp_path):
    path = tmp_path / "noted.db"
    key = lite.server_key(path)
    with MilvusCodeStore(str(path), "c", bits=64) as store:
        store.upsert(["a", "b", "c"], np.repeat(CODE, 3, axis=0))
        inserted, ready_ms = lite_clock._state[key]
        assert inserted == 3 and ready_ms <= time.time() * 1000 + 2  # 1 ms + 1 ms of lead
        store.delete(["a"])
        assert lite_clock._state[key][0] == 3  # a delete inserts nothing
    assert key not in lite_clock._state  # the server stopped with its last user


def test_a_call_after_a_write_goes_out_in_a_later_millisecond(tmp_path):
    key = str(tmp_path / "k.db")
    for rows, lead_ms in ((1, 1), (3 * (1 << 18), 3), (3 * (1 << 18) + 1, 4)):
        lite_clock.forget(key)
        before_ms = int(time.time() * 1000)
        lite_clock.after_write(key, rows)
        lite_clock.wait(key)
        # the server's insert stamp is (ms << 18) + rows before; ours must be at least that
        assert time.time() * 1000 >= before_ms + 1 + lead_ms, rows
    lite_clock.forget(key)
    start = time.perf_counter()
    lite_clock.wait(key)  # nothing written: no wait
    assert time.perf_counter() - start < 0.001
