"""The `rsir` command line: info, collections, search (table, JSON, HTML gallery), forwarding."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx_models import build_random_projection_bundle

from rsir_sdk import Retriever
from rsir_sdk.cli import main
from rsir_sdk.cli.search import format_hits


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info(rp_bundle, capsys):
    code, out, _ = run(capsys, "info", rp_bundle[0])
    assert code == 0 and "random_projection" in out and "split        none" in out
    code, out, _ = run(capsys, "info", rp_bundle[0], "--json")
    info = json.loads(out)
    assert info["bits"] == 64 and info["encoder_id"] and info["split"] is None
    code, _, err = run(capsys, "info", "/no/such/bundle")
    assert code == 1 and "does not exist" in err


def test_info_fails_when_the_store_it_was_asked_about_cannot_be_opened(rp_bundle, tmp_path,
                                                                      capsys):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"these bytes are not a Milvus Lite database" * 20)
    for extra in ([], ["--json"]):
        code, out, _ = run(capsys, "info", rp_bundle[0], "--uri", bad, *extra)
        assert code == 1 and "not a Milvus Lite database file" in out, out


def test_index_search_collections_gallery(tmp_path, sample_images, rp_bundle, db_uri, capsys):
    archive = tmp_path / "archive"
    for p, label in sample_images[::4]:
        (archive / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, archive / label / p.name)
    code, _, err = run(capsys, "collections", "--uri", db_uri)
    assert code == 1 and "no Milvus Lite file" in err
    code, out, err = run(capsys, "index", rp_bundle[0], archive, "--uri", db_uri, "--collection",
                         "scenes", "--label-from", "parent", "--relative-paths")
    assert code == 0 and "indexed         50 images into scenes" in out
    assert "img/s" in err  # the progress bar shows the rate
    code, out, _ = run(capsys, "collections", "--uri", db_uri)
    assert code == 0 and re.search(r"scenes\s+50\s+64\s+\w{16}\s+random_projection\s+stretch=range", out)
    code, out, _ = run(capsys, "collections", "--uri", db_uri, "--json")
    assert json.loads(out)[0]["count"] == 50

    query = archive / sample_images[8][1] / sample_images[8][0].name
    code, out, _ = run(capsys, "search", rp_bundle[0], query, "--uri", db_uri, "--collection",
                       "scenes", "-k", "5")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["rank", "id", "distance", "label", "path"]
    first = lines[1].split()
    assert first[:3] == ["1", f"{sample_images[8][1]}/{sample_images[8][0].name}", "0"]
    assert len(lines) == 6
    code, out, _ = run(capsys, "search", rp_bundle[0], query, "--uri", db_uri, "--collection",
                       "scenes", "-k", "50", "--json", "--filter", 'label == "Forest"')
    hits = json.loads(out)
    assert code == 0 and len(hits) == 5 and {h["label"] for h in hits} == {"Forest"}
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)

    # several images: one batch, a hit list each in the order given, as search_batch gives
    # them (the CLI took one image: no batch where Retriever, RemoteRetriever and HTTP have one)
    other = archive / sample_images[40][1] / sample_images[40][0].name
    code, out, _ = run(capsys, "search", rp_bundle[0], query, other, query, "--uri", db_uri,
                       "--collection", "scenes", "-k", "4", "--json")
    batch = json.loads(out)
    with Retriever(rp_bundle[0], uri=db_uri, collection="scenes") as r:
        want = r.search_batch([query, other, query], k=4)
    assert code == 0 and [b["query"] for b in batch] == [str(query), str(other), str(query)]
    assert [[h["id"] for h in b["hits"]] for b in batch] == [[h.id for h in w] for w in want]
    code, out, _ = run(capsys, "search", rp_bundle[0], query, other, "--uri", db_uri,
                       "--collection", "scenes", "-k", "2")
    assert code == 0 and out.count("query ") == 2 and out.count("rank") == 2
    code, _, err = run(capsys, "search", rp_bundle[0], query, other, "--uri", db_uri,
                       "--collection", "scenes", "--html", tmp_path / "x.html")
    assert code == 2 and "give one image" in err and not (tmp_path / "x.html").exists()

    # the gallery: query + hits inlined as thumbnails, distances shown, missing files shown
    html_out = tmp_path / "pages" / "g.html"
    code, out, err = run(capsys, "search", rp_bundle[0], query, "--uri", db_uri, "--collection",
                         "scenes", "-k", "6", "--html", html_out, "--root", archive)
    page = html_out.read_text()
    assert code == 0 and "wrote" in err
    assert page.count("data:image/jpeg;base64,") == 7 and page.count("distance ") == 6
    assert "<b>query</b>" in page and "image not found" not in page
    code, _, _ = run(capsys, "search", rp_bundle[0], query, "--uri", db_uri, "--collection", "scenes",
                     "-k", "3", "--html", html_out)  # no --root: relative paths cannot be found
    assert page != html_out.read_text() and html_out.read_text().count("image not found") == 3
    code, _, _ = run(capsys, "search", rp_bundle[0], query, "--uri", db_uri, "--collection", "scenes",
                     "-k", "3", "--html", html_out, "--root", archive, "--link-images")
    linked = html_out.read_text()
    assert "base64" not in linked and 'src="../archive/' in linked

    code, _, err = run(capsys, "search", rp_bundle[0], query, "--uri", db_uri, "--collection", "nope")
    assert code == 1 and "'nope' does not exist" in err and "collections there: scenes" in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "collections", "--uri", db_uri, "--json")  # nothing was created
    assert [c["collection"] for c in json.loads(out)] == ["scenes"]
    code, _, err = run(capsys, "search", rp_bundle[0], tmp_path / "missing.jpg", "--uri", db_uri,
                       "--collection", "scenes")
    assert code == 1 and "no such file" in err

    # rsir info says when the collection was filled by another encoder (searches refuse it)
    code, out, _ = run(capsys, "info", rp_bundle[0], "--uri", db_uri, "--collection", "scenes")
    assert code == 0 and "50 items" in out and "mismatch" not in out
    other = tmp_path / "other"
    build_random_projection_bundle(other, bits=64, size=32, seed=5)
    code, out, _ = run(capsys, "info", other, "--uri", db_uri, "--collection", "scenes")
    assert code == 0 and "mismatch     scenes was filled by another encoder" in out, out


def test_index_learned_codes(tmp_path, sample_images, db_uri, capsys):
    bundle = tmp_path / "ahcl"
    codes = np.random.default_rng(0).integers(0, 256, (20, 4), dtype=np.uint8)
    build_random_projection_bundle(bundle, bits=32, size=32, database={
        "codes": codes, "ids": [f"img{i}" for i in range(20)], "labels": ["a", "b"] * 10,
        "paths": [f"a/{i}.jpg" for i in range(20)], "kind": "learned"})
    code, out, _ = run(capsys, "index", bundle, "--learned", "--uri", db_uri, "--collection", "l")
    assert code == 0 and "indexed 20 learned database codes into l" in out
    code, out, _ = run(capsys, "index", bundle, "--learned", "--uri", db_uri, "--collection", "l", "--json")
    assert json.loads(out) == {"indexed": 20, "new": 0, "collection": "l", "uri": db_uri,
                               "count": 20}
    code, out, _ = run(capsys, "index", bundle, "--learned", "--uri", db_uri, "--collection", "l")
    assert code == 0 and "wrote 20 learned database codes into l" in out
    assert "0 new, 20 already there and rewritten (20 items)" in out, out


def test_training_commands_say_what_to_install_when_the_training_package_is_absent(tmp_path):
    """A runtime-only environment (rsir_sdk and its dependencies, no rsir_train): one line, exit 2."""
    import os
    import site
    import subprocess

    root = Path(__file__).resolve().parents[1]
    # -S: no .pth files, so the editable install of rsir_train is invisible; the runtime comes
    # from the source tree and its dependencies from site-packages
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *site.getsitepackages()])}
    for command in ("train", "quantize", "quickstart"):
        proc = subprocess.run(
            [sys.executable, "-S", "-c", "import sys; from rsir_sdk.cli import main; "
             f"sys.exit(main(['{command}', '--help']))"],
            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"rsir {command} needs the training package" in lines[0]
        assert "pip install" in lines[0] and "Traceback" not in proc.stderr


def test_format_hits_table():
    from rsir_sdk.retriever import Hit

    assert format_hits([]) == "no hits"
    text = format_hits([Hit("a", 0, "forest", "/x/a.jpg"), Hit("bb", 3, "", "")])
    assert text.splitlines()[1].split() == ["1", "a", "0", "forest", "/x/a.jpg"]


def test_format_hits_lines_up_names_in_any_script():
    """Columns are counted in terminal cells: CJK names (two cells a character) and decomposed
    accents (a combining mark takes none) pushed the distance and label columns of their
    rows out of line."""
    import unicodedata

    from rsir_sdk.retriever import Hit

    def cells(text):  # terminal cells, as a terminal draws them
        return sum(0 if unicodedata.combining(c) else
                   2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

    hits = [Hit("港口/图像一.jpg", 0, "港口", "/a"), Hit("plain.jpg", 5, "harbour", "/b"),
            Hit(unicodedata.normalize("NFD", "été/é.jpg"), 7, "été", "/c"),
            Hit("x", 9, "非常长的类别名称非常长的类别名称", "/d")]
    rows = format_hits(hits).splitlines()
    path_at = {cells(row[: row.rindex("  /")]) for row in rows[1:]}
    distance_ends = {cells(row[: row.index(f" {hit.distance}  ") + len(str(hit.distance)) + 1])
                     for row, hit in zip(rows[1:], hits)}
    assert path_at == {cells(rows[0][: rows[0].index("  path")])}, rows
    assert distance_ends == {cells(rows[0][: rows[0].index("distance") + 8])}, rows


def _rsir_script() -> str:
    """The installed ``rsir`` console script of this environment."""
    script = Path(sys.executable).with_name("rsir")
    assert script.exists(), f"no console script at {script}: pip install -e . -e ./export"
    return str(script)


def test_training_commands_come_from_the_entry_point_group(tmp_path):
    """`rsir --help` lists the group's commands with their help; `rsir train --help` reaches rsir_train."""
    import os
    import subprocess
    from importlib.metadata import entry_points

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from rsir_sdk.cli import RUNTIME_COMMANDS, authoring, build_parser

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "export" / "pyproject.toml")
                             .read_text())["project"]["entry-points"][authoring.GROUP]
    assert set(declared) == {"train", "quantize", "quickstart"}
    eps = {ep.name: ep.value for ep in entry_points(group=authoring.GROUP)}
    assert eps == declared, "the installed metadata is stale: pip install -e ./export --no-deps"
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert RUNTIME_COMMANDS == set(sub.choices) - set(eps)  # the runtime list is the parser's own
    proc = subprocess.run([_rsir_script(), "--help"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})  # one help line each
    assert proc.returncode == 0, proc.stderr
    for name, text in (("train", "train a hashing encoder"), ("quantize", "derive an int8/fp16 bundle"),
                       ("quickstart", "train, index and search the shipped EuroSAT sample")):
        assert re.search(rf"^\s+{name}\s+{text}", proc.stdout, re.M), proc.stdout
    assert proc.stdout.count("(rsir-train)") == 3
    proc = subprocess.run([_rsir_script(), "train", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "usage: rsir train" in proc.stdout and "{ahcl,milan,itq}" in proc.stdout
    proc = subprocess.run([_rsir_script(), "quantize", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "--calibration" in proc.stdout
    # in process too: main returns the command's exit status (2: a bad argument, one line)
    assert main(["train", "ahcl", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--bits", "12"]) == 2
    assert not (tmp_path / "o").exists()
    # listing the commands imports their command line module, never torch or onnx
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, contextlib, io\nfrom rsir_sdk.cli import main\n"
         "with contextlib.redirect_stdout(io.StringIO()): main(['--help'])\n"
         "print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_a_leading_verbose_flag_reaches_the_training_commands(tmp_path, capsys):
    """`rsir -v train ...` works as `rsir -v index ...` does (it was refused as an unrecognized
    argument): the flag is passed on, and the command's own parser answers."""
    assert main(["-v", "train", "ahcl", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--bits", "12"]) == 2
    err = capsys.readouterr().err
    assert "rsir train ahcl: argument --bits: bits must be a multiple of 8" in err, err
    assert "unrecognized" not in err and not (tmp_path / "o").exists()
    for command in ("quickstart", "quantize", "train"):
        assert main(["--verbose", command, "--help"]) == 0
        assert "usage: rsir " + command in capsys.readouterr().out


def test_an_empty_entry_point_group_names_the_package_to_install(tmp_path):
    """No distribution declares `rsir.commands`: `rsir --help` lists none, `rsir train` says one line."""
    import os
    import site
    import subprocess

    root = Path(__file__).resolve().parents[1]
    # a site folder holding everything installed here except the training package and its metadata
    bare = tmp_path / "site"
    bare.mkdir()
    for entry in Path(site.getsitepackages()[0]).iterdir():
        if "rsir_train" not in entry.name and not entry.name.endswith(".pth"):
            (bare / entry.name).symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(bare)])}
    probe = ("import sys, contextlib, io\nfrom importlib.metadata import entry_points\n"
             "from rsir_sdk.cli import main\nassert not list(entry_points(group='rsir.commands'))\n"
             "out = io.StringIO()\nwith contextlib.redirect_stdout(out): main(['--help'])\n"
             "assert 'quickstart' not in out.getvalue() and 'serve' in out.getvalue(), out.getvalue()\n"
             "sys.exit(main(sys.argv[1:]))")
    for argv in (["train", "ahcl", "--data", "x"], ["quickstart"], ["quantize", "--help"]):
        proc = subprocess.run([sys.executable, "-S", "-c", probe, *argv], env=env, capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"rsir {argv[0]} needs the training package: pip install rsir-train" \
            in lines[0], proc.stderr


def test_index_summary_counts_every_failure_it_does_not_name():
    """Five reasons are named; the failures of the others are counted, not dropped."""
    from rsir_sdk.cli.index import summary_text
    from rsir_sdk.failures import Failure
    from rsir_sdk.ingest import IngestSummary

    failed = [Failure(f"f{i}", f"f{i}.jpg", "read", f"reason {i}") for i in range(7)]
    text = summary_text(IngestSummary(total=9, indexed=2, failed=failed, report="r.csv",
                                      collection="c", uri="x.db"), 2, None)
    counts = [int(line.split()[0]) for line in text.splitlines()
              if line.startswith("         ")]
    assert len(counts) == 6 and sum(counts) == 7, text
    assert "2  for other reasons (all in r.csv)" in text


@pytest.mark.parametrize("command", ["search", "index", "info", "duplicates", "eval"])
def test_an_empty_collection_name_is_refused_not_taken_for_the_default(command, capsys):
    args = {"search": ["b", "q.jpg"], "index": ["b", "archive"]}.get(command, ["b"])
    assert main([command, *args, "--collection", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--collection: must not be empty" in err


def test_ray_actor_threads_and_gpus_reach_the_ray_options(tmp_path, capsys):
    """``--threads`` sized only the driver's encoder and the CLI could not give Ray actors a
    GPU (Ray hides GPUs from actors that ask for none): both now reach ``RayOptions``; a GPU
    count for the local engine is one usage line, not silently ignored."""
    from rsir_sdk.cli import _parse, build_parser
    from rsir_sdk.cli.index import ingest_options
    from rsir_sdk.options import RayOptions

    parser = build_parser()
    args = _parse(parser, ["index", "b", "a", "--engine", "ray", "--threads", "3",
                           "--gpus-per-worker", "0.5"])
    assert ingest_options(args).ray == RayOptions(threads_per_worker=3, gpus_per_worker=0.5)
    assert ingest_options(_parse(parser, ["index", "b", "a", "--engine", "ray"])).ray == RayOptions()
    code = main(["index", str(tmp_path / "b"), str(tmp_path), "--gpus-per-worker", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--gpus-per-worker is for --engine ray" in err[0]


def test_an_ahcl_training_batch_of_one_is_a_usage_error(tmp_path, capsys):
    """A batch of one image cannot be normalised: every batch was skipped and an untrained
    bundle written with exit 0 (chance mAP). Now a usage line before anything runs."""
    code = main(["train", "ahcl", "--data", str(tmp_path), "--out", str(tmp_path / "b"),
                 "--batch-size", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--batch-size: must be at least 2" in err[0]
    assert not (tmp_path / "b").exists()


def test_ahcl_says_when_it_replaces_or_cannot_find_checkpoints(tmp_path, caplog):
    """Re-running a killed AHCL run without --resume started over and overwrote its
    checkpoints without a word; --resume with no checkpoint (a mistyped --out) trained from
    scratch with one INFO line. Both are one warning now."""
    import argparse

    from rsir_train.train_checks import check_train_outputs

    data = tmp_path / "archive"
    data.mkdir()
    args = argparse.Namespace(method="ahcl", data=str(data), out=str(tmp_path / "b"),
                              work_dir=None, resume=False, overwrite=False)
    with caplog.at_level("WARNING", logger="rsir_train.train_checks"):
        check_train_outputs(args)
    assert not caplog.records
    (tmp_path / "b.work" / "select-auto-f0").mkdir(parents=True)
    (tmp_path / "b.work" / "select-auto-f0" / "checkpoint.pt").write_bytes(b"x")
    with caplog.at_level("WARNING", logger="rsir_train.train_checks"):
        check_train_outputs(args)
    assert "holds checkpoints of an earlier run" in caplog.text and "--resume" in caplog.text
    caplog.clear()
    args.out, args.resume = str(tmp_path / "typo"), True
    with caplog.at_level("WARNING", logger="rsir_train.train_checks"):
        check_train_outputs(args)
    assert "--resume: no checkpoint in" in caplog.text


def test_info_says_not_created_yet_for_a_missing_collection_of_an_existing_file(
        rp_bundle, sample_images, tmp_path, capsys):
    """Only a missing Lite file read "not created yet"; a file holding other collections
    printed "cannot be opened (collection ... does not exist ...)" and exited 1."""
    from rsir_sdk import Retriever

    db = str(tmp_path / "rsir.db")
    with Retriever(rp_bundle[0], uri=db, collection="real") as r:
        r.add_images([sample_images[0][0]], ids=["a"])
    code, out, _ = run(capsys, "info", rp_bundle[0], "--uri", db, "--collection", "later")
    assert code == 0 and "later at" in out and "not created yet" in out, out
    assert "cannot be opened" not in out
    # the collection line names the one asked about (it printed the bundle's default)
    assert re.search(r"^collection\s+later \(the bundle's default: \w+\)$", out, re.M), out
    code, out, _ = run(capsys, "info", rp_bundle[0], "--uri", db, "--collection", "later",
                       "--json")
    assert json.loads(out)["collection"] == "later"


@pytest.mark.parametrize("method,flag,value,says", [
    ("ahcl", "--lr", "-1", "must be > 0"), ("ahcl", "--patience", "-1", "must be >= 0"),
    ("ahcl", "--val-fraction", "1.5", "must be < 1"), ("ahcl", "--val-fraction", "0", "> 0"),
    ("ahcl", "--num-samples", "-5", "must be >= 0"), ("ahcl", "--lambda", "-3", ">= 0"),
    ("ahcl", "--resize", "-1", ">= 0"), ("ahcl", "--val-folds", "0", "at least 1"),
    ("milan", "--ema-decay", "1", "must be < 1"), ("milan", "--margin", "nan", "finite"),
])
def test_training_options_out_of_range_are_one_usage_line(method, flag, value, says, tmp_path,
                                                          capsys):
    """Out-of-range training options failed deep in torch or numpy (exit 1), or were taken
    as given (--patience -1 acted as 1, --lambda -3 trained); now exit 2, one line."""
    code = main(["train", method, "--data", str(tmp_path), "--out", str(tmp_path / "b"),
                 flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and flag in err[0] and says in err[0], err


def test_files_removed_or_renamed_since_indexing_are_counted_and_pruned(tmp_path, sample_images,
                                                                        rp_bundle, capsys):
    """A file deleted or renamed after it was indexed stayed in the collection without a word:
    searches returned it (a renamed one twice, and as a duplicate of itself). A run now counts
    such items, and --prune deletes them."""
    archive = tmp_path / "archive"
    for p, label in sample_images[:12]:
        (archive / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, archive / label / p.name)
    db = str(tmp_path / "rsir.db")
    base = ["index", rp_bundle[0], archive, "--uri", db, "--collection", "c", "--no-progress"]
    assert run(capsys, *base)[0] == 0
    files = sorted(archive.rglob("*.jpg"))
    files[0].unlink()
    files[1].rename(files[1].with_name("renamed.jpg"))
    code, out, _ = run(capsys, *base)
    assert code == 0 and re.search(r"^not listed\s+2 items the collection holds", out, re.M), out
    assert "--prune deletes them" in out and "holds 13 items" in out
    code, out, _ = run(capsys, *base, "--json")
    assert json.loads(out)["not_listed"] == 2
    code, _, err = run(capsys, *base, "--prune", "--retry-failed", tmp_path / "r.csv")
    assert code == 2 and "--prune" in err
    code, out, _ = run(capsys, *base, "--prune")
    assert code == 0 and re.search(r"^pruned\s+2 items", out, re.M) and "holds 11 items" in out
    assert "not listed" not in out
    from rsir_sdk import Retriever

    with Retriever(rp_bundle[0], uri=db, collection="c") as r:
        held = set(r.store.iter_ids())
    assert held == {str(f.relative_to(archive)) for f in archive.rglob("*.jpg")}
    assert run(capsys, *base)[1].count("not listed") == 0


def test_not_listed_counts_a_repeated_manifest_id_once(tmp_path, sample_images, rp_bundle,
                                                       capsys):
    """A manifest naming an id twice indexes its first row and fails the second ("list"
    stage): the id was subtracted twice, and an item no longer listed went uncounted."""
    db = str(tmp_path / "rsir.db")
    rows = [(str(p), f"id{i}") for i, (p, _) in enumerate(sample_images[:3])]
    (tmp_path / "m1.csv").write_text("path,id\n" + "".join(f"{p},{i}\n" for p, i in rows))
    (tmp_path / "m2.csv").write_text("path,id\n" + "".join(f"{p},{i}\n" for p, i in
                                                           (rows[0], rows[0])))
    base = ["index", rp_bundle[0], "--uri", db, "--collection", "m", "--no-progress", "--json",
            "--report", str(tmp_path / "failed.csv")]
    assert run(capsys, base[0], base[1], tmp_path / "m1.csv", *base[2:])[0] == 0
    code, out, err = run(capsys, base[0], base[1], tmp_path / "m2.csv", *base[2:], "--force")
    summary = json.loads(out)
    assert summary["failed"] == 1 and summary["not_listed"] == 2, out + err
