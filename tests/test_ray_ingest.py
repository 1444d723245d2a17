"""`rsir index --engine ray`: decode + encode in Ray actors (a real local Ray, 2 workers), writes
to a real Milvus server; the same rows as the single-process run; killed part-way and re-run,
every image exactly once."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image, ImageOps

from rsir_sdk import MilvusCodeStore, Retriever
from rsir_sdk.cli import main
from rsir_sdk.options import IngestOptions, RayOptions
from rsir_sdk.ray_head import RayUnavailableError, connect
from rsir_sdk.ray_ingest import _import_ray

pytest.importorskip("ray")
pytestmark = pytest.mark.server

KILL_AFTER_WRITES = """
import os, signal, sys
from rsir_sdk import cli, store
n, calls = int(sys.argv[1]), []
insert = store.MilvusCodeStore.insert  # the write the ingestion makes
def killing_insert(self, *a, **kw):
    out = insert(self, *a, **kw)
    calls.append(1)
    if len(calls) == n:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    return out
store.MilvusCodeStore.insert = killing_insert
sys.exit(cli.main(sys.argv[2:]))
"""

VARIANTS = {"orig": lambda im: im, "mirror": ImageOps.mirror, "flip": ImageOps.flip,
            "rot90": lambda im: im.rotate(90), "rot270": lambda im: im.rotate(270)}


@pytest.fixture(scope="module")
def archive_1000(tmp_path_factory, sample_images):
    """1,000 real scenes: the 200 sample images in five orientations, as PNG, 2 bad files."""
    root = tmp_path_factory.mktemp("ray-archive")
    for name, fn in VARIANTS.items():
        for p, label in sample_images:
            dst = root / label / f"{p.stem}_{name}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            fn(Image.open(p).convert("RGB")).save(dst)
    (root / "bad").mkdir()
    (root / "bad" / "empty.png").write_bytes(b"")
    (root / "bad" / "cut.png").write_bytes((root / "Forest").glob("*.png").__next__().read_bytes()[:300])
    return root


def rows(uri: str, collection: str, ids: list[str]) -> dict[str, tuple[bytes, str]]:
    with MilvusCodeStore(uri, collection, create=False) as s:
        assert s.count() == len(ids)
        return {it.id: (it.code.tobytes(), it.label) for it in s.get(ids)}


def index_args(bundle, archive, uri, collection, *extra):
    return ["index", str(bundle), str(archive), "--uri", uri, "--collection", collection,
            "--label-from", "parent", "--no-progress", "--json", *map(str, extra)]


def test_ray_engine_equals_single_process_and_resumes_after_a_kill(
        server_uri, rp_bundle, archive_1000, tmp_path, capsys, monkeypatch):
    """One IngestOptions value through both engines (only ``engine`` differs): the same rows."""
    monkeypatch.chdir(tmp_path)  # default report files (<collection>-failed.csv) land here
    bundle = rp_bundle[0]
    options = IngestOptions(label_from="parent", workers=2, upsert_batch=256)
    with Retriever(bundle, uri=server_uri, collection="single") as r:
        single = r.index(archive_1000, options)
    assert single.indexed == 1000 and len(single.failed) == 2  # 2 bad files
    ids = sorted(p.relative_to(archive_1000).as_posix() for p in archive_1000.rglob("*.png")
                 if p.parent.name != "bad")
    expected = rows(server_uri, "single", ids)
    capsys.readouterr()

    writes = []
    insert = MilvusCodeStore.insert

    def counted(self, *a, **kw):
        writes.append(1)
        return insert(self, *a, **kw)

    monkeypatch.setattr(MilvusCodeStore, "insert", counted)
    ray = _import_ray()
    connection = connect(ray, None, 2)   # one local Ray for the runs below
    try:
        with Retriever(bundle, uri=server_uri, collection="on_ray") as r:
            # GPUs the cluster lacks: the actors waited for them forever, at 0 and no word
            with pytest.raises(RayUnavailableError, match="the local Ray has .* GPU"):
                r.index(archive_1000, options, engine="ray",
                        ray=RayOptions(threads_per_worker=1, gpus_per_worker=1000))
            assert r.count() == 0 and writes == []
            # rows written every flush_seconds as they come, as on the local engine (blocks of
            # upsert_batch rows reached the driver only whole: 4 writes of 256 here, and a
            # Ctrl-C after a minute of encoding had written nothing)
            summary = r.index(archive_1000, options.replace(flush_seconds=0.01),
                              report=tmp_path / "ray-failed.csv", engine="ray",
                              ray=RayOptions(threads_per_worker=1))
        monkeypatch.setattr(MilvusCodeStore, "insert", insert)
        assert len(writes) >= 10, f"{len(writes)} writes of 1000 rows"
        out, err = capsys.readouterr()
        assert summary.indexed == 1000 and len(summary.failed) == 2, summary.reasons()
        assert {f.id for f in summary.failed} == {"bad/cut.png", "bad/empty.png"}
        assert {(f.id, f.stage) for f in summary.failed} == {(f.id, f.stage) for f in single.failed}
        assert (tmp_path / "ray-failed.csv").is_file()
        assert rows(server_uri, "on_ray", ids) == expected  # same ids, codes and labels
        assert out == "" and err.strip() == ""  # nothing of Ray's start-up or logs reaches the user

        # a run killed part-way: its driver SIGKILLs its whole process group (itself and its
        # own local Ray) right after its third write of 50 rows
        cmd = [sys.executable, "-c", KILL_AFTER_WRITES, "3",
               *index_args(bundle, archive_1000, server_uri, "killed", "--engine", "ray",
                           "--workers", 2, "--upsert-batch", 50, "--report", tmp_path / "k.csv")]
        proc = subprocess.run(cmd, start_new_session=True, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        with MilvusCodeStore(server_uri, "killed", create=False) as s:
            written = s.count()
        assert 0 < written < 1000, f"the kill landed at {written} rows"
        # ... and run again (on this process's Ray, which a run keeps): every image exactly
        # once, the same rows as the single-process run
        code = main(index_args(bundle, archive_1000, server_uri, "killed", "--engine", "ray",
                               "--workers", 2))
        summary = json.loads(capsys.readouterr().out)
        assert ray.is_initialized()
    finally:
        connection.close()
    assert code == 3 and summary["skipped"] >= written and \
        summary["skipped"] + summary["indexed"] == 1000
    assert rows(server_uri, "killed", ids) == expected


@pytest.fixture
def silent_port():
    """A port that takes TCP connections and never answers (a cluster that does not speak)."""
    import socket
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_ray_engine_says_what_is_wrong_when_it_cannot_start(rp_bundle, sample_dir, tmp_path,
                                                            capsys, monkeypatch, silent_port):
    monkeypatch.chdir(tmp_path)  # the default report file lands here, and is removed

    def run(*extra):
        began = time.monotonic()
        code = main(index_args(rp_bundle[0], sample_dir, str(tmp_path / "x.db"), "x",
                               "--engine", "ray", *extra))
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Ray" in err, err
        assert not list(tmp_path.glob("*.csv"))
        return err, time.monotonic() - began

    # nothing listens there: said at once (Ray's client tried for 30 s before saying so)
    err, took = run("--address", "ray://127.0.0.1:9")
    assert "nothing listens at 127.0.0.1:9 (connection refused)" in err and took < 10, (err, took)
    # RAY_ADDRESS names the cluster when --address does not (it reached the local Ray's
    # helper, which refused: "num_cpus and num_gpus must not be provided")
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:9")
    err, _ = run()
    assert "the Ray cluster at ray://127.0.0.1:9 (RAY_ADDRESS)" in err, err
    monkeypatch.delenv("RAY_ADDRESS")
    # something listens but Ray's client gets no answer: Ray's own error, and the usual
    # missing piece of a cluster (its token) named; Ray's client waits 1 s a try, not 5-15 s
    from ray.util.client import worker
    monkeypatch.setattr(worker, "INITIAL_TIMEOUT_SEC", 1)
    monkeypatch.setattr(worker, "MAX_TIMEOUT_SEC", 1)
    err, _ = run("--address", f"ray://127.0.0.1:{silent_port}")
    assert f"cannot connect to the Ray cluster at ray://127.0.0.1:{silent_port}: " in err, err
    if "RAY_AUTH_MODE" not in os.environ:
        assert "needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN" in err, err


def test_addresses_ray_reads_its_own_way_are_left_to_ray(monkeypatch):
    """``local`` is the local helper (``ray.init(address="local")`` in this process forked it),
    a scheme of another client (``anyscale://``) is not probed as a Ray port, an address that
    cannot be read is one line."""
    from rsir_sdk.ray_head import _check_something_listens, cluster_address
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:9")
    assert cluster_address("local") is None and cluster_address(None) == "ray://127.0.0.1:9"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert cluster_address(None) is None and cluster_address("auto") == "auto"
    _check_something_listens("anyscale://my-cluster")  # nothing raised: Ray's to judge
    _check_something_listens("auto")
    with pytest.raises(RayUnavailableError, match="cannot read the Ray address"):
        _check_something_listens("ray://head:port")


class _SlowHead:
    """Stands in for :class:`~rsir_sdk.ray_head.LocalHead` (and the ``ray`` module it would be
    connected with) only where Ray's own start-up times out, a failure a test cannot provoke on
    demand: each call is one try at starting a helper; the first ``failures`` raise Ray's
    start-up timeout. The helper's real start, connection and failure are tested above/below."""

    #: the two start-up time-outs Ray raised in CI on this 2-core machine
    MESSAGES = ("The current node timed out during startup. This could happen because some of "
                "the raylet failed to startup or the GCS has become overloaded.",
                "Timed out waiting for file /tmp/ray/session_x/gcs_server_port_0123")
    address, auth = "127.0.0.1:1", {}

    def __init__(self, failures: int, message: str = MESSAGES[0]):
        self.failures, self.tries, self.closed, self.started = failures, 0, 0, False
        self.message = message
        self.gcs_waits: list[str | None] = []  # RAY_gcs_server_port_wait_time_s at each try
        self.timeouts: list[float] = []
        self.data = type("data", (), {"DataContext": type("DataContext", (), {
            "get_current": staticmethod(lambda: type("ctx", (), {})())})})

    def __call__(self, cpus: int, timeout: float) -> "_SlowHead":
        self.tries += 1
        self.gcs_waits.append(os.environ.get("RAY_gcs_server_port_wait_time_s"))
        self.timeouts.append(timeout)
        if self.tries <= self.failures:
            raise RuntimeError(self.message)
        return self

    def close(self) -> None:
        self.closed += 1

    # the ``ray`` module's part
    def is_initialized(self) -> bool:
        return self.started

    def init(self, **kwargs) -> None:
        self.started = True

    def shutdown(self) -> None:
        self.started = False


@pytest.mark.parametrize("message", _SlowHead.MESSAGES)
def test_a_local_ray_that_times_out_is_started_again(message, monkeypatch, silent_port):
    """Ray gives a local node fixed times to start (the raylet, the GCS port file); on a loaded
    machine one can run out (both did in CI). The engine tries again, giving the GCS longer
    to publish its port; the last time-out is one line that says what to do."""
    from rsir_sdk.errors import RsirError
    from rsir_sdk.ray_head import RAY_LOGS, RETRY_GCS_WAIT_S, START_ATTEMPTS, connect

    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    once = _SlowHead(failures=1, message=message)
    connection = connect(once, None, 2, start_head=once)
    assert connection is not None and once.tries == 2 and once.started
    assert once.gcs_waits == [None, str(RETRY_GCS_WAIT_S)]  # Ray's 30 s first, then longer
    assert once.timeouts[1] > RETRY_GCS_WAIT_S  # the helper is waited for beyond the GCS
    assert "RAY_gcs_server_port_wait_time_s" not in os.environ  # put back as it was
    connection.close()
    assert once.closed == 1 and not once.started
    always = _SlowHead(failures=START_ATTEMPTS, message=message)
    with pytest.raises(RsirError) as err:
        connect(always, None, 2, start_head=always)
    text = str(err.value)
    assert always.tries == START_ATTEMPTS and "\n" not in text
    assert text.startswith("cannot start a local Ray") and "--engine local" in text
    assert RAY_LOGS in text
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "7")  # the user's own wait is kept
    mine = _SlowHead(failures=1, message=message)
    connect(mine, None, 2, start_head=mine)
    assert mine.gcs_waits == ["7", "7"] and os.environ["RAY_gcs_server_port_wait_time_s"] == "7"
    # a cluster address is not retried, and starts no helper
    remote = _SlowHead(failures=0)
    remote.init = lambda **kw: (_ for _ in ()).throw(ConnectionError("refused"))
    with pytest.raises(RsirError):
        connect(remote, f"ray://127.0.0.1:{silent_port}", 2, start_head=remote)
    assert remote.tries == 0


def test_a_real_local_ray_that_cannot_start_is_one_line_and_leaves_nothing(monkeypatch):
    """A GCS given no time to publish its port (a real helper, a real Ray): every try fails,
    the error is one line, and no helper, Ray process or helper log is left behind."""
    import glob
    import tempfile

    from rsir_sdk.errors import RsirError
    from rsir_sdk.ray_head import START_ATTEMPTS, connect
    from rsir_sdk.ray_ingest import _import_ray

    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "0")
    logs_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "rsir-ray-*")))
    ray = _import_ray()
    with pytest.raises(RsirError) as err:
        connect(ray, None, 2)
    text = str(err.value)
    assert "\n" not in text and text.startswith("cannot start a local Ray")
    assert f"after {START_ATTEMPTS} tries" in text and "gcs_server_port" in text
    assert not ray.is_initialized()
    deadline = time.monotonic() + 15  # Ray's processes exit within moments of the helper
    while (left := subprocess.run(["pgrep", "-f", "rsir_sdk.ray_head|gcs_server"],
                                  capture_output=True, text=True).stdout.split()):
        assert time.monotonic() < deadline, left
        time.sleep(0.2)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "rsir-ray-*"))) <= logs_before


CTRL_C_AFTER_WRITES = KILL_AFTER_WRITES.replace("signal.SIGKILL", "signal.SIGINT")
TERM_AFTER_WRITES = KILL_AFTER_WRITES.replace("signal.SIGKILL", "signal.SIGTERM")


def test_ctrl_c_to_the_group_on_ray_is_one_line_130_and_the_rerun_finishes(
        rp_bundle, sample_dir, tmp_path):
    """A terminal's Ctrl-C reaches the whole process group. It reached the local Ray too: its
    GCS died and took rsir down (exit 1, no word), its actors' deaths were printed on stdout,
    and a Ctrl-C while the new Lite file opened lost the encoded rows ("the connection is
    closed"); and a Ray Data thread that dropped its references after ray.shutdown() made
    Ray's core end the process (exit 1, no word; 4 of 10 runs). Now: one line, exit 130,
    nothing on stdout; the re-run indexes the rest once."""
    db = str(tmp_path / "c.db")
    args = ["index", str(rp_bundle[0]), str(sample_dir), "--uri", db, "--collection", "c",
            "--label-from", "parent", "--no-progress", "--engine", "ray", "--workers", "2",
            "--batch-size", "8", "--upsert-batch", "8"]

    def sigint_default() -> None:
        os.setsid()                                  # a terminal's foreground group of its own
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    done = 0
    # two interrupted runs, the second by SIGTERM (docker
    # stop, timeout), which Ray's driver took over: its "*** SIGTERM received" stack and
    # status 15 or -6, no word of what was written
    for writes, script in ((2, CTRL_C_AFTER_WRITES), (1, TERM_AFTER_WRITES)):
        proc = subprocess.run([sys.executable, "-c", script, str(writes), *args],
                              capture_output=True, text=True, timeout=600,
                              preexec_fn=sigint_default)
        assert proc.returncode == 130, proc.stderr[-2000:]
        assert proc.stdout == "", proc.stdout[-2000:]
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "interrupted after indexing" in lines[0], proc.stderr[-2000:]
        with MilvusCodeStore(db, "c", create=False) as s:
            assert s.count() >= done + 8 * writes  # each run wrote what it had encoded
            done = s.count()
    assert main(args) == 0
    with MilvusCodeStore(db, "c", create=False) as s:
        assert s.count() == 200 and len(set(s.iter_ids())) == 200
