"""The codes-only path: an edge box encodes with onnxruntime, numpy and Pillow alone and sends bytes;
the server searches them with ``Retriever.search_codes``.

The edge side runs in a subprocess where torch, onnx, the training code, pymilvus, httpx and tqdm
cannot be imported, so the test proves the smallest runtime: onnxruntime + numpy + Pillow.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rsir_sdk import Encoder, Retriever
from rsir_sdk.errors import CodeLengthError

BLOCKED = ("torch", "torchvision", "onnx", "export", "rsir_train", "pymilvus", "milvus_lite", "httpx", "tqdm",
           "grpc", "pandas")

EDGE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        # an edge box: only onnxruntime, numpy and Pillow are installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed on this edge box")

    sys.meta_path.insert(0, Block())
    from rsir_sdk import Encoder
    enc = Encoder(sys.argv[2], threads=1)
    calls, run = [], enc.session.run
    enc.session.run = lambda names, feed, *a: (calls.append(list(names)), run(names, feed, *a))[1]
    codes = enc.encode(sys.argv[3:])          # uint8 (n, bits/8), packed: ready to send
    messages = [row.tobytes().hex() for row in codes]
    third_party = sorted({m.split(".")[0] for m in sys.modules} & {
        "onnxruntime", "numpy", "PIL", *BLOCKED})
    print(json.dumps({"messages": messages, "bits": enc.bits, "outputs_requested": calls,
                      "third_party": third_party}))
    """
)


def run_edge(bundle, files):
    out = subprocess.run(
        [sys.executable, "-c", EDGE, ",".join(BLOCKED), str(bundle), *map(str, files)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_edge_sends_bytes_server_searches_them(rp_bundle, sample_images, db_uri):
    paths = [p for p, _ in sample_images]
    ids = [f"{l}/{p.name}" for p, l in sample_images]
    queries = paths[3:200:40]
    edge = run_edge(rp_bundle[0], queries)
    assert edge["third_party"] == ["PIL", "numpy", "onnxruntime"]
    assert edge["outputs_requested"] == [["codes"]]  # the embedding is never computed out
    messages = [bytes.fromhex(h) for h in edge["messages"]]
    assert all(len(m) == edge["bits"] // 8 == 8 for m in messages)

    with Retriever(rp_bundle[0], uri=db_uri, collection="archive") as server:
        server.add_images(paths, ids=ids)
        expected = server.search_batch(queries, k=10)
        # one code as raw bytes, as it arrives from the wire
        for msg, exp in zip(messages, expected):
            assert server.search_codes(msg, k=10) == [exp]
        # many codes: concatenated bytes turned into an array, or a list of bytes
        batch = np.frombuffer(b"".join(messages), dtype=np.uint8).reshape(len(messages), -1)
        assert server.search_codes(batch, k=10) == expected
        assert server.search_codes(messages, k=10) == expected
        assert expected[0][0].id == ids[3] and expected[0][0].distance == 0
        # a message of the wrong length (another encoder's 128-bit code) is refused
        with pytest.raises(CodeLengthError, match="64 bits"):
            server.search_codes(messages[0] * 2, k=10)


def test_edge_codes_equal_the_servers(rp_bundle, sample_images):
    files = [p for p, _ in sample_images[:6]]
    edge = run_edge(rp_bundle[0], files)
    server_codes = Encoder(rp_bundle[0]).encode(files)
    assert [bytes.fromhex(h) for h in edge["messages"]] == [r.tobytes() for r in server_codes]


def test_int8_encoder_runs_on_the_edge(rp_bundle, sample_dir, sample_images, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("rsir_train")
    from rsir_train.quantize import quantize_bundle

    out = tmp_path / "rp64-int8"
    quantize_bundle(rp_bundle[0], sample_dir, out, count=32, check=16,
                    quantize_hash_layer=True, min_agreement=0.5)
    files = [p for p, _ in sample_images[:6]]
    edge = run_edge(out, files)
    assert [bytes.fromhex(h) for h in edge["messages"]] == [
        r.tobytes() for r in Encoder(out).encode(files)
    ]
