"""Hardening of the command line and the gallery: a password inside an image URL never reaches
output, a gallery's file links cannot carry a URL scheme, and ``rsir index`` on a folder with no
image says so and fails. Real Lite files, a real loopback HTTP server, real bundles."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rsir_sdk import Bundle, Retriever
from rsir_sdk.cli import main
from rsir_sdk.gallery import write_gallery


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sample_host(sample_dir):
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(sample_dir), **kw)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_rsir_search_never_prints_the_password_of_an_image_url(rp_bundle, sample_images, tmp_path,
                                                              sample_host, capsys):
    db = str(tmp_path / "r.db")
    files = [p for p, _ in sample_images[:6]]
    with Retriever(rp_bundle[0], uri=db, collection="c") as r:
        r.add_images(files, ids=[p.name for p in files])
    base = f"http://reader:hunter2@127.0.0.1:{sample_host}"
    code, out, err = cli(capsys, "-v", "search", rp_bundle[0], f"{base}/no/such.jpg", "--uri", db,
                         "--collection", "c")
    assert code == 1 and "HTTP 404" in err and f"http://***@127.0.0.1:{sample_host}" in err
    assert "hunter2" not in out + err
    rel = files[0].relative_to(sample_images[0][0].parents[1]).as_posix()
    page = tmp_path / "g.html"
    code, out, err = cli(capsys, "-v", "search", rp_bundle[0], f"{base}/{rel}", "--uri", db,
                         "--collection", "c", "-k", "3", "--html", page)
    assert code == 0 and out.splitlines()[1].split()[1] == files[0].name, out + err
    html = page.read_text()
    assert "hunter2" not in out + err + html and "***@127.0.0.1" in html


def test_gallery_file_links_are_relative_and_cannot_carry_a_scheme(tmp_path, sample_images):
    folder = tmp_path / "images"
    folder.mkdir()
    evil = folder / "javascript:alert(1).jpg"
    shutil.copyfile(sample_images[0][0], evil)
    shutil.copyfile(sample_images[1][0], folder / "a b#c.jpg")
    hits = [{"id": "<script>x</script>", "distance": 0, "label": "l", "path": evil.name},
            {"id": "b", "distance": 1, "label": "l", "path": "a b#c.jpg"}]
    out = write_gallery(folder / "gallery.html", sample_images[2][0], hits, roots=[folder],
                        embed=False)
    page = out.read_text()
    links = re.findall(r'src="([^"]*)"', page)
    assert "./javascript%3Aalert%281%29.jpg" in links and "./a%20b%23c.jpg" in links
    assert all(link.startswith(("./", "../")) for link in links), links
    assert "javascript:" not in " ".join(links) and "<script>" not in page


def test_rsir_index_on_a_folder_without_images_says_so_and_fails(rp_bundle, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    (notes / "a").mkdir(parents=True)
    (notes / "a" / "readme.txt").write_text("no image here")
    for folder, seen in ((empty, 0), (notes, 1)):
        code, out, err = cli(capsys, "index", rp_bundle[0], folder, "--uri", tmp_path / "x.db",
                             "--collection", "c", "--no-progress")
        assert code == 2 and "indexed" not in out, out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"{folder} holds no image: nothing indexed" in lines[0]
        said = "1 other file was seen" if seen == 1 else f"{seen} other files were seen"
        assert said in lines[0] and ".jpg" in lines[0]


def test_a_gallery_says_when_hits_were_found_only_in_the_bundles_training_archive(
        tiny_ahcl, tmp_path, capsys, monkeypatch):
    # another archive with the training archive's relative names but other images, indexed
    # with relative paths: its hits resolve under the bundle's archive, which shows other
    # scenes; the gallery is still written and says so, and --root mends it
    bundle = tiny_ahcl[0]
    train_root = Path(Bundle.load(bundle).archive_root)
    names = sorted(p.relative_to(train_root) for p in train_root.rglob("*.jpg"))[:4]
    other = tmp_path / "other"
    for name, donor in zip(names, reversed(names)):  # same names, swapped pictures
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(train_root / donor, other / name)
    db = tmp_path / "o.db"
    code, _, err = cli(capsys, "index", bundle, other, "--uri", db, "--collection", "o",
                       "--relative-paths", "--no-progress")
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    query = other / names[0]
    for roots, warned in (((), True), (("--root", other), False)):
        code, _, err = cli(capsys, "search", bundle, query, "--uri", db, "--collection", "o",
                           "-k", "3", "--html", tmp_path / "g.html", "--link-images", *roots)
        assert code == 0, err
        assert ("3 of 3 hit images were found only under the bundle's training archive"
                in err) is warned, err
        assert "were not found" not in err


def test_rsir_serve_on_a_port_in_use_is_one_line_and_opens_nothing(rp_bundle, tmp_path, capsys):
    # uvicorn logged its start-up lines with the bind error among them and exited 3 ("some
    # images failed"); now one line, exit 1, before the collection is opened
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = cli(capsys, "serve", rp_bundle[0], "--uri", tmp_path / "s.db",
                             "--collection", "c", "--create", "--port", port)
    assert code == 1 and not out, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rsir serve: cannot listen on 127.0.0.1:{port}")
    assert "already in use" in lines[0] and "--port" in lines[0]
    assert not (tmp_path / "s.db").exists()


def test_the_rsir_script_starts_light_and_a_ctrl_c_while_it_loads_is_one_line():
    """The console script is ``rsir_sdk.launch:main``; loading it pulls in no numpy, so the
    half second in which the command's modules load is covered by its KeyboardInterrupt
    handler. A Ctrl-C there is made deterministic here: the import of ``rsir_sdk.cli`` raises
    it (as the signal would), and the script must say one line and exit 130."""
    import subprocess
    import sys

    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["rsir"] == "rsir_sdk.launch:main"
    light = subprocess.run(
        [sys.executable, "-c", "import sys, rsir_sdk.launch, rsir_sdk; "
         "print(sorted(m for m in ('numpy', 'PIL', 'pymilvus', 'onnxruntime') if m in sys.modules))"],
        capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "[]", light.stdout
    interrupted = subprocess.run(
        [sys.executable, "-c",
         "import sys\n"
         "class Interrupt:\n"
         "    def find_spec(self, name, path=None, target=None):\n"
         "        if name == 'rsir_sdk.cli':\n"
         "            raise KeyboardInterrupt\n"
         "sys.meta_path.insert(0, Interrupt())\n"
         "from rsir_sdk.launch import main\n"
         "sys.exit(main())\n"],
        capture_output=True, text=True)
    assert interrupted.returncode == 130
    assert interrupted.stderr.strip() == "rsir: interrupted"
    assert interrupted.stdout == ""


def test_a_ctrl_c_while_python_exits_after_a_finished_command_changes_nothing():
    """A Ctrl-C to the process group after a run had finished (Milvus Lite closing, threads
    joining while Python exits) ended ``rsir index``/``rsir duplicates`` by the signal itself:
    status -2, no word, though the work was complete. The exit is made to take a Ctrl-C here:
    the status stays the command's, and nothing is printed."""
    exiting = (
        "import atexit, os, signal, sys, time\n"
        "from rsir_sdk.launch import main\n"
        "def ctrl_c_while_exiting():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.3)\n"
        "if sys.argv[1] == 'ctrl-c':\n"
        "    atexit.register(ctrl_c_while_exiting)\n"
        "sys.argv = ['rsir', 'collections', '--uri', 'missing.db']\n"
        "sys.exit(main())\n")
    runs = [subprocess.run([sys.executable, "-c", exiting, how], capture_output=True, text=True,
                           timeout=120) for how in ("plain", "ctrl-c")]
    plain, interrupted = runs
    assert plain.returncode == 1 and "no Milvus Lite file at missing.db" in plain.stderr
    assert interrupted.returncode == plain.returncode, interrupted.stderr   # not -2
    assert interrupted.stderr == plain.stderr                               # no traceback


def test_progress_in_a_log_is_lines_not_redraws(capsys):
    """stderr not a terminal (a log file): tqdm's "\\r" redraws ran into one long line."""
    from rsir_sdk.cli.common import ProgressBar

    empty = ProgressBar("indexing", unit="img")
    empty.update(0, 0)                     # an empty archive: no "0img" bar before its error
    empty.close()
    assert capsys.readouterr().err == ""
    bar = ProgressBar("duplicates", unit="item")
    for done in range(0, 401, 50):
        bar.update(done, 400)
    bar.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and err.endswith("\n") and all(line.strip() for line in lines), err
    assert lines[0].startswith("duplicates:") and "0/400" in lines[0], err
    assert "400/400" in lines[-1] and "100%" in lines[-1], err


def test_the_package_names_load_on_first_use_and_all_resolve():
    import rsir_sdk

    assert set(rsir_sdk.__all__) == set(rsir_sdk._EXPORTS) | {"__version__"}
    for name in rsir_sdk.__all__:
        assert getattr(rsir_sdk, name) is not None, name
    assert rsir_sdk.Retriever.__module__ == "rsir_sdk.retriever"
    assert "RemoteRetriever" in dir(rsir_sdk)
    with pytest.raises(AttributeError, match="no attribute 'Retreiver'"):
        rsir_sdk.Retreiver  # noqa: B018 - a misspelt name must still fail


def test_an_interruption_is_reported_with_more_interrupts_ignored_then_handlers_restored(
        monkeypatch, tmp_path, capsys):
    """While ``rsir`` reports an interruption, a second Ctrl-C (or SIGTERM) is ignored: a
    progress bar's clean-up printed a KeyboardInterrupt traceback, and the exit status was
    once -2. SIGTERM runs the command's interrupt path. Both handlers come back afterwards."""
    import signal

    from rsir_sdk.cli import admin

    seen: dict[str, object] = {}

    def interrupted(*args, **kwargs):
        seen["term"] = signal.getsignal(signal.SIGTERM)
        raise KeyboardInterrupt

    def record(text: str) -> None:
        seen["int while reporting"] = signal.getsignal(signal.SIGINT)
        seen["text"] = text

    monkeypatch.setattr(admin, "describe_collections", interrupted)
    monkeypatch.setattr("rsir_sdk.cli.warn", record)
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    db = tmp_path / "x.db"
    db.write_bytes(b"")
    assert main(["collections", "--uri", str(db)]) == 130
    assert seen["term"] is signal.default_int_handler         # SIGTERM: the interrupt path
    assert seen["int while reporting"] == signal.SIG_IGN   # a second Ctrl-C: ignored
    assert "interrupted" in str(seen["text"])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_output_cut_by_its_reader_is_no_error(rp_bundle):
    """``rsir info BUNDLE | head -1``: the reader goes away (here at once: ``| true``).
    Python's BrokenPipeError was reported as "unexpected BrokenPipeError" (exit 1), or by
    Python's flush at exit (exit 120). Now nothing is printed, exit 141."""
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -c 'from rsir_sdk.launch import main; raise SystemExit(main())' "
        f"info {rp_bundle[0]} | true; echo ${{PIPESTATUS[1]}} ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.stdout.split() == ["0", "141"], (proc.stdout, proc.stderr)
    assert "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_names_with_control_characters_reach_the_terminal_escaped(rp_bundle, sample_images,
                                                                  tmp_path, capfd):
    """A file system allows any character but / in a name: an escape sequence in a folder's
    name coloured (or could clear) the terminal from a warning, a line break split it; in the
    hit table, a name holding a backslash read like one holding a line break."""
    arc = tmp_path / "arc"
    (arc / "a").mkdir(parents=True)
    for name in ("new\nline.jpg", "new\\nline.jpg"):
        shutil.copy(sample_images[0][0], arc / "a" / name)
    (arc / "loop\x1b[31m\nname").symlink_to(arc, target_is_directory=True)   # a link loop
    db = tmp_path / "c.db"
    run = subprocess.run([sys.executable, "-m", "rsir_sdk.cli", "index", str(rp_bundle[0]),
                          str(arc), "--uri", str(db), "--collection", "c", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    err = run.stderr
    assert "\x1b" not in err and "loop\\x1b[31m\\nname" in err, err
    warning = [x for x in err.splitlines() if "loop" in x]
    assert len(warning) == 1 and "it leads" in warning[0], err
    assert main(["search", str(rp_bundle[0]), str(sample_images[0][0]), "--uri", str(db),
                 "--collection", "c", "-k", "2"]) == 0
    out = capfd.readouterr().out
    assert "a/new\\nline.jpg" in out and "a/new\\\\nline.jpg" in out, out
    assert "\x1b" not in out and "\nline.jpg" not in out
