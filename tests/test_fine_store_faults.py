"""Fine-code companions stay consistent when writes race or fail half way (issue 20).

Real Milvus Lite files. The inconsistent states are made as a failed call would leave them
(rows removed from one collection with bare pymilvus), then the store's own verbs must repair
or refuse, never return a ghost or wipe another writer's fine codes.
"""

from __future__ import annotations

import numpy as np
import pytest

from rsir_sdk.errors import CollectionMismatchError
from rsir_sdk.store import MilvusCodeStore
from rsir_sdk.store.keys import digest, in_list
from testing.store_baseline import row_count


def _items(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"img/{i:03d}.tif" for i in range(n)]
    return ids, rng.integers(0, 256, (n, 8), np.uint8), rng.integers(0, 256, (n, 16), np.uint8)


def test_a_delete_retried_after_a_half_failed_one_removes_the_mirror_rows(tmp_path):
    ids, codes, fine = _items(20)
    with MilvusCodeStore(str(tmp_path / "d.db"), "c", bits=64, fine_bits=128) as store:
        store.upsert(ids, codes, fine=fine)
        # what a delete that failed after the main rows went leaves: mirror rows of x0 only
        store._conn.call("delete", "c", filter=in_list("pk", [digest(ids[0])]), what="test")
        assert row_count(store, "c__fine") == 20 and store.count() == 19
        assert store.delete([ids[0]]) == 0  # not in the main collection any more ...
        assert row_count(store, "c__fine") == 19  # ... but its mirror row is gone too
        hits = store.search(None, k=3, fine=fine[:1], mode="appearance")[0]
        assert ids[0] not in [h.id for h in hits]
        assert store.delete(ids[1:3]) == 2 and row_count(store, "c__fine") == 17


def test_a_store_opened_before_another_created_the_collection_keeps_its_fine_codes(tmp_path):
    db = str(tmp_path / "race.db")
    ids, codes, fine = _items(30)
    early = MilvusCodeStore(db, "c", bits=64, fine_bits=128)  # opened: nothing exists yet
    late_without_fine = MilvusCodeStore(db, "c", bits=64)
    try:
        assert not early.exists
        with MilvusCodeStore(db, "c", bits=64, fine_bits=128) as other:
            other.upsert(ids[:20], codes[:20], fine=fine[:20])
        early.upsert(ids[20:], codes[20:], fine=fine[20:])  # must not make the collection again
        assert early.count() == 30 and row_count(early, "c__fine") == 30
        for i in (0, 25):  # the other writer's items and this one's, all by appearance
            hit = early.search(None, k=1, fine=fine[i : i + 1], mode="appearance")[0][0]
            assert hit.id == ids[i] and hit.fine_distance == 0
        with pytest.raises(CollectionMismatchError, match="created by another program"):
            late_without_fine.upsert(["new"], codes[:1])
        assert early.count() == 30
    finally:
        early.close()
        late_without_fine.close()


def test_mirror_rows_of_items_never_stored_are_removed_when_the_file_is_opened(tmp_path):
    """A run killed (or stopped by a full disk) between a write's mirror rows and its main
    rows left fine codes of items never stored: appearance searches returned those ids with
    labels and paths while get() and count() did not know them, until the index was re-run."""
    db = str(tmp_path / "ghost.db")
    ids, codes, fine = _items(12)
    with MilvusCodeStore(db, "c", bits=64, fine_bits=128) as store:
        store.upsert(ids, codes, labels=["x"] * 12, fine=fine)
        # the state such a run leaves: the last two items' mirror rows, no main rows
        store._conn.call("delete", "c", filter=in_list("pk", [digest(i) for i in ids[10:]]),
                         what="test")
        assert row_count(store, "c__fine") == 12 and store.count() == 10
    with MilvusCodeStore(db, "c") as store:  # the next program to open the file
        assert row_count(store, "c__fine") == 10 and store.count() == 10
        hits = store.search(None, k=20, fine=fine[10:11], mode="appearance")[0]
        assert ids[10] not in [h.id for h in hits] and len(hits) == 10
        assert store.get(ids[10:]) == []
        hit = store.search(None, k=1, fine=fine[3:4], mode="appearance")[0][0]
        assert hit.id == ids[3] and hit.fine_distance == 0       # the stored ones unchanged


@pytest.mark.parametrize("where", ["lite", pytest.param("server", marks=pytest.mark.server)])
def test_items_that_lost_their_fine_code_row_are_written_again_by_a_rerun(
        where, tmp_path, request, caplog, sample_dir):
    """A server restart lost rows not yet flushed, of one collection and not the other: items
    without a fine-code row vanished from tie-ranked and appearance searches, and ``rsir
    index`` run again skipped them as present. Now they are not present (one warning) and
    the re-run writes them again with upserts (an insert stored their main rows twice)."""
    import sys

    sys.path.insert(0, str(request.config.rootpath / "tests"))
    from fine_serve_support import build_fine_bundle

    from rsir_sdk import Retriever

    bundle = build_fine_bundle(tmp_path / "fine-rp64")
    uri = str(tmp_path / "g.db") if where == "lite" else request.getfixturevalue("server_uri")
    name = f"gap_{where}"
    with Retriever(bundle, uri=uri, collection=name) as r:
        r.store.drop()
        first = r.index(sample_dir, label_from="parent")
        ids = sorted(r.store.iter_ids())
        lost = [digest(i) for i in ids[5:12]]
        r.store._conn.call("delete", f"{name}__fine", filter=in_list("pk", lost), what="test")
    with Retriever(bundle, uri=uri, collection=name) as r:
        with caplog.at_level("WARNING", logger="rsir_sdk.store"):
            again = r.index(sample_dir, label_from="parent")
        assert "7 items without their fine-code row" in caplog.text
        assert again.indexed == 7 and again.skipped == first.indexed - 7
        assert r.count() == first.indexed == row_count(r.store, f"{name}__fine")
        hit = r.search(sample_dir / ids[6], k=1, mode="appearance")[0]
        assert hit.id == ids[6] and hit.fine_distance == 0
        caplog.clear()
        with caplog.at_level("WARNING", logger="rsir_sdk.store"):
            assert r.index(sample_dir, label_from="parent").indexed == 0   # nothing left to do
        assert "without their fine-code row" not in caplog.text
        r.store.drop()
