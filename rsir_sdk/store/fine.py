"""The fine code in the store (issue 20): two companion collections beside the main one.

Why companions and not a second vector field: Milvus Lite 2.5.1 holds two ``BINARY_VECTOR``
fields in one collection, but the PyPI 2.3.5 server refuses a second one ("multiple vector
fields is not supported"). One layout serves both, and the main collection keeps its fields
(plus ``fine_hex``, the fine code as text, read with every hit: :mod:`.finerank`), so
collections made before fine codes existed stay valid:

* the **mirror** ``<name>__fine``: the main collection's fields (``pk``, ``id``, label, path,
  metadata, their digests, the place fields) with ``code`` replaced by ``fine``
  (``BINARY_VECTOR(fine_bits)``, HAMMING, BIN_FLAT: filtered searches must be exact) and
  ``code_key``, the row's retrieval code as a key (:func:`code_keys`); a collection with a
  same-scene test (``--fine-code layout``: :class:`~rsir_sdk.codes.SceneTest`) also keeps
  ``fine_hex`` there, before ``code_key``, so the near-duplicate search reads its candidates'
  parts with its hits (Milvus Lite 2.5.1 fails a search that outputs a vector field). The same primary key, so every
  filter the main collection takes works unchanged on the mirror, and a tie group of the
  retrieval code is a filter (``code_key in [...]``) under which the fine field is searched.
* the **codebook** ``<name>__codes``: one row per distinct retrieval code (``pk`` = its hex,
  ``code``), so the codes at exactly the k-th distance are found without reading the items
  that share them (:mod:`.finerank`).

Writes go to the mirror and the codebook first, by upsert (a retried or resumed write never
duplicates a row), then to the main collection: a crash never leaves a main row without its
mirror row. The main collection records ``fine_bits`` in its description.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..errors import CollectionMismatchError
from . import keys
from .schema import PK_CHUNK, add_item_fields, rebuild_steps

if TYPE_CHECKING:  # pragma: no cover
    from .connect import Connection
    from .rows import Columns

log = logging.getLogger(__name__)

#: name suffixes of the companion collections (a user's collection name may not end in them)
MIRROR_SUFFIX = "__fine"
CODEBOOK_SUFFIX = "__codes"
SUFFIXES = (MIRROR_SUFFIX, CODEBOOK_SUFFIX)


def mirror(name: str) -> str:
    """The mirror collection of ``name``: fine codes and the fields filters read."""
    return name + MIRROR_SUFFIX


def codebook(name: str) -> str:
    """The codebook collection of ``name``: one row per distinct retrieval code."""
    return name + CODEBOOK_SUFFIX


def is_companion(name: str) -> bool:
    """Whether ``name`` is a companion collection (hidden from listings)."""
    return name.endswith(SUFFIXES)


def companions(name: str) -> tuple[str, str]:
    """``(mirror, codebook)`` of ``name``."""
    return mirror(name), codebook(name)


def hex_codes(codes: np.ndarray) -> list[str]:
    """Each packed code as lowercase hex (the codebook's key, the mirror's ``code_key``)."""
    return [row.tobytes().hex() for row in np.ascontiguousarray(codes)]


#: retrieval codes up to this many bits are the mirror's ``code_key`` as an INT64 (their bytes,
#: zero-padded, big-endian): Milvus evaluates ``in`` on integers about twice as fast as on
#: strings (100k rows, Milvus Lite: 2.2 ms against 4.5 ms a search; 1.6 ms unfiltered);
#: longer codes are a VARCHAR of their hex
INT_KEY_BITS = 64


def code_keys(codes: np.ndarray, bits: int) -> list[Any]:
    """The mirror's ``code_key`` of each packed retrieval code (an int, or hex past
    :data:`INT_KEY_BITS`)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if bits > INT_KEY_BITS:
        return hex_codes(codes)
    padded = np.zeros((codes.shape[0], 8), np.uint8)
    padded[:, : codes.shape[1]] = codes
    return padded.view(">i8")[:, 0].tolist()


def code_of_key(key: Any, bits: int) -> np.ndarray:
    """The packed retrieval code ``uint8 (bits/8,)`` of one mirror ``code_key`` (the inverse
    of :func:`code_keys`)."""
    if bits > INT_KEY_BITS:
        return np.frombuffer(bytes.fromhex(str(key)), np.uint8)
    return np.array([int(key)], ">i8").view(np.uint8)[: bits // 8]


def code_in(keys_hex: Sequence[str], bits: int) -> str:
    """``code_key in [...]`` of codes given as hex (the codebook's keys), checked: integers,
    or hex strings in double quotes (nothing else reaches the expression)."""
    for key in keys_hex:
        if not key or len(key) != bits // 4 or any(c not in "0123456789abcdef" for c in key):
            raise AssertionError(f"not a code key: {key!r}")
    if bits <= INT_KEY_BITS:
        ints = code_keys(np.frombuffer(bytes.fromhex("".join(keys_hex)), np.uint8)
                         .reshape(len(keys_hex), bits // 8), bits)
        return f"code_key in [{', '.join(str(int(k)) for k in ints)}]"
    return f"code_key in [{', '.join(f'{chr(34)}{k}{chr(34)}' for k in keys_hex)}]"


def mirror_schema(bits: int, fine_bits: int, with_hex: bool = False) -> Any:
    """The pymilvus schema of a mirror: the main fields with ``fine`` for ``code``, then
    ``code_key`` (column writes send the fields in this order). Not a partition key: on the
    2.3.5 server a mirror with ``code_key`` as partition key searched slower and returned wrong
    rows under ``code_key in [...]`` (100k rows, 2026-12-04: the query's own item at rank 1 in
    0 of 60 queries, against 60 of 60 without)."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, description="rsir fine-code mirror")
    add_item_fields(schema, "fine", fine_bits)
    if with_hex:
        schema.add_field("fine_hex", DataType.VARCHAR, max_length=fine_bits // 4)
    if bits <= INT_KEY_BITS:
        schema.add_field("code_key", DataType.INT64)
    else:
        schema.add_field("code_key", DataType.VARCHAR, max_length=bits // 4)
    return schema


def codebook_schema(bits: int) -> Any:
    """The pymilvus schema of a codebook: ``pk`` (the code's hex) and ``code``."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, description="rsir code book")
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=bits // 4)
    schema.add_field("code", DataType.BINARY_VECTOR, dim=bits)
    return schema


def create(conn: "Connection", name: str, bits: int, fine_bits: int,
           with_hex: bool = False) -> None:
    """Create the mirror (``with_hex``: with ``fine_hex``) and the codebook of ``name`` (before
    the main collection). A
    companion left by a run that crashed before the main collection existed is an orphan:
    it is dropped and made afresh."""
    for comp, schema, field in ((mirror(name), mirror_schema(bits, fine_bits, with_hex), "fine"),
                                (codebook(name), codebook_schema(bits), "code")):
        if conn.call("has_collection", comp, what=f"opening collection {comp!r}"):
            conn.call("drop_collection", comp, what=f"dropping orphan collection {comp!r}")
            conn.forget_collection(comp)
        index = conn.client.prepare_index_params()
        index.add_index(field_name=field, index_type="BIN_FLAT", metric_type="HAMMING", params={})
        conn.call("create_collection", comp, schema=schema, index_params=index,
                  consistency_level="Strong", what=f"creating collection {comp!r}")


def mirror_lists(cols: "Columns", start: int, end: int, with_hex: bool = False) -> list[list[Any]]:
    """Rows ``start:end`` of a write as the mirror's column lists (field order of
    :func:`mirror_schema`)."""
    assert cols.fine is not None and cols.place is not None
    main = cols.lists(start, end)
    if not with_hex:
        main = main[:-1]  # without the main collection's fine_hex
    fine = cols.fine[start:end]
    width = fine.shape[1]
    raw = fine.tobytes()
    main[2] = [raw[i : i + width] for i in range(0, len(raw), width)]
    return [*main, code_keys(cols.code[start:end], cols.code.shape[1] * 8)]


def write(conn: "Connection", name: str, cols: "Columns", start: int, end: int,
          with_hex: bool = False) -> None:
    """Upsert rows ``start:end`` into the mirror (``with_hex``: a mirror with ``fine_hex``) and
    their distinct codes into the codebook (always upserts: a retried write replaces, never
    duplicates)."""
    conn.write_columns("upsert", mirror(name), mirror_lists(cols, start, end, with_hex),
                       what=f"writing the fine codes of {name!r}")
    distinct = np.unique(cols.code[start:end], axis=0)
    conn.write_columns("upsert", codebook(name),
                       [hex_codes(distinct), [row.tobytes() for row in distinct]],
                       what=f"writing the code keys of {name!r}")


def delete(conn: "Connection", name: str, pks: Sequence[str]) -> None:
    """Delete the mirror rows of ``pks`` (the codebook keeps codes: a stale code matches no
    row and costs nothing)."""
    comp = mirror(name)
    for start in range(0, len(pks), PK_CHUNK):
        conn.call("delete", comp, filter=keys.in_list("pk", list(pks[start : start + PK_CHUNK])),
                  what=f"delete from {comp!r}")


#: seconds between finding mirror rows without main rows and checking them again
ORPHAN_RECHECK_S = 1.0


def drop_orphan_rows(conn: "Connection", name: str) -> int:
    """Delete mirror rows whose item the main collection does not hold; how many.

    Why: a write sends the mirror rows first (no main row without its mirror row), so a run
    killed, or stopped by a full disk, between the two leaves mirror rows of items never
    stored, and appearance searches returned those ids, with labels and paths, though
    ``get`` and ``count`` did not know them. Called when a Milvus Lite file is opened by its
    first user in a process (one process per file: no other write is in flight); cheap when
    the two counts agree, which is always but after such a crash.
    """
    comp = mirror(name)
    mirrored = count_rows(conn, comp)
    if mirrored <= count_rows(conn, name):
        return 0
    from .search import iter_ids

    def missing(ids: list[str]) -> list[str]:
        stored = ids_held(conn, name, ids)
        return [i for i in ids if i not in stored]

    candidates = missing(list(iter_ids(conn, comp, mirrored)))
    if candidates:  # a write of another store of this process may be between its two parts:
        time.sleep(ORPHAN_RECHECK_S)  # what it writes next is not an orphan
        candidates = missing(candidates)
    orphans = [keys.digest(i) for i in candidates]
    delete(conn, name, orphans)
    if orphans:
        log.info("removed %d fine-code rows of %r whose items were never stored (a run stopped "
                 "between its two writes)", len(orphans), name)
    return len(orphans)


def count_rows(conn: "Connection", coll: str) -> int:
    """Rows of collection ``coll`` (a main collection or a companion), one count query."""
    return int(conn.call("query", coll, filter="", output_fields=["count(*)"], read=True,
                         what=f"count in {coll!r}")[0]["count(*)"])


def ids_held(conn: "Connection", coll: str, ids: Iterable[str]) -> set[str]:
    """The ``ids`` that collection ``coll`` holds a row of, looked up by primary key in
    requests of :data:`PK_CHUNK` keys."""
    order = [keys.digest(i) for i in ids]
    held: set[str] = set()
    for start in range(0, len(order), PK_CHUNK):
        held.update(row["id"] for row in conn.call(
            "query", coll, filter=keys.in_list("pk", order[start : start + PK_CHUNK]),
            output_fields=["id"], read=True, what=f"reading ids of {coll!r}"))
    return held


def drop(conn: "Connection", name: str) -> None:
    """Drop both companions of ``name`` (those that exist)."""
    for comp in companions(name):
        if conn.call("has_collection", comp, what=f"opening collection {comp!r}"):
            conn.call("drop_collection", comp, what=f"dropping collection {comp!r}")
        conn.forget_collection(comp)


def flush(conn: "Connection", name: str) -> None:
    """Flush the companions of ``name`` on a server: called before the main collection is
    prepared, so that their segments are sealed and handed off while it is (flushing and
    waiting for each in turn afterwards took ~50 s on the 2.3.5 server, however few the rows)."""
    for comp in (mirror(name), codebook(name)):
        conn.call("flush", comp, what=f"flushing {comp!r}")


def prepare(conn: "Connection", name: str, timeout: float | None, progress: Any) -> dict[str, Any]:
    """Wait until every row of the companions of ``name`` (flushed by :func:`flush`) is indexed
    and served (BIN_FLAT: nothing to choose or calibrate); seconds taken. Their progress is
    one step, "fine codes", so that the wait is not shown under the main collection's."""
    import time

    from . import server

    t0 = time.perf_counter()
    outer = progress or (lambda p: None)

    def report(p: Any) -> None:
        outer(server.PrepareProgress("fine codes", p.done, p.total))

    report(server.PrepareProgress("fine codes"))
    for comp, field in ((mirror(name), "fine"), (codebook(name), "code")):
        rows = server.count_strong(conn, comp)
        deadline = server._Deadline(comp, timeout)
        server.wait_indexed(conn, comp, rows, deadline, report, field)
        server.wait_serving(conn, comp, rows, deadline, report)
    return {"total_s": time.perf_counter() - t0}


def check_scene_test(store: Any, asked: Any) -> None:
    """Refuse opening a collection whose fine codes are tested otherwise than ``asked`` (a
    bundle's :class:`~rsir_sdk.codes.SceneTest`): it would put other items first than the
    bundle's own evaluation does. ``asked`` None (a store opened without a bundle) takes the
    collection's."""
    if asked is None or store.fine_bits is None or asked == store.scene_test:
        return
    made = ("without a same-scene test (it tests the whole fine code)" if store.scene_test is None
            else "with another same-scene test")
    raise CollectionMismatchError(
        f"collection {store.collection!r} was made {made}, so it would rank otherwise than this "
        f"bundle (a --fine-code layout bundle): " + rebuild_steps(store.collection,
                                                                  store.display_uri))


def check_fine_bits(store: Any, asked: int | None) -> None:
    """Refuse opening a collection that keeps fine codes of another length than ``asked``
    (a collection that keeps none is opened: its writes drop fine codes with a warning)."""
    if asked is not None and store.fine_bits is not None and asked != store.fine_bits:
        raise CollectionMismatchError(
            f"collection {store.collection!r} keeps {store.fine_bits}-bit fine codes, not "
            f"{asked}-bit: use the bundle that filled it, or another collection")
