"""The raster rule is recorded by the collection and honoured by every path: Python, the CLI.

A 4-band 16-bit GeoTIFF archive (B, G, R, NIR like a Sentinel-2 stack) indexed with a
non-default rule must be searched with that same rule whether the query comes through
``Retriever.search`` or ``rsir search``; asking for another rule is refused, not ignored.
"""

import json

import numpy as np
import pytest
from PIL import Image

from rsir_sdk import Retriever
from rsir_sdk.cli import main
from rsir_sdk.errors import CollectionNotFoundError, RasterRuleMismatchError

tifffile = pytest.importorskip("tifffile")

RULE = ["--bands", "3,2,1", "--stretch", "percentile:2,98"]


def make_bgrn_archive(root, sample_images, n=30):
    """Real scenes as 16-bit B, G, R, NIR GeoTIFFs with a different gain per scene."""
    for i, (p, label) in enumerate(sample_images[::200 // n][:n]):
        rgb = np.asarray(Image.open(p).convert("RGB")).astype(np.uint16)
        gain = 8 + (i % 5) * 3  # percentile stretch undoes the gain, the default rule does not
        bgrn = np.dstack([rgb[..., 2] * gain, rgb[..., 1] * gain, rgb[..., 0] * gain,
                          np.full(rgb.shape[:2], 3000, np.uint16)])
        out = root / label / f"{p.stem}.tif"
        out.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out, bgrn, photometric="minisblack", planarconfig="contig")
    return sorted(root.rglob("*.tif"))


def test_cli_and_python_search_a_rule_collection_alike(tmp_path, sample_images, rp_bundle, capsys):
    bundle = rp_bundle[0]
    db = str(tmp_path / "rsir.db")
    files = make_bgrn_archive(tmp_path / "archive", sample_images)
    assert main(["index", str(bundle), str(tmp_path / "archive"), "--uri", db, "--collection",
                 "s2", "--label-from", "parent", "--no-progress", *RULE]) == 0
    capsys.readouterr()
    query = files[7]
    assert main(["search", str(bundle), str(query), "--uri", db, "--collection", "s2",
                 "-k", "10", "--json"]) == 0
    cli_hits = json.loads(capsys.readouterr().out)
    with Retriever(bundle, uri=db, collection="s2") as r:  # no rule given: the recorded one
        assert r.raster_rule.describe() == "bands=3,2,1;stretch=percentile:2,98"
        py_hits = r.search(query, k=10)
        assert r.info()["raster_rule"] == "bands=3,2,1;stretch=percentile:2,98"
    assert [(h["id"], h["distance"]) for h in cli_hits] == [(h.id, h.distance) for h in py_hits]
    assert py_hits[0].distance == 0 and py_hits[0].id.endswith(query.name)
    # the default rule would see other pixels: the same file is far from itself
    with Retriever(bundle, uri=str(tmp_path / "other.db"), collection="x") as plain:
        assert plain.raster_rule.is_default
        code_default = plain.encoder.encode([query])
    with Retriever(bundle, uri=db, collection="s2") as r:
        assert (r.encoder.encode([query]) != code_default).any()
    # asking for another rule than the collection's is refused, from Python and the CLI
    with pytest.raises(RasterRuleMismatchError, match="bands=3,2,1"):
        Retriever(bundle, uri=db, collection="s2", raster_rule="stretch=range")
    assert main(["search", str(bundle), str(query), "--uri", db, "--collection", "s2",
                 "--stretch", "range"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "raster rule" in err[0]


def test_reading_a_collection_that_was_never_written_names_the_others(rp_bundle, tmp_path,
                                                                      sample_images):
    db = str(tmp_path / "rsir.db")
    with Retriever(rp_bundle[0], uri=db, collection="real") as r:
        r.add_images([sample_images[0][0]], ids=["a"])
    with Retriever(rp_bundle[0], uri=db, collection="typo") as r:
        assert r.count() == 0 and r.get(["a"]) == []
        with pytest.raises(CollectionNotFoundError, match="collections there: real"):
            r.search(sample_images[0][0])
    with Retriever(rp_bundle[0], uri=db, collection="real") as r:
        from rsir_sdk import list_collections

        assert list_collections(db) == ["real"]  # the typo left nothing behind


def write_bgrn_geotiffs(root, sample_images, n=12):
    """16-bit B, G, R, NIR GeoTIFFs (EPSG:4326, one degree apart) with a gain per scene:
    their codes differ under the default rule, and each has a known footprint."""
    out = []
    for i, (p, label) in enumerate(sample_images[::200 // n][:n]):
        rgb = np.asarray(Image.open(p).convert("RGB")).astype(np.uint16)
        gain = 8 + (i % 5) * 3
        bgrn = np.dstack([rgb[..., 2] * gain, rgb[..., 1] * gain, rgb[..., 0] * gain,
                          np.full(rgb.shape[:2], 3000, np.uint16)])
        west, north, scale = 10.0 + i, 50.0, 0.01
        tags = [(33550, "d", 3, (scale, scale, 0.0)),
                (33922, "d", 6, (0, 0, 0, west, north, 0)),
                (34735, "H", 12, (1, 1, 0, 2, 1024, 0, 1, 2, 2048, 0, 1, 4326))]
        path = root / label / f"{p.stem}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, bgrn, photometric="minisblack", planarconfig="contig",
                         extratags=tags)
        out.append(path)
    return out


def test_writes_and_edge_codes_keep_the_rule_and_a_geotiffs_place(tmp_path, sample_images,
                                                                 rp_bundle):
    """add_images of a GeoTIFF keeps its footprint as rsir index does (locally, uploaded, and
    encoded on an edge device); an edge RemoteRetriever(bundle=) converts TIFFs with the
    collection's recorded rule, so its codes equal the collection's."""
    from serve_support import WRITE, ServerProcess

    from rsir_sdk.serve.client import RemoteRetriever

    bundle, db = rp_bundle[0], str(tmp_path / "rsir.db")
    files = write_bgrn_geotiffs(tmp_path / "archive", sample_images)
    rule = "bands=3,2,1;stretch=percentile:2,98"
    with Retriever(bundle, uri=db, collection="s2", raster_rule=rule) as r:
        r.index(tmp_path / "archive", label_from="parent")
        r.add_images([files[3]], ids=["added"])
        indexed = r.store.ids_by_path([str(files[3])])[str(files[3])]
        got = {it.id: it for it in r.get([indexed, "added"])}
        local_hits = r.search(files[5], k=5)
    assert got["added"].footprint is not None
    assert got["added"].footprint == got[indexed].footprint
    assert got["added"].footprint[0] == pytest.approx(13.0)
    server = ServerProcess([bundle, "--uri", db, "--collection", "s2"], tmp_path / "serve.log",
                           env={"RSIR_WRITE_TOKEN": WRITE})
    try:
        with RemoteRetriever(server.url, token=WRITE, bundle=bundle) as edge:
            assert edge.encoder.raster_rule.describe() == rule
            edge_hits = edge.search(files[5], k=5)
            edge.add_images([files[4]], ids=["edge"])
            with RemoteRetriever(server.url, token=WRITE) as upload:
                upload.add_images([files[6]], ids=["uploaded"])
            places = {it.id: it.footprint for it in edge.get(["edge", "uploaded"])}
    finally:
        server.stop()
    assert [(h.id, h.distance) for h in edge_hits] == [(h.id, h.distance) for h in local_hits]
    assert edge_hits[0].distance == 0
    assert places["edge"] is not None and places["edge"][0] == pytest.approx(14.0)
    assert places["uploaded"] is not None and places["uploaded"][0] == pytest.approx(16.0)
