"""Bare pymilvus operations that the store is measured and tested against (not for applications).

The store is the one place that talks to Milvus, benchmarks and tests included. Some of them
need Milvus *without* the store: a benchmark's baseline (a bare pymilvus insert, the floor the
store's writes are compared with), a collection in the layout of an older rsir-sdk (which the
store must refuse), an error exactly as pymilvus raises it (which the store must turn into one
clean line). Those live here, in the checkout's ``testing`` package (not in the runtime wheel),
in a file whose name says "store", the one place besides ``rsir_sdk/store`` that imports pymilvus.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

import numpy as np

from rsir_sdk.store import lite
from rsir_sdk.store.orm import no_deprecation_warnings


def insert_columns(uri: str, name: str, columns: Sequence[Sequence[Any]], batch: int) -> None:
    """``pymilvus.Collection.insert`` of ready-made column lists (in the collection's field
    order), ``batch`` rows a request, no checks: the floor for column inserts."""
    from pymilvus import Collection, connections

    alias = f"rsir-baseline-{id(columns)}"
    with no_deprecation_warnings():
        connections.connect(alias=alias, uri=uri)
        try:
            col = Collection(name, using=alias)
            n = len(columns[0])
            for s in range(0, n, batch):
                col.insert([c[s : s + batch] for c in columns])
        finally:
            connections.disconnect(alias)


def insert_int_id_codes(uri: str, name: str, codes: np.ndarray, batch: int = 10_000) -> float:
    """Seconds to insert ``codes`` with int64 ids as row dicts (``MilvusClient.insert``) into a
    fresh two-field collection ``name`` (dropped afterwards): the floor for any insert."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=uri)
    try:
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=codes.shape[1] * 8)
        index = client.prepare_index_params()
        index.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING")
        client.create_collection(name, schema=schema, index_params=index)
        rows = [{"id": i, "code": codes[i].tobytes()} for i in range(len(codes))]
        t0 = time.perf_counter()
        for s in range(0, len(rows), batch):
            client.insert(name, rows[s : s + batch])
        seconds = time.perf_counter() - t0
        client.drop_collection(name)
        return seconds
    finally:
        client.close()


def make_format1_collection(uri: str, name: str) -> None:
    """A Milvus Lite collection as rsir-sdk 0.2 made it (store format 1: the raw id as the
    primary key), holding one item ``a.jpg``; the Lite server is stopped afterwards."""
    from pymilvus import DataType, MilvusClient

    lite.isolate()
    client = MilvusClient(uri=uri)
    schema = MilvusClient.create_schema(
        auto_id=False, description=json.dumps({"rsir": {"format": 1, "bits": 64, "encoder": None}}))
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("code", DataType.BINARY_VECTOR, dim=64)
    schema.add_field("label", DataType.VARCHAR, max_length=512)
    schema.add_field("path", DataType.VARCHAR, max_length=4096)
    schema.add_field("metadata", DataType.JSON)
    index = client.prepare_index_params()
    index.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING", params={})
    client.create_collection(name, schema=schema, index_params=index)
    client.upsert(name, [{"id": "a.jpg", "code": bytes(8), "label": "", "path": "", "metadata": {}}])
    client.close()
    lite.stop_server(uri)


def make_format2_collection(uri: str, name: str) -> None:
    """An empty Milvus Lite collection as rsir-sdk made it before place fields existed (store
    format 2: digest primary key, no lon/lat/time fields); the Lite server is stopped after."""
    from pymilvus import DataType, MilvusClient

    lite.isolate()
    client = MilvusClient(uri=uri)
    try:
        schema = MilvusClient.create_schema(auto_id=False, description=json.dumps(
            {"rsir": {"format": 2, "bits": 64, "encoder": None}}))
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=32)
        schema.add_field("id", DataType.VARCHAR, max_length=4096)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=64)
        for f, n in (("label", 512), ("label_h", 32), ("path", 4096), ("path_h", 32)):
            schema.add_field(f, DataType.VARCHAR, max_length=n)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("meta_h", DataType.JSON)
        index = client.prepare_index_params()
        index.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING")
        client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    finally:
        client.close()
        lite.stop_server(uri)


def rows_matching(uri: str, fields: Sequence[str], rows: Sequence[dict[str, float]],
                  expressions: Sequence[str]) -> list[set[int]]:
    """For each Milvus expression, the positions of ``rows`` (DOUBLE ``fields``) that a bare
    Milvus Lite collection returns for it: the engine's own reading of the expressions."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri)
    try:
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=8)
        for name in fields:
            schema.add_field(name, DataType.DOUBLE)
        index = client.prepare_index_params()
        index.add_index("code", index_type="BIN_FLAT", metric_type="HAMMING")
        client.create_collection("rows", schema=schema, index_params=index)
        client.insert("rows", [{"id": i, "code": b"\x00", **r} for i, r in enumerate(rows)])
        return [{g["id"] for g in client.query("rows", filter=e, output_fields=["id"], limit=16384)}
                for e in expressions]
    finally:
        client.close()


def milvus_error(code: int, message: str) -> Exception:
    """A ``pymilvus.exceptions.MilvusException`` as pymilvus raises it."""
    from pymilvus.exceptions import MilvusException

    return MilvusException(code, message)


def collection_names(store: Any) -> list[str]:
    """Every collection at a store's uri as Milvus lists it, the fine-code companions included
    (``Connection.names`` hides them): what a test of listing and dropping compares with."""
    return sorted(store._conn.call("list_collections", what="listing collections"))


def row_count(store: Any, name: str) -> int:
    """Rows of collection ``name`` at a store's uri (a companion too), read Strong."""
    kwargs = {} if store.is_lite else {"consistency_level": "Strong"}
    res = store._conn.call("query", name, filter="", output_fields=["count(*)"],
                           what=f"count in {name!r}", **kwargs)
    return int(res[0]["count(*)"])
