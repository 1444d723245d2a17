"""Milvus Lite opens that survive a slow start, a file created by the first write only, and no
log files left behind by killed processes (issue 24, items 3, 6 and 8).

Real Milvus Lite servers throughout: a "slow start" is the real server process the store
spawned, stopped with SIGSTOP right after the spawn and continued with SIGCONT (what a loaded
CPU does to it); the commands are the real ``rsir`` run in subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rsir_sdk import MilvusCodeStore
from rsir_sdk.errors import CollectionNotFoundError, StoreError
from rsir_sdk.store import ConnectOptions, lite

ROOT = Path(__file__).resolve().parents[1]
CODES = np.arange(16, dtype=np.uint8).reshape(2, 8)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _on_spawn(monkeypatch, action) -> list[subprocess.Popen]:
    """Run ``action(process)`` on every Milvus Lite server process the store spawns, right
    after the spawn; returns the processes spawned."""
    spawned: list[subprocess.Popen] = []
    original = lite._IsolatingSubprocess.Popen

    def popen(*args, **kwargs):
        proc = original(*args, **kwargs)
        action(proc)
        spawned.append(proc)
        return proc

    monkeypatch.setattr(lite._IsolatingSubprocess, "Popen", staticmethod(popen))
    return spawned


def _stall(seconds: float | None):
    """SIGSTOP the process, and SIGCONT it ``seconds`` later (``None``: never)."""
    def action(proc: subprocess.Popen) -> None:
        _signal(proc.pid, signal.SIGSTOP)
        if seconds is not None:
            timer = threading.Timer(seconds, _signal, (proc.pid, signal.SIGCONT))
            timer.daemon = True
            timer.start()
    return action


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text, text
    assert "illegal connection params" not in text, text
    return text


def test_an_open_waits_for_a_lite_server_stalled_at_start(tmp_path, monkeypatch):
    db = str(tmp_path / "slow.db")
    spawned = _on_spawn(monkeypatch, _stall(2.0))
    t0 = time.monotonic()
    with MilvusCodeStore(db, "c", bits=64) as store:  # a new file: the first write opens it
        assert store.upsert(["a", "b"], CODES) == 2
    assert time.monotonic() - t0 >= 2.0 and len(spawned) == 1
    for round_ in range(3):  # an existing file: the open itself waits
        t0 = time.monotonic()
        with MilvusCodeStore(db, "c", create=False) as store:
            assert store.count() == 2
            assert [h.id for h in store.search(CODES[1:], k=1)[0]] == ["b"]
        assert time.monotonic() - t0 >= 2.0, round_
    assert len(spawned) == 4 and all(p.poll() is not None for p in spawned)
    assert lite.lite_server_pids(db) == []


def test_a_lite_server_that_never_listens_is_one_line(tmp_path, monkeypatch):
    db = str(tmp_path / "stuck.db")
    with MilvusCodeStore(db, "c", bits=64) as store:
        store.upsert(["a"], CODES[:1])
    spawned = _on_spawn(monkeypatch, _stall(None))
    t0 = time.monotonic()
    with pytest.raises(StoreError) as exc:
        MilvusCodeStore(db, "c", connect=ConnectOptions(lite_start=2.0))
    text = _one_line(exc)
    assert "did not start" in text and "did not listen within 2 s" in text
    assert 2.0 <= time.monotonic() - t0 < 15
    assert len(spawned) == 1 and spawned[0].poll() is not None  # stopped, not left behind
    assert lite.lite_server_pids(db) == []


def test_a_lite_server_that_dies_at_start_is_one_line(tmp_path, monkeypatch):
    db = str(tmp_path / "dies.db")
    with MilvusCodeStore(db, "c", bits=64) as store:
        store.upsert(["a"], CODES[:1])
    spawned = _on_spawn(monkeypatch, lambda proc: _signal(proc.pid, signal.SIGKILL))
    with pytest.raises(StoreError) as exc:
        MilvusCodeStore(db, "c")
    assert f"the Milvus Lite server for {db} did not start" in _one_line(exc)
    assert len(spawned) == 1
    monkeypatch.undo()
    with MilvusCodeStore(db, "c") as store:  # nothing was damaged: it opens afterwards
        assert store.count() == 1


def test_lite_files_that_cannot_be_opened_are_one_line(tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError) as exc:
        MilvusCodeStore(str(garbage), "c", bits=64)
    assert "not a Milvus Lite database file" in _one_line(exc)
    with pytest.raises(StoreError) as exc:
        MilvusCodeStore(str(tmp_path / "no" / "such" / "x.db"), "c", bits=64)
    assert "does not exist" in _one_line(exc)
    # a temp folder too deep for the server's Unix socket: the server would run but never
    # listen; refused at once instead of after the start wait
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    t0 = time.monotonic()
    with pytest.raises(StoreError) as exc:
        MilvusCodeStore(str(tmp_path / "deep.db"), "c", bits=64)
    assert "socket" in _one_line(exc) and "TMPDIR" in str(exc.value)
    assert time.monotonic() - t0 < 2 and not (tmp_path / "deep.db").exists()


def test_a_missing_lite_file_is_created_by_the_first_write_only(tmp_path):
    db = tmp_path / "later.db"
    with pytest.raises(CollectionNotFoundError, match=r"Milvus Lite file .*later\.db does not exist"):
        MilvusCodeStore(str(db), "c", create=False)
    with MilvusCodeStore(str(db), "c", bits=64) as store:
        assert store.count() == 0 and store.get(["a"]) == [] and not store.info()["exists"]
        assert store.existing_ids(["a"]) == set() and store.delete(["a"]) == 0
        with pytest.raises(CollectionNotFoundError, match="does not exist"):
            store.search(CODES, k=1)
        assert not db.exists() and lite.lite_server_pids(db) == []  # no file, no server
        assert store.upsert([], np.zeros((0, 8), np.uint8)) == 0 and not db.exists()
        store.upsert(["a"], CODES[:1])
        assert db.exists() and store.count() == 1
    with MilvusCodeStore(str(db), "c", create=False) as store:
        assert store.count() == 1


def _rsir(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", "import sys; from rsir_sdk.cli import main; sys.exit(main())",
                           *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_failing_commands_leave_no_lite_file(tmp_path, rp_bundle, sample_images):
    bundle = rp_bundle[0]
    image = sample_images[0][0]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not an archive")
    runs = {
        "index-missing-folder": ("index", bundle, tmp_path / "nope"),
        "index-a-file": ("index", bundle, a_file),
        "search-missing-collection": ("search", bundle, image),
        "search-missing-image": ("search", bundle, tmp_path / "missing.jpg"),
        "serve-missing-collection": ("serve", bundle, "--port", "0"),
    }
    for name, args in runs.items():
        db = tmp_path / f"{name[:20]}.db"
        done = _rsir(*args, "--uri", db, cwd=tmp_path)
        assert done.returncode != 0, (name, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        assert not db.exists(), (name, done.stderr)
        assert "nothing was written to it" not in done.stderr, (name, done.stderr)
    assert sorted(p.suffix for p in tmp_path.iterdir() if p.suffix == ".db") == []


def test_logs_of_killed_processes_are_removed(tmp_path, monkeypatch):
    temp = tmp_path / "t"
    temp.mkdir()
    db = tmp_path / "k.db"
    driver = ("import numpy as np, os, sys\n"
              "from rsir_sdk import MilvusCodeStore\n"
              "s = MilvusCodeStore(sys.argv[1], 'c', bits=64)\n"
              "s.upsert(['a'], np.zeros((1, 8), np.uint8))\n"
              "print(os.getpid(), flush=True)\n"
              "sys.stdin.read()\n")
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = subprocess.Popen([sys.executable, "-c", driver, str(db)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        pid = int(proc.stdout.readline())
        log = temp / f"rsir-milvus-lite-{pid}.log"
        assert log.exists()
    finally:
        proc.kill()
        proc.wait()
    assert log.exists() and log.stat().st_size == 0  # a killed process cannot remove it
    kept = temp / "rsir-milvus-lite-999999999.log"  # a dead process's log with content: kept
    kept.write_text("F20261204 crash explained here\n")
    alive = temp / f"rsir-milvus-lite-{os.getppid()}.log"  # a running process's: kept
    alive.touch()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    lite.wait_for_lite_file(db, 30)  # the killed run's orphaned server exits on its own
    with MilvusCodeStore(str(db), "c") as store:  # starting a server sweeps the temp folder
        assert store.count() == 1
        assert not log.exists() and kept.exists() and alive.exists()


def test_a_file_held_by_a_running_program_is_refused_at_once(tmp_path):
    db = tmp_path / "held.db"
    driver = ("import numpy as np, sys\n"
              "from rsir_sdk import MilvusCodeStore\n"
              "s = MilvusCodeStore(sys.argv[1], 'c', bits=64)\n"
              "s.upsert(['a'], np.zeros((1, 8), np.uint8))\n"
              "print('ready', flush=True)\n"
              "sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", driver, str(db)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match="open in another running program"):
            lite.wait_for_lite_file(db, 30)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    lite.wait_for_lite_file(db, 30)  # a client that closed cleanly leaves the file free
    with MilvusCodeStore(str(db), "c") as store:
        assert store.count() == 1


RACE_WRITER = """
import sys, time
import numpy as np
from rsir_sdk import MilvusCodeStore
from rsir_sdk.errors import StoreError
db, start, ids = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(",")
time.sleep(max(0.0, start - time.time()))          # all writers open the new file at once
try:
    with MilvusCodeStore(db, "c", bits=64, fine_bits=64) as s:
        codes = np.zeros((len(ids), 8), np.uint8)
        s.upsert(ids, codes, fine=codes)
        time.sleep(1.0)                            # hold the file while the others try
    print("wrote", len(ids))
except StoreError as exc:
    print("refused", exc)
"""


def test_programs_opening_one_new_lite_file_at_once_never_share_it(tmp_path):
    """Two ``rsir index`` runs into one new file: Milvus Lite's own lock file is removed by a
    server object whose start failed, a third opener then started a second server on the
    same data, and both runs reported success with every item stored twice (or its fine code
    missing). Now one program holds the file; the others are refused in one line."""
    for attempt in range(3):
        db = tmp_path / f"race{attempt}.db"
        start = time.time() + 4.0
        procs = [subprocess.Popen([sys.executable, "-c", RACE_WRITER, str(db), str(start),
                                   ",".join(f"{w}-{i}" for i in range(50))],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for w in range(3)]
        outs = [p.communicate(timeout=180) for p in procs]
        said = [out.strip() for out, _ in outs]
        assert all(not err.strip() for _, err in outs), outs
        wrote = [s for s in said if s.startswith("wrote")]
        refused = [s for s in said if s.startswith("refused")]
        assert len(wrote) + len(refused) == 3 and wrote, said
        for line in refused:
            assert "open in another running program" in line, line
        with MilvusCodeStore(str(db), "c") as s:
            ids = list(s.iter_ids())
            assert s.count() == len(ids) == len(set(ids)) == 50 * len(wrote), said
            hits = s.search(None, k=1000, fine=np.zeros((1, 8), np.uint8), mode="appearance")
            assert sorted(h.id for h in hits[0]) == sorted(ids)   # every fine code there


def test_threads_writing_first_to_a_new_lite_file_all_succeed(tmp_path):
    """A store on a missing file opens it at the first write: threads that wrote first at
    once read "the connection is closed" (7 of 8) while one of them opened it."""
    store = MilvusCodeStore(str(tmp_path / "threads.db"), "c", bits=64)
    errors: list[BaseException] = []
    gate = threading.Barrier(8)

    def write(t: int) -> None:
        gate.wait()
        try:
            store.upsert([f"t{t}-{i}" for i in range(5)], np.full((5, 8), t, np.uint8))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    with store:
        assert not errors, errors
        assert store.count() == 40


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (root only: mount), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_named_and_the_rerun_is_exact(small_disk, rp_bundle, sample_dir, capfd):
    """Milvus Lite answers a full disk with "Unexpected error in RPC handling"; the user read
    that, with an internal table name, and nothing about the disk."""
    from rsir_sdk.cli import main

    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - 60_000))
    db = small_disk / "full.db"
    args = ["index", str(rp_bundle[0]), str(sample_dir), "--uri", str(db), "--collection", "c",
            "--label-from", "parent", "--no-progress", "--upsert-batch", "8"]
    code = main(args)
    err = capfd.readouterr().err
    assert code == 1, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "is full" in lines[0] and "MB free" in lines[0], err
    assert "__" not in lines[0]                                   # no internal table name
    filler.unlink()
    assert main(args) == 0
    with MilvusCodeStore(str(db), "c") as s:
        ids = list(s.iter_ids())
        assert s.count() == len(set(ids)) == 200


def test_a_lite_path_under_the_home_folder_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with MilvusCodeStore("~/home.db", "c", bits=64) as store:
        store.upsert(["a"], np.zeros((1, 8), np.uint8))
        assert store.uri == str(tmp_path / "home.db")
    assert (tmp_path / "home.db").is_file()


def test_a_closed_store_refuses_writes_and_starts_no_server(tmp_path):
    """Reads after close() were refused, writes were not: pymilvus' write connection started
    a new Lite server (never stopped) and the rows were stored."""
    db = tmp_path / "closed.db"
    store = MilvusCodeStore(str(db), "c", bits=64)
    store.upsert(["a"], np.zeros((1, 8), np.uint8))
    store.close()
    for write in (lambda: store.upsert(["z"], np.ones((1, 8), np.uint8)),
                  lambda: store.insert(["y"], np.ones((1, 8), np.uint8))):
        with pytest.raises(StoreError, match="is closed"):
            write()
    assert lite.lite_server_pids(db) == []
    with MilvusCodeStore(str(db), "c") as again:
        assert sorted(again.iter_ids()) == ["a"]


def test_a_store_dropped_without_close_frees_its_file(tmp_path):
    """A notebook cell that makes a store again dropped the old one without close(): its
    Lite server and the file's lock stayed until the kernel restarted."""
    import gc

    db = tmp_path / "dropped.db"
    store = MilvusCodeStore(str(db), "c", bits=64)
    store.upsert(["a"], np.zeros((1, 8), np.uint8))
    assert lite.lite_server_pids(db)
    del store
    gc.collect()
    deadline = time.monotonic() + 10
    while lite.lite_server_pids(db):
        assert time.monotonic() < deadline, "the dropped store's server still runs"
        time.sleep(0.1)
    code = ("import sys\nfrom rsir_sdk import MilvusCodeStore\n"
            "with MilvusCodeStore(sys.argv[1], 'c') as s: print(s.count())")
    probe = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True,
                           text=True, timeout=120)
    assert probe.stdout.strip() == "1", probe.stderr[-500:]


def test_a_collection_dropped_under_an_open_store_is_not_found(tmp_path):
    """A service's store whose collection another program dropped answered 503 (retry) with
    Milvus' text; it is a CollectionNotFoundError (404) now."""
    from rsir_sdk.errors import CollectionNotFoundError

    db = str(tmp_path / "dropped.db")
    with MilvusCodeStore(db, "c", bits=64) as store:
        store.upsert(["a"], np.zeros((1, 8), np.uint8))
        with MilvusCodeStore(db, "c") as other:
            other.drop()
        with pytest.raises(CollectionNotFoundError, match="does not exist") as err:
            store.search(np.zeros((1, 8), np.uint8), k=1)
        assert "\n" not in str(err.value)


DROPPED_DURING_A_RELEASE = """
import gc, sys
import numpy as np
from rsir_sdk import MilvusCodeStore
import rsir_sdk.store.lite as lite
d = sys.argv[1]
gc.disable()                                   # so that the dropped store waits for our pass
a = MilvusCodeStore(f"{d}/a.db", "x", bits=64)
a.upsert(["1"], np.zeros((1, 8), np.uint8))
b = MilvusCodeStore(f"{d}/b.db", "x", bits=64)
b.upsert(["1"], np.zeros((1, 8), np.uint8))
del a                                          # a notebook cell run again
stop = lite.stop_server
def stop_server(key):
    gc.collect()                               # a collection pass that starts in here
    stop(key)
lite.stop_server = stop_server
b.close()
print("closed", flush=True)
"""


def test_a_store_collected_while_another_is_released_does_not_hang(tmp_path):
    """The finalizer of a store dropped without close() ran inside a garbage-collection pass,
    which can start while this module's lock is held (here: in stop_server): its release then
    waited on that lock forever (review of 2026-12-07)."""
    run = subprocess.run([sys.executable, "-c", DROPPED_DURING_A_RELEASE, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "closed", run.stderr[-1000:]
    deadline = time.monotonic() + 15
    while lite.lite_server_pids(tmp_path / "a.db"):   # and the dropped store's server is gone
        assert time.monotonic() < deadline
        time.sleep(0.1)
