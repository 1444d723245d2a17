"""Every script in examples/ runs on the shipped sample, as a user would run it (subprocess)."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(script: str, *args, cwd: Path, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """examples/train_and_export.py --quick: the bundle every other example uses."""
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("examples")
    out = run("train_and_export.py", "--quick", "--bits", "32", "--out", work / "bundle", cwd=work)
    assert "database codes learned" in out and "mAP" in out
    # a minute of training is not silent: a line before the heavy imports, one per outer iteration
    lines = out.splitlines()
    assert lines[0].startswith("loading torch") and lines[1].startswith("training AHCL (small_cnn")
    progress = [line for line in lines if line.startswith("  outer iteration ")]
    assert len(progress) == 6 and progress[0].startswith("  outer iteration 1: loss ")
    assert lines.index(progress[-1]) < next(i for i, x in enumerate(lines) if x.startswith("bundle "))
    return work, work / "bundle"


def test_every_example_is_covered():
    covered = {"train_and_export.py", "quantize.py", "populate_milvus.py", "search_by_image.py",
               "edge_encode_and_search.py", "geotiff_archive.py", "edge_client.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == covered


def test_populate_search_and_edge_examples(trained, sample_dir):
    work, bundle = trained
    db = work / "ex.db"
    out = run("populate_milvus.py", sample_dir, "--bundle", bundle, "--uri", db,
              "--collection", "scenes", "--report", work / "failed.csv", cwd=work)
    assert "indexed 200, skipped 0, failed 0; the collection holds 200 items" in out
    again = run("populate_milvus.py", sample_dir, "--bundle", bundle, "--uri", db,
                "--collection", "scenes", cwd=work)
    assert "indexed 0, skipped 200" in again  # resumable: a re-run finds everything present
    query = sample_dir / "Forest" / "Forest_1001.jpg"
    hits = run("search_by_image.py", query, "--bundle", bundle, "--uri", db,
               "--collection", "scenes", "-k", "5", cwd=work).splitlines()
    assert len(hits) == 5 and "distance   0" in hits[0] and "Forest/Forest_1001.jpg" in hits[0]
    edge = run("edge_encode_and_search.py", query, "--bundle", bundle, "--uri", db,
               "--collection", "scenes", cwd=work)
    assert "32-bit code = 4 bytes" in edge and "Forest/Forest_1001.jpg" in edge.splitlines()[1]


def test_geotiff_example_names_the_geo_extra_when_it_is_missing(tmp_path):
    """Without tifffile (hidden from the child: sys.modules entry None), one line naming the
    extra to install, exit 1, no traceback; before any archive or database is made."""
    code = ("import runpy, sys; sys.modules['tifffile'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "geotiff_archive.py"),
                           "--demo", tmp_path / "geo", "--bundle", tmp_path / "b", "--uri",
                           tmp_path / "geo.db"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        'error: GeoTIFF archives need the geo extra (tifffile not installed): '
        'pip install "rsir-sdk[geo]"']
    assert not (tmp_path / "geo").exists() and not (tmp_path / "geo.db").exists()


def test_geotiff_example(trained, sample_dir):
    pytest.importorskip("tifffile")
    work, bundle = trained
    out = run("geotiff_archive.py", "--demo", work / "geo", "--sample", sample_dir,
              "--bundle", bundle, "--uri", work / "geo.db", cwd=work)
    assert "indexed 20, failed 0" in out
    lines = [line for line in out.splitlines() if line.startswith("distance")]
    assert len(lines) == 5 and "distance   0" in lines[0] and "EPSG:32633" in lines[0]
    # UTM 33N tiles lie around 15 degrees east (the first one's west edge on the meridian)
    west, east = (float(x) for x in re.search(r"footprint lon ([-\d.]+)\.\.([-\d.]+)",
                                                 lines[0]).groups())
    assert abs(west - 15.0) < 0.01 and 15.0 < east < 15.1


def test_quantize_example(trained, sample_dir):
    pytest.importorskip("onnx")
    work, bundle = trained
    out = run("quantize.py", bundle, "--calibration", sample_dir, "--out", work / "int8",
              "--count", "64", cwd=work)
    assert "int8 bundle" in out and "bit agreement with fp32" in out and "MB ->" in out


def test_edge_client_example_against_rsir_serve(trained, sample_dir):
    pytest.importorskip("fastapi")
    work, bundle = trained
    db = work / "served.db"
    subprocess.run([sys.executable, "-m", "rsir_sdk.cli", "index", str(bundle), str(sample_dir),
                    "--uri", str(db), "--collection", "scenes", "--label-from", "parent",
                    "--no-progress"], check=True, capture_output=True, timeout=300)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RSIR_READ_TOKEN": "read-token-for-the-example-test"}
    server = subprocess.Popen(
        [sys.executable, "-m", "rsir_sdk.cli", "serve", str(bundle), "--uri", str(db),
         "--collection", "scenes", "--port", str(port), "--archive-root", str(sample_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("rsir serve did not become ready")
        out = run("edge_client.py", bundle, sample_dir / "River" / "River_10.jpg",
                  "--url", f"http://127.0.0.1:{port}", "--token", env["RSIR_READ_TOKEN"], cwd=work)
        assert "River" in out
        # only the codes travel: bits/8 bytes of retrieval code plus fine_bits/8 of fine code
        from rsir_sdk import Bundle

        b = Bundle.load(bundle)
        sent = int(re.search(r"sent (\d+) bytes of code", out).group(1))
        assert b.fine_bits and sent == b.bits // 8 + b.fine_bits // 8, out
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_edge_client_interrupted_while_waiting_is_one_line(trained, sample_dir):
    """A Ctrl-C while the service did not answer printed a 59-line traceback through httpcore."""
    import signal
    import threading

    work, bundle = trained
    connected = threading.Event()
    with socket.socket() as silent:                   # takes the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        held = []

        def accept():
            conn, _ = silent.accept()
            held.append(conn)
            connected.set()

        threading.Thread(target=accept, daemon=True).start()
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "edge_client.py"), str(bundle),
             str(sample_dir / "River" / "River_10.jpg"), "--url",
             f"http://127.0.0.1:{silent.getsockname()[1]}", "--token", "t"],
            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # a terminal's Ctrl-C: SIGINT as Python takes it (a background job of a script,
            # as CI runs, starts with SIGINT ignored, and Python keeps it so)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert connected.wait(120), "the example never connected"
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            for conn in held:
                conn.close()
    assert proc.returncode == 130 and err.strip() == "interrupted", err
