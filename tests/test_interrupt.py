"""Ctrl-C in a real terminal during `rsir index`, and Milvus Lite's server process.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group. The test runs
`rsir index` as the session leader of a pseudo-terminal (as a shell runs a job) and types
Ctrl-C (``\\x03``) into the terminal once some rows are written: one line, exit status 130, the
Milvus Lite file intact, and the re-run indexes the rest with every image exactly once. The
Milvus Lite server must not be in that process group (or it would die mid-request and gRPC
would print tracebacks), and closing a store must stop it.
"""

import json
import os
import pty
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rsir_sdk import MilvusCodeStore
from rsir_sdk.store import lite

ROOT = Path(__file__).resolve().parents[1]

#: `rsir index` with decoding slowed down (so Ctrl-C lands mid-run) and a marker file written
#: after the first successful upsert (so the test knows rows are in)
DRIVER = textwrap.dedent(
    r"""
    import os, sys, time
    marker = sys.argv[1]
    from rsir_sdk import cli, encode_pipeline, store

    upsert = store.MilvusCodeStore.insert  # the write rsir index makes

    def patched_upsert(self, *a, **kw):
        out = upsert(self, *a, **kw)
        if not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(str(os.getpid()))
        return out

    store.MilvusCodeStore.insert = patched_upsert
    prepare = encode_pipeline._prepare

    def slow_prepare(*a, **kw):
        time.sleep(0.03)
        return prepare(*a, **kw)

    encode_pipeline._prepare = slow_prepare
    sys.exit(cli.main(sys.argv[2:]))
    """
)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("GRPC_VERBOSITY", None)  # the SDK must silence gRPC by itself
    return env


def _sigint_default() -> None:
    """In the child before exec: SIGINT back to its default. A suite started as a background job
    (`cmd &` in a script, nohup) inherits SIGINT *ignored*, and Python then never raises
    KeyboardInterrupt; these tests model a foreground job, whose Ctrl-C arrives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    if int(fh.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _read_all(fd: int, until: float) -> bytes:
    data = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal closed: the child exited
                break
            if not chunk:
                break
            data += chunk
    return data


def test_ctrl_c_in_a_terminal_during_index(tmp_path, sample_images, rp_bundle):
    archive = tmp_path / "archive"
    for p, label in sample_images:
        (archive / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, archive / label / p.name)
    db = tmp_path / "rsir.db"
    marker = tmp_path / "first-upsert"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = ["index", str(rp_bundle[0]), str(archive), "--uri", str(db), "--collection", "scenes",
            "--label-from", "parent", "--batch-size", "8", "--upsert-batch", "16", "--workers", "1",
            "--no-progress", "--report", str(tmp_path / "failed.csv")]

    pid, fd = pty.fork()
    if pid == 0:  # the child: session leader with the pty as its controlling terminal
        try:
            os.chdir(tmp_path)
            _sigint_default()
            os.execve(sys.executable, [sys.executable, str(driver), str(marker), *args], _env())
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        output += _read_all(fd, time.monotonic() + 0.1)
    assert marker.exists(), output.decode(errors="replace")
    servers = [c for c in _children(pid) if b"milvus_lite" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(servers) == 1
    assert os.getpgid(servers[0]) != os.getpgid(pid)  # Ctrl-C does not reach the Lite server
    os.write(fd, b"\x03")  # Ctrl-C typed into the terminal: SIGINT to the foreground group
    output += _read_all(fd, time.monotonic() + 60)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace").replace("\r", "")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130, text
    lines = [x for x in text.splitlines() if x.strip() and x.strip() != "^C"]
    assert len(lines) == 1, text
    assert lines[0].startswith("rsir index: interrupted after indexing ") and "re-run" in lines[0]
    indexed = int(lines[0].split("after indexing ")[1].split()[0])
    assert 0 < indexed < len(sample_images)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{servers[0]}") and time.monotonic() < deadline:
        time.sleep(0.1)  # closing the store stopped its server
    assert not os.path.exists(f"/proc/{servers[0]}")

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    con.close()
    rerun = subprocess.run([sys.executable, "-m", "rsir_sdk.cli", *args, "--json"], env=_env(),
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert rerun.returncode == 0 and rerun.stderr == "", rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["skipped"] >= indexed and summary["skipped"] + summary["indexed"] == len(sample_images)
    assert summary["count"] == len(sample_images)
    with MilvusCodeStore(str(db), "scenes", create=False) as s:
        ids = list(s.iter_ids())  # one per stored row
    assert len(ids) == len(set(ids)) == len(sample_images)  # every image once


def test_lite_server_has_its_own_session_and_close_stops_it(tmp_path):
    db = tmp_path / "own.db"
    with MilvusCodeStore(str(db), "c", bits=64) as store:
        store.upsert(["a"], np.zeros((1, 8), np.uint8))
        servers = lite.lite_server_pids(db)
        assert len(servers) == 1
        assert os.getpgid(servers[0]) != os.getpgid(0) and os.getsid(servers[0]) == servers[0]
        with MilvusCodeStore(str(db), "c") as again:  # a second user of the same file
            assert again.count() == 1
        assert lite.lite_server_pids(db) == servers  # still served for the first store
    assert lite.lite_server_pids(db) == []  # the last close stopped the server: the file is free
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from rsir_sdk import MilvusCodeStore; "
         "s = MilvusCodeStore(sys.argv[1], 'c'); print(s.count()); s.close()", str(db)],
        env=_env(), capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip() == "1" and probe.stderr == "", probe.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_to_the_process_alone_still_exits_130(tmp_path, sample_images, rp_bundle, sig):
    """``kill -INT <pid>`` (not the group): the same one line and exit status. SIGTERM (what
    ``docker stop`` and systemd send) too: it ended the run without a word."""
    archive = tmp_path / "a"
    for p, label in sample_images[:60]:
        (archive / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, archive / label / p.name)
    marker = tmp_path / "m"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(marker), "index", str(rp_bundle[0]), str(archive),
         "--uri", str(tmp_path / "x.db"), "--collection", "c", "--batch-size", "4",
         "--upsert-batch", "4", "--workers", "1", "--no-progress"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        preexec_fn=_sigint_default)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [x for x in err.splitlines() if x.strip()] == [err.strip()]
    assert "interrupted after indexing" in err and "Traceback" not in err


def test_ctrl_c_just_after_an_insert_reached_milvus_stores_no_id_twice(
        tmp_path, sample_dir, rp_bundle, monkeypatch):
    """Ctrl-C can land after Milvus took an insert but before the client heard back. The
    interrupted run then writes what it holds as upserts (an insert would store those ids a
    second time), and the re-run adds exactly the rest."""
    from rsir_sdk import Retriever
    from rsir_sdk.ingest import IngestInterrupted

    real_insert = MilvusCodeStore.insert
    calls = []

    def insert_then_ctrl_c(self, *a, **kw):
        out = real_insert(self, *a, **kw)  # the rows are in the Milvus Lite file
        calls.append(out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(MilvusCodeStore, "insert", insert_then_ctrl_c)
    db = str(tmp_path / "rsir.db")
    r = Retriever(rp_bundle[0], uri=db, collection="scenes")
    try:
        try:
            r.index(sample_dir, label_from="parent", upsert_batch=16, batch_size=8, workers=1)
            raise AssertionError("the interrupt did not reach index()")
        except IngestInterrupted as stop:
            indexed = stop.summary.indexed
        assert calls == [16, 16]
        assert indexed == 32 and r.count() == 32  # the second batch once, not twice
        monkeypatch.setattr(MilvusCodeStore, "insert", real_insert)
        summary = r.index(sample_dir, label_from="parent", upsert_batch=16)
        assert summary.skipped == 32 and summary.indexed == 168
        ids = list(r.store.iter_ids())
        assert len(ids) == len(set(ids)) == r.count() == 200
    finally:
        r.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_during_a_milvus_request_is_held_until_it_returns(sig):
    """SIGINT inside a request is raised when the request returns (a KeyboardInterrupt inside
    grpc can wedge the channel, and rsir index's write after Ctrl-C then hung); a second one
    raises at once; the previous handler is back afterwards. SIGTERM likewise while it
    interrupts as Ctrl-C does (an rsir command): it hung the same write, or ended the process
    by grpc's abort (status -6)."""
    from rsir_sdk.store import rpc

    # Python's own handler, as in a CLI process (an earlier test in this process may have left
    # another one installed; it is put back at the end)
    before = signal.signal(sig, signal.default_int_handler)
    try:
        _held_then_raised(rpc, sig)
    finally:
        signal.signal(sig, before)


def _held_then_raised(rpc, sig):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with rpc.interrupts_held():
            os.kill(os.getpid(), sig)
            time.sleep(0.05)  # the handler has run: nothing was raised inside
            done.append("request finished")
    assert done == ["request finished"]
    assert signal.getsignal(sig) is signal.default_int_handler

    with pytest.raises(KeyboardInterrupt):
        with rpc.interrupts_held():
            os.kill(os.getpid(), sig)
            time.sleep(0.05)
            os.kill(os.getpid(), sig)  # the second signal: raised here
            time.sleep(0.05)
            done.append("not reached")
    assert done == ["request finished"]
    assert signal.getsignal(sig) is signal.default_int_handler


def test_a_sigterm_is_held_for_a_few_seconds_at_most(monkeypatch):
    """A process manager sends one SIGTERM (then SIGKILL, without a word): a request stuck on a
    Milvus that does not answer is interrupted after ``SIGTERM_HOLD`` seconds, not held until
    the SIGKILL."""
    from rsir_sdk.store import rpc

    monkeypatch.setattr(rpc, "SIGTERM_HOLD", 0.3)
    before = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            with rpc.interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)                      # the stuck request
        assert 0.25 < time.monotonic() - t0 < 3
        with pytest.raises(KeyboardInterrupt):     # a request that returns in time: at its end
            with rpc.interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
        time.sleep(0.5)                            # and no late signal from the hold's timer
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_sigterm_with_its_default_action_is_not_held():
    """Outside an rsir command SIGTERM keeps its default action (the host program decides):
    the store does not turn it into an interrupt."""
    from rsir_sdk.store import rpc

    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with rpc.interrupts_held():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_while_a_new_lite_file_opens_leaves_the_connection_usable(tmp_path, monkeypatch):
    """The first write to a new Milvus Lite file starts its server (a second or two). A Ctrl-C
    then closed the connection half-open, and the write rsir index makes of what it encoded
    failed with "the connection ... is closed" (exit 1, nothing written). The open finishes,
    the interrupt is raised after it, and the next write goes through."""
    from rsir_sdk.store import connect

    opened = connect.Connection._new_client

    def interrupted_while_starting(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C while the server starts
        time.sleep(0.05)
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(connect.Connection, "_new_client", interrupted_while_starting)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with MilvusCodeStore(str(tmp_path / "new.db"), "c", bits=64) as s:
            with pytest.raises(KeyboardInterrupt):
                s.upsert(["a"], np.zeros((1, 8), np.uint8))
            monkeypatch.setattr(connect.Connection, "_new_client", opened)
            s.upsert(["b"], np.zeros((1, 8), np.uint8))   # the write made after Ctrl-C
            assert s.count() >= 1 and "b" in s.existing_ids(["a", "b"])
    finally:
        signal.signal(signal.SIGINT, before)
