"""Archive ingestion: listing folders and CSV manifests, bad files reported, retry, idempotency."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsir_sdk import Encoder, MilvusCodeStore, Retriever
from rsir_sdk.archive import open_archive, read_manifest, scan_folder
from rsir_sdk.cli import main
from rsir_sdk.errors import ArchiveError
from rsir_sdk.failures import FailureReport, read_report

tifffile = pytest.importorskip("tifffile")  # the geo extra; the dev extra installs it

GEOTAGS = [(33550, "d", 3, (10.0, 10.0, 0.0)), (33922, "d", 6, (0, 0, 0, 500000.0, 5000000.0, 0)),
           (34735, "H", 8, (1, 1, 0, 1, 3072, 0, 1, 32633))]


def make_odd_archive(root: Path, sample_images) -> dict[str, list[str]]:
    """Real scenes, odd but readable rasters, and broken files; returns the ids of each kind."""
    good, bad = [], []
    for p, label in sample_images[::10]:  # 20 JPEGs, 2 per class
        dst = root / label / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
        good.append(f"{label}/{p.name}")
    rgb = np.asarray(Image.open(sample_images[3][0]).convert("RGB"))
    odd = root / "odd"
    odd.mkdir()
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(odd / "gray16.png")
    rgba = Image.fromarray(rgb).convert("RGBA"); rgba.putalpha(100); rgba.save(odd / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(odd / "palette.png")
    bgrn = np.concatenate([rgb[..., ::-1].astype(np.uint16) * 12,
                           np.full(rgb.shape[:2] + (1,), 4000, np.uint16)], axis=2)
    tifffile.imwrite(odd / "s2_bgrn.tif", bgrn, photometric="minisblack", planarconfig="contig",
                     extratags=GEOTAGS)
    tifffile.imwrite(odd / "float01.tif", rgb.astype(np.float32) / 255, photometric="rgb")
    tifffile.imwrite(odd / "bands13.tif", np.dstack([rgb[..., i % 3] for i in range(13)]),
                     photometric="minisblack", planarconfig="contig")
    good += [f"odd/{n}" for n in ("bands13.tif", "float01.tif", "gray16.png", "palette.png",
                                  "rgba.png", "s2_bgrn.tif")]
    broken = root / "broken"
    broken.mkdir()
    jpeg = sample_images[0][0].read_bytes()
    (broken / "corrupt.jpg").write_bytes(jpeg[:400])
    (broken / "zero.jpg").write_bytes(b"")
    (broken / "notimage.jpg").write_text("this is a text file with a .jpg name\n")
    tifffile.imwrite(broken / "dem.tif", rgb[..., 0].astype(np.float32) * 10 - 50,
                     photometric="minisblack")
    Image.new("1", (12000, 10000)).save(broken / "huge.png")
    (broken / "trunc.tif").write_bytes((odd / "s2_bgrn.tif").read_bytes()[:500])
    bad += [f"broken/{n}" for n in ("corrupt.jpg", "dem.tif", "huge.png", "notimage.jpg",
                                    "trunc.tif", "zero.jpg")]
    (root / "notes.txt").write_text("not an image, ignored by extension")
    (root / ".hidden.jpg").write_bytes(jpeg)
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(jpeg)
    return {"good": sorted(good), "bad": sorted(bad)}


@pytest.fixture
def odd_archive(tmp_path, sample_images):
    root = tmp_path / "archive"
    kinds = make_odd_archive(root, sample_images)
    return root, kinds


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def stored(db: str, collection: str) -> dict:
    with MilvusCodeStore(db, collection, create=False) as s:
        ids = list(s.iter_ids())  # one per stored row
        assert len(ids) == len(set(ids)) == s.count()
        return {it.id: it for it in s.get(ids)}


def test_listing_folders(odd_archive, caplog):
    root, kinds = odd_archive
    with caplog.at_level("INFO", logger="rsir_sdk.archive"):
        listing = scan_folder(root, label_from="parent")
    ids = [it.id for it in listing.items]
    assert ids == sorted(ids) and set(ids) == set(kinds["good"] + kinds["bad"])
    assert listing.ignored == ["notes.txt"] and not listing.invalid
    # the ignored file is named (a training run said "1 file ... ignored" and not which)
    assert "is not an image by extension and was ignored: notes.txt" in caplog.text
    assert all(".hidden" not in i and ".cache" not in i for i in ids)
    by_id = {it.id: it for it in listing.items}
    assert by_id["odd/rgba.png"].label == "odd" and by_id["odd/rgba.png"].file == root / "odd/rgba.png"
    nested = root / "Forest" / "2020" / "x.jpg"
    nested.parent.mkdir()
    shutil.copyfile(root / kinds["good"][0], nested)
    top = {it.id: it.label for it in scan_folder(root, label_from="top").items}
    parent = {it.id: it.label for it in scan_folder(root, label_from="parent").items}
    assert top["Forest/2020/x.jpg"] == "Forest" and parent["Forest/2020/x.jpg"] == "2020"
    assert {it.label for it in scan_folder(root).items} == {""}
    assert [it.id for it in scan_folder(root, extensions=["tif"]).items] == [
        "broken/dem.tif", "broken/trunc.tif", "odd/bands13.tif", "odd/float01.tif", "odd/s2_bgrn.tif"]
    for bad, msg in [(root / "missing", "does not exist"), (root / "notes.txt", "not a folder")]:
        with pytest.raises(ArchiveError, match=msg):
            open_archive(bad)
    with pytest.raises(ArchiveError, match="label_from"):
        scan_folder(root, label_from="grandparent")


def test_listing_csv_manifests(tmp_path, sample_images):
    rows = [["path", "id", "label", "year", "cloud", "note"]]
    for i, (p, label) in enumerate(sample_images[:6]):
        rows.append([f"./{p.parent.name}/{p.name}", f"scene-{i}", label, 2018 + i, f"0.{i}5", "x,y"])
    rows.append(["", "scene-9", "Forest", "", "", ""])  # empty path
    rows.append([f"{sample_images[0][0].parent.name}/{sample_images[0][0].name}", "scene-0", "", "", "", ""])
    rows.append(["Forest/none.jpg", "", "Forest", "", "", ""])  # empty id
    rows.append(["https://example.org/q.jpg", "scene-7", "Forest", "", "", ""])  # a URL
    rows.append(["C:/data/w.jpg", "scene-8", "Forest", "", "", ""])  # a Windows path, not a URL
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    listing = read_manifest(manifest, root=sample_images[0][0].parents[1])
    assert [it.id for it in listing.items][:6] == [f"scene-{i}" for i in range(6)]
    first = listing.items[0]
    assert first.path == f"{sample_images[0][0].parent.name}/{sample_images[0][0].name}"
    assert first.file == sample_images[0][0] and first.label == sample_images[0][1]
    assert first.metadata == {"year": 2018, "cloud": 0.05, "note": "x,y"}
    reasons = sorted(f.reason for f in listing.invalid)
    assert len(reasons) == 4
    assert [f.path for f in listing.invalid if "a URL" in f.reason] == ["https://example.org/q.jpg"]
    assert "C:/data/w.jpg" in [it.path for it in listing.items] + [f.path for f in listing.invalid]
    assert any("duplicate id (first on line 2)" in r for r in reasons)
    assert any("empty path" in r for r in reasons) and any("empty id" in r for r in reasons)
    with pytest.raises(ArchiveError, match="no 'file' column"):
        read_manifest(manifest, path_column="file")
    with pytest.raises(ArchiveError, match="no 'klass' column"):
        read_manifest(manifest, label_column="klass")
    # without an id column the path is the id
    plain = tmp_path / "plain.csv"
    plain.write_text("path\nForest/a.jpg\nForest/b.jpg\n")
    assert [it.id for it in read_manifest(plain).items] == ["Forest/a.jpg", "Forest/b.jpg"]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_odd_archive_every_good_image_indexed_every_bad_one_reported(
    odd_archive, rp_bundle, db_uri, tmp_path, capsys
):
    root, kinds = odd_archive
    report = tmp_path / "failed.csv"
    code, out, err = run(capsys, "index", rp_bundle[0], root, "--uri", db_uri, "--collection", "odd",
                         "--label-from", "parent", "--report", report, "--no-progress", "--json",
                         "--workers", 2, "--batch-size", 8, "--upsert-batch", 10)
    assert code == 3, err
    summary = json.loads(out)
    assert summary["indexed"] == len(kinds["good"]) and summary["failed"] == len(kinds["bad"])
    assert summary["skipped"] == 0 and summary["ignored"] == 1
    assert summary["total"] == len(kinds["good"]) + len(kinds["bad"])
    rows = {r.id: r for r in read_report(report)}
    assert sorted(rows) == kinds["bad"]
    expected = {"broken/corrupt.jpg": "corrupt", "broken/zero.jpg": "empty",
                "broken/notimage.jpg": "supported format", "broken/dem.tif": "stretch",
                "broken/huge.png": "pixel limit", "broken/trunc.tif": "TIFF"}
    for i, word in expected.items():
        assert word in rows[i].reason and rows[i].stage == "read", rows[i]
        assert rows[i].path == str(root / i)
    # the codes stored are the encoder's codes of the same files
    items = stored(db_uri, "odd")
    assert sorted(items) == kinds["good"]
    enc = Encoder(rp_bundle[0])
    want = enc.encode([root / i for i in kinds["good"]])
    got = np.stack([items[i].code for i in kinds["good"]])
    assert (got == want).all()
    geo = items["odd/s2_bgrn.tif"].metadata
    assert geo["crs"] == "EPSG:32633" and geo["bounds"] == [500000.0, 4999360.0, 500640.0, 5000000.0]
    assert abs(geo["lonlat"][0] - 15.004) < 0.001
    with MilvusCodeStore(db_uri, "odd", create=False) as s:  # an area filter on the lon/lat
        near = s.search(want[:1], k=50, filter='metadata["lonlat"][0] > 15 and metadata["lonlat"][1] < 46')
    assert [h.id for h in near[0]] == ["odd/s2_bgrn.tif"]
    assert items["odd/rgba.png"].label == "odd"
    assert items["odd/rgba.png"].path == str((root / "odd/rgba.png").absolute())

    # retry the report after fixing two files: only the reported ids are looked at
    shutil.copyfile(root / kinds["good"][0], root / "broken/zero.jpg")
    (root / "broken/huge.png").unlink()
    Image.open(root / kinds["good"][1]).save(root / "broken/huge.png")
    code, out, err = run(capsys, "index", rp_bundle[0], root, "--uri", db_uri, "--collection", "odd",
                         "--label-from", "parent", "--retry-failed", report, "--report", report,
                         "--no-progress", "--json")
    summary = json.loads(out)
    assert code == 3 and summary["total"] == 6 and summary["indexed"] == 2 and summary["failed"] == 4
    assert sorted(r.id for r in read_report(report)) == sorted(set(kinds["bad"]) - {"broken/zero.jpg", "broken/huge.png"})

    # a plain re-run skips everything present; with no failure left the report goes away
    for name in ("corrupt.jpg", "notimage.jpg", "dem.tif", "trunc.tif"):
        (root / "broken" / name).unlink()
    code, out, err = run(capsys, "index", rp_bundle[0], root, "--uri", db_uri, "--collection", "odd",
                         "--label-from", "parent", "--report", report, "--no-progress")
    assert code == 0, err
    assert f"skipped  {len(kinds['good']) + 2:>9} already present" in out
    assert not report.exists()
    assert len(stored(db_uri, "odd")) == len(kinds["good"]) + 2


def test_rerun_is_idempotent_force_reencodes_and_rules_must_match(
    tmp_path, sample_images, rp_bundle, db_uri, capsys
):
    root = tmp_path / "a"
    for p, label in sample_images[:12]:
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, root / label / p.name)
    args = ["index", rp_bundle[0], root, "--uri", db_uri, "--collection", "c", "--no-progress", "--json"]
    code, out, _ = run(capsys, *args)
    assert code == 0 and json.loads(out)["indexed"] == 12
    before = stored(db_uri, "c")
    code, out, _ = run(capsys, *args)
    assert code == 0 and json.loads(out)["skipped"] == 12 and json.loads(out)["indexed"] == 0
    code, out, _ = run(capsys, *args, "--force")
    assert code == 0 and json.loads(out)["indexed"] == 12 and json.loads(out)["count"] == 12
    after = stored(db_uri, "c")
    assert all((after[i].code == before[i].code).all() for i in before)
    # a collection filled by one raster rule refuses another
    code, out, err = run(capsys, *args, "--stretch", "percentile")
    assert code == 1 and "raster rule" in err and "stretch=range" in err
    code, out, err = run(capsys, *args, "--stretch", "sideways")
    assert code == 2 and "unknown stretch" in err
    # a new collection records the rule, and later runs reuse it without being told
    code, out, _ = run(capsys, "index", rp_bundle[0], root, "--uri", db_uri, "--collection", "p",
                       "--no-progress", "--json", "--stretch", "percentile:1,99", "--bands", "3,2,1")
    assert code == 0 and json.loads(out)["raster_rule"] == "bands=3,2,1;stretch=percentile:1,99"
    code, out, _ = run(capsys, "index", rp_bundle[0], root, "--uri", db_uri, "--collection", "p",
                       "--no-progress", "--json")
    assert code == 0 and json.loads(out)["raster_rule"] == "bands=3,2,1;stretch=percentile:1,99"


def test_csv_manifest_with_metadata_filters(tmp_path, sample_images, rp_bundle, db_uri, capsys):
    root = sample_images[0][0].parents[1]
    manifest = tmp_path / "scenes.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "scene_id", "class", "year", "sensor"])
        for i, (p, label) in enumerate(sample_images[:40]):
            w.writerow([f"{p.parent.name}/{p.name}", f"S2-{i:04d}", label, 2015 + i % 10, "S2A"])
        w.writerow(["Forest/missing.jpg", "S2-9999", "Forest", 2020, "S2A"])
        w.writerow(["Forest/other.jpg", "S2-0003", "Forest", 2020, "S2A"])  # duplicate id
    code, out, err = run(capsys, "index", rp_bundle[0], manifest, "--root", root, "--uri", db_uri,
                         "--collection", "m", "--path-column", "file", "--id-column", "scene_id",
                         "--label-column", "class", "--relative-paths", "--no-progress", "--json",
                         "--report", tmp_path / "r.csv")
    summary = json.loads(out)
    assert code == 3 and summary["indexed"] == 40 and summary["failed"] == 2
    reasons = {f["id"]: f["reason"] for f in summary["failures"]}
    assert "no such file" in reasons["S2-9999"] and "duplicate id" in reasons["S2-0003"]
    with MilvusCodeStore(db_uri, "m", create=False) as s:
        item = s.get(["S2-0005"])[0]
        assert item.path == f"{sample_images[5][0].parent.name}/{sample_images[5][0].name}"
        assert item.label == sample_images[5][1] and item.metadata == {"year": 2020, "sensor": "S2A"}
        recent = s.search(item.code[None], k=100, filter='metadata["year"] >= 2022')[0]
    assert len(recent) == 12 and all(h.metadata["year"] >= 2022 for h in recent)


def test_folder_links_are_followed_once_and_loops_skipped_with_a_warning(
        tmp_path, sample_images, caplog):
    # an archive assembled from links to folders on other disks is listed whole; a link to a
    # folder already listed, inside the archive or holding it (a loop) is skipped, said so
    jpeg = Path(sample_images[0][0]).read_bytes()
    elsewhere, root = tmp_path / "disk2" / "scenes", tmp_path / "archive"
    for folder, name in ((elsewhere, "far.jpg"), (root / "a", "near.jpg"),
                         (root / "b" / "sub", "b.jpg")):
        folder.mkdir(parents=True)
        (folder / name).write_bytes(jpeg)
    (root / "a" / "linked").symlink_to(elsewhere)
    (root / "b" / "again").symlink_to(elsewhere)
    (root / "a" / "up").symlink_to(root)
    (root / "a" / "deep").symlink_to(root / "b" / "sub")
    (root / "a" / "peer").symlink_to(root / "b")
    with caplog.at_level("WARNING", logger="rsir_sdk.archive"):
        listing = scan_folder(root, label_from="parent")
    assert sorted(it.id for it in listing.items) == ["a/linked/far.jpg", "a/near.jpg",
                                                     "b/sub/b.jpg"]
    assert {it.id: it.label for it in listing.items}["a/linked/far.jpg"] == "linked"
    warned = " ".join(r.getMessage() for r in caplog.records)
    for link, why in (("a/up", "holds the archive"), ("a/deep", "inside the archive"),
                      ("a/peer", "already listed"), ("b/again", "already listed")):
        assert f"{link}: it leads to" in warned and why in warned
    assert "directly in" not in warned
    (root / "loose.jpg").write_bytes(jpeg)  # no folder to take a label from: said so
    caplog.clear()
    with caplog.at_level("WARNING", logger="rsir_sdk.archive"):
        assert {it.id: it.label for it in scan_folder(root, label_from="top").items}["loose.jpg"] == ""
    assert "1 images lie directly in" in caplog.text and "loose.jpg" in caplog.text


def test_the_archive_may_follow_the_options(rp_bundle, sample_images, db_uri, capsys, tmp_path):
    root = tmp_path / "arch"
    root.mkdir()
    shutil.copyfile(sample_images[0][0], root / "one.jpg")
    code, out, err = run(capsys, "index", rp_bundle[0], "--uri", db_uri, "--collection", "late",
                         "--no-progress", root)
    assert code == 0 and "indexed" in out and "1 images" in out, err
    code, _, err = run(capsys, "index", rp_bundle[0], "--uri", db_uri, "--uir", "x", root)
    assert code == 2 and "unrecognized arguments: --uir x" in err


def test_images_already_stored_under_other_ids_are_counted(rp_bundle, sample_images, db_uri,
                                                          capsys, tmp_path):
    """Ids are paths relative to the archive given: a sub-folder of an archive already indexed
    stores its images a second time under shorter ids (each then comes back twice in searches).
    They are indexed as asked, and the summary says how many and gives an example."""
    root = tmp_path / "arch"
    for path, label in sample_images[:6] + sample_images[-4:]:
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / label / path.name)
    first_label = sample_images[0][1]
    code, out, err = run(capsys, "index", rp_bundle[0], root, "--uri", db_uri, "--collection",
                         "twice", "--label-from", "parent", "--no-progress")
    assert code == 0 and "twice " not in out.replace("into twice", ""), out
    code, out, err = run(capsys, "index", rp_bundle[0], root / first_label, "--uri", db_uri,
                         "--collection", "twice", "--no-progress", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["indexed"] == 6 and summary["stored_elsewhere"] == 6, summary
    new, old = summary["stored_elsewhere_examples"][0]
    assert old == f"{first_label}/{new}"
    code, out, err = run(capsys, "index", rp_bundle[0], root / first_label, "--uri", db_uri,
                         "--collection", "twice", "--no-progress")   # now present by id: skipped
    assert code == 0 and "skipped          6" in out and "under other ids" not in out, out
    with Retriever(rp_bundle[0], uri=db_uri, collection="twice") as r:   # the Python call
        s = r.index(root / sample_images[-1][1])
        assert s.indexed == 4 and s.stored_elsewhere == 4
        assert r.count() == 10 + 6 + 4
    code, out, err = run(capsys, "index", rp_bundle[0], root / first_label, "--uri", db_uri,
                         "--collection", "fresh", "--no-progress")
    assert code == 0 and "under other ids" not in out, out      # another collection: no word


def test_usage_errors(rp_bundle, db_uri, capsys, tmp_path):
    code, _, err = run(capsys, "index", rp_bundle[0], "--uri", db_uri)
    assert code == 2 and "ARCHIVE" in err
    code, _, err = run(capsys, "index", rp_bundle[0], tmp_path, "--learned", "--uri", db_uri)
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "index", rp_bundle[0], tmp_path / "nope", "--uri", db_uri)
    assert code == 1 and "does not exist" in err
    code, _, err = run(capsys, "index", rp_bundle[0], tmp_path, "--uri", db_uri,
                       "--retry-failed", tmp_path / "none.csv")
    assert code == 2 and "--retry-failed" in err and "no such report file" in err
    code, _, err = run(capsys, "index", rp_bundle[0], tmp_path, "--uri", "127.0.0.1:19530")
    assert code == 1 and "(a Milvus server? give http://127.0.0.1:19530)" in err


def test_a_broken_link_is_reported_as_one(tmp_path, rp_bundle, sample_images):
    root = tmp_path / "arch"
    root.mkdir()
    shutil.copyfile(sample_images[0][0], root / "ok.jpg")
    (root / "gone.jpg").symlink_to(tmp_path / "moved-away.jpg")
    with Retriever(rp_bundle[0], uri=str(tmp_path / "l.db"), collection="l") as r:
        s = r.index(root)
    assert s.indexed == 1 and [f.id for f in s.failed] == ["gone.jpg"]
    assert s.failed[0].reason == f"a broken link (to {tmp_path / 'moved-away.jpg'})"


def test_failure_report_file(tmp_path):
    from rsir_sdk.failures import Failure

    path = tmp_path / "sub" / "rep.csv"
    with FailureReport(path) as rep:
        rep.add(Failure("a,b", "/x/a,b.jpg", "read", 'quote " and, comma'))
    assert read_report(path) == [Failure("a,b", "/x/a,b.jpg", "read", 'quote " and, comma')]
    with FailureReport(path):
        pass
    assert not path.exists()


def test_a_run_with_nothing_to_do_keeps_the_earlier_failure_report(rp_bundle, sample_images,
                                                                   db_uri, tmp_path, capsys):
    """A report lists the images an earlier run could not index. A run that lists nothing (an
    empty folder: a typo, an unmounted disk) or a --retry-failed whose images are gone
    deleted it; both keep it now, and the retry says there is nothing to retry, exit 0."""
    root = tmp_path / "arch" / "ok"
    root.mkdir(parents=True)
    for path, _ in sample_images[:3]:
        shutil.copyfile(path, root / path.name)
    bad = tmp_path / "arch" / "bad"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    report = tmp_path / "failed.csv"
    args = ["--uri", db_uri, "--collection", "keep", "--no-progress", "--report", report]
    code, out, _ = run(capsys, "index", rp_bundle[0], tmp_path / "arch", *args)
    assert code == 3 and [f.id for f in read_report(report)] == ["bad/zero.jpg"]
    before = report.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "index", rp_bundle[0], empty, *args)
    assert code == 2 and "holds no image" in err and report.read_bytes() == before
    (bad / "zero.jpg").unlink()                                  # the user removed the file
    code, out, err = run(capsys, "index", rp_bundle[0], tmp_path / "arch", *args,
                         "--retry-failed", report)
    assert code == 0 and "nothing to retry (the report is kept)" in err, (out, err)
    assert report.read_bytes() == before
    (bad / "zero.jpg").write_bytes(Path(sample_images[5][0]).read_bytes())   # now readable
    code, out, err = run(capsys, "index", rp_bundle[0], tmp_path / "arch", *args,
                         "--retry-failed", report)
    assert code == 0 and "indexed          1" in out and not report.exists(), (out, err)


def test_ingest_options_refuse_bad_values_in_one_line_and_write_nothing(
        rp_bundle, sample_dir, db_uri, tmp_path, capsys):
    """Options are a checked value: a bad one (made directly, through ``index``'s keywords, or
    through ``rsir index``) is one InvalidInputError line, before anything is listed or written."""
    from rsir_sdk import Retriever
    from rsir_sdk.errors import InvalidInputError
    from rsir_sdk.options import IngestOptions, RayOptions

    bad = [dict(workers=0), dict(batch_size=True), dict(upsert_batch=-1), dict(max_pixels=0),
           dict(flush_seconds=0), dict(engine="spark"), dict(prepare="sometimes"),
           dict(label_from="grandparent"), dict(extensions=".jpg"), dict(only_ids="a/b.jpg"),
           dict(skip_existing="no"), dict(bulk_dir=str(tmp_path), skip_existing=False),
           dict(ray={"threads_per_worker": 0}), dict(ray={"gpu": 1})]
    for kw in bad:
        with pytest.raises(InvalidInputError) as err:
            IngestOptions(**kw)
        assert "\n" not in str(err.value) and str(err.value), kw
    with pytest.raises(InvalidInputError, match="gpus_per_worker"):
        RayOptions(gpus_per_worker=-1)
    report = tmp_path / "failed.csv"
    with Retriever(rp_bundle[0], uri=db_uri, collection="never") as r:
        for kw in [dict(workers=0), dict(label_frm="parent"), dict(engine="spark")]:
            with pytest.raises(InvalidInputError) as err:
                r.index(sample_dir, report=report, **kw)
            assert "\n" not in str(err.value)
        with pytest.raises(InvalidInputError, match="label_frm"):  # the unknown name is named
            r.index(sample_dir, label_frm="parent")
        with pytest.raises(InvalidInputError, match="IngestOptions"):
            r.index(sample_dir, {"label_from": "parent"})  # a dict is not the value
        assert not r.store.exists and r.count() == 0
    assert not report.exists()
    code, out, err = run(capsys, "index", rp_bundle[0], sample_dir, "--uri", db_uri,
                         "--collection", "never", "--max-pixels", "-5", "--no-progress")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--max-pixels" in err and "at least 0" in err
    with Retriever(rp_bundle[0], uri=db_uri, collection="never") as r:
        assert not r.store.exists


def test_index_keywords_are_the_options_fields(rp_bundle, sample_images, db_uri, tmp_path):
    """``index(archive, label_from=...)`` is ``index(archive, IngestOptions(label_from=...))``;
    a keyword overrides the same field of a value; the value survives JSON unchanged."""
    from rsir_sdk import Retriever
    from rsir_sdk.options import IngestOptions

    root = tmp_path / "archive"
    for p, label in sample_images[::20]:  # 10 scenes, one per class
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, root / label / p.name)
    (root / "skip.png").write_bytes(b"not listed: extensions below are .jpg only")
    value = IngestOptions(label_from="parent", extensions=(".jpg",), relative_paths=True,
                          workers=1, upsert_batch=4)
    assert IngestOptions.from_json(json.loads(json.dumps(value.to_json()))) == value
    with Retriever(rp_bundle[0], uri=db_uri, collection="by_value") as r:
        a = r.index(root, value)
    with Retriever(rp_bundle[0], uri=db_uri, collection="by_keywords") as r:
        b = r.index(root, label_from="parent", extensions=[".jpg"], relative_paths=True,
                    workers=1, upsert_batch=4)
    with Retriever(rp_bundle[0], uri=db_uri, collection="overridden") as r:
        c = r.index(root, value.replace(label_from="top", relative_paths=False),
                    label_from="parent", relative_paths=True)
    with Retriever(rp_bundle[0], uri=db_uri, collection="plain") as r:
        d = r.index(root, value, label_from="none")
    assert (a.indexed, a.ignored, b.indexed, b.ignored, c.indexed) == (10, 1, 10, 1, 10)
    rows = {}
    for name in ("by_value", "by_keywords", "overridden", "plain"):
        rows[name] = {i: (it.code.tobytes(), it.label, it.path)
                      for i, it in stored(db_uri, name).items()}
    assert rows["by_value"] == rows["by_keywords"] == rows["overridden"]
    assert {lab for _, lab, _ in rows["by_value"].values()} == {l for _, l in sample_images}
    assert all(not path.startswith("/") for _, _, path in rows["by_value"].values())
    assert d.indexed == 10 and {lab for _, lab, _ in rows["plain"].values()} == {""}


def test_retry_keeps_a_file_name_that_is_not_utf8(tmp_path, sample_images, rp_bundle, db_uri,
                                                  capsys):
    """A name that is not UTF-8 fails at listing and is written to the report with its bytes
    escaped; --retry-failed matches it in that form, so the rewritten report still lists it."""
    root = tmp_path / "arch"
    (root / "x").mkdir(parents=True)
    shutil.copyfile(sample_images[0][0], root / "x" / "good.jpg")
    with open(bytes(root / "x") + b"/bad\xff\xfe.jpg", "wb") as fh:
        fh.write(sample_images[1][0].read_bytes())
    (root / "x" / "zero.jpg").write_bytes(b"")
    report = tmp_path / "failed.csv"
    args = ("index", rp_bundle[0], root, "--uri", db_uri, "--collection", "names",
            "--no-progress", "--json", "--report", report)
    code, out, err = run(capsys, *args)
    first = read_report(report)
    assert code == 3 and json.loads(out)["failed"] == 2, out + err
    assert sorted(f.stage for f in first) == ["list", "read"]
    code, out, err = run(capsys, *args, "--retry-failed", report)
    assert code == 3 and json.loads(out)["total"] == 2 and json.loads(out)["failed"] == 2, out
    assert sorted((f.id, f.stage) for f in read_report(report)) == \
        sorted((f.id, f.stage) for f in first)


def test_stored_paths_are_normalised(tmp_path, rp_bundle, sample_images, monkeypatch):
    """``rsir index ../arch`` stored "/cwd/../arch/x.jpg" in every hit and duplicate group
    (failures keep the path as given: the user's own, relative to where they ran it)."""
    root = tmp_path / "arch"
    root.mkdir()
    shutil.copyfile(sample_images[0][0], root / "ok.jpg")
    (root / "bad.jpg").write_text("not an image")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with Retriever(rp_bundle[0], uri=str(tmp_path / "n.db"), collection="n") as r:
        s = r.index("../arch")
        assert s.indexed == 1 and [f.path for f in s.failed] == ["../arch/bad.jpg"]
        assert [it.path for it in r.get(["ok.jpg"])] == [str(root / "ok.jpg")]


def test_the_last_progress_update_counts_every_failure(tmp_path, rp_bundle, sample_images):
    """A re-run whose last images failed left the progress at "0 failed" while the summary said
    2 (examples/populate_milvus.py prints the progress line)."""
    root = tmp_path / "arch"
    root.mkdir()
    for path, _ in sample_images[:3]:
        shutil.copyfile(path, root / path.name)
    (root / "zz-empty.jpg").write_bytes(b"")
    (root / "zz-text.jpg").write_text("not an image")
    seen = []
    with Retriever(rp_bundle[0], uri=str(tmp_path / "p.db"), collection="p") as r:
        r.index(root)
        s = r.index(root, progress=lambda st: seen.append((st.skipped, st.failed)))
    assert s.skipped == 3 and len(s.failed) == 2
    assert seen[-1] == (3, 2), seen


def test_labels_the_bundle_does_not_know_are_said_with_the_hint(tiny_ahcl, sample_images,
                                                                tmp_path, caplog):
    """``--label-from parent`` on a nested class folder (``Forest/2019 survey/x.jpg``) labelled
    the item ``2019 survey`` without a word; a label filter and rsir eval then missed it."""
    import shutil

    from rsir_sdk import Retriever

    archive = tmp_path / "archive"
    for i, (p, label) in enumerate(sample_images[::40]):
        folder = archive / label / ("2019 survey" if i == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    with Retriever(tiny_ahcl[0], uri=str(tmp_path / "r.db"), collection="c") as r:
        with caplog.at_level("WARNING", logger="rsir_sdk.retriever"):
            r.index(archive, label_from="parent")
        assert "1 label(s) the bundle's 10 classes do not hold, e.g. '2019 survey'" in caplog.text
        assert "--label-from top" in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING", logger="rsir_sdk.retriever"):
            r.index(archive, label_from="top", skip_existing=False)
        assert "do not hold" not in caplog.text
    # a flat archive of other classes: top and parent are the same folder, so the hint to
    # switch would change nothing (it was given anyway)
    other = tmp_path / "other"
    for p, label in sample_images[::50]:
        (other / f"x-{label}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, other / f"x-{label}" / p.name)
    caplog.clear()
    with Retriever(tiny_ahcl[0], uri=str(tmp_path / "r.db"), collection="o") as r:
        with caplog.at_level("WARNING", logger="rsir_sdk.retriever"):
            r.index(other, label_from="parent")
    assert "the bundle's 10 classes do not hold" in caplog.text
    assert "--label-from top" not in caplog.text and "other classes" in caplog.text
