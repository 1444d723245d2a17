"""The feature cache is written as it is computed: Ctrl-C or SIGKILL during the longest step of
a CPU run loses only the batch in flight, and the next run continues from the rows on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rsir_train.backbones import SmallCNN  # noqa: E402
from rsir_train.dataset import open_training_archive  # noqa: E402
from rsir_train.feature_cache import partial_paths  # noqa: E402
from rsir_train.features import Normalize, frozen_features, pooled_features  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE  # noqa: E402

pytestmark = pytest.mark.train
ROOT = Path(__file__).resolve().parents[1]


def _net() -> tuple[SmallCNN, Normalize, dict]:
    torch.manual_seed(0)
    net = SmallCNN()
    pre = dict(SmallCNN.preprocess)
    return net, Normalize(pre["mean"], pre["std"]), pre


def _interrupt(event: dict) -> None:
    """A progress callback that stops the run at its first event, as Ctrl-C would."""
    raise KeyboardInterrupt


def _only_cache(folder: Path) -> Path:
    files = [p for p in folder.glob("*.npy") if ".partial" not in p.name]
    assert len(files) == 1, files
    return files[0]


def test_ctrl_c_during_extraction_resumes_from_the_rows_on_disk(tmp_path, one_torch_thread):
    archive = open_training_archive(SAMPLE_ARCHIVE)
    net, norm, pre = _net()
    idx = np.arange(0, 200, 5)  # 40 images, 5 batches of 8
    whole = frozen_features(net, norm, 3, archive, idx, pre, cache_dir=False, batch_size=8)

    def interrupt_at_16(event):
        if event["event"] == "cache_progress" and event["done"] == 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        frozen_features(net, norm, 3, archive, idx, pre, cache_dir=tmp_path, batch_size=8,
                        progress=interrupt_at_16)
    assert not [p for p in tmp_path.glob("*.npy") if ".partial" not in p.name]
    state = next(tmp_path.glob("*.partial.json"))
    assert json.loads(state.read_text())["done"] == 16

    events: list[dict] = []
    again = frozen_features(net, norm, 3, archive, idx, pre, cache_dir=tmp_path, batch_size=8,
                            progress=events.append)
    assert torch.equal(again, whole)
    assert {k: events[0][k] for k in ("event", "done", "total")} == {
        "event": "cache_resumed", "done": 16, "total": 40}
    assert events[0]["path"].endswith(".partial.npy")
    done = [e["done"] for e in events if e["event"] == "cache_progress"]
    assert done == [24, 32, 40]  # only the batches not on disk were computed
    assert events[-1]["event"] == "cache_saved"
    assert not list(tmp_path.glob("*.partial.*"))
    hit: list[dict] = []
    third = frozen_features(net, norm, 3, archive, idx, pre, cache_dir=tmp_path, batch_size=8,
                            progress=hit.append)
    assert torch.equal(third, whole) and [e["event"] for e in hit] == ["cache_hit"]


def test_sigkill_during_pooled_extraction_loses_only_the_batch_in_flight(tmp_path):
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import time, torch
        torch.set_num_threads(1)
        from rsir_train.backbones import SmallCNN
        from rsir_train.dataset import open_training_archive
        from rsir_train.features import Normalize, pooled_features
        from rsir_train.testing import SAMPLE_ARCHIVE
        torch.manual_seed(0)
        net = SmallCNN(); pre = dict(SmallCNN.preprocess)
        pooled_features(net, Normalize(pre["mean"], pre["std"]), open_training_archive(SAMPLE_ARCHIVE),
                        pre, cache_dir={str(cache)!r}, batch_size=4,
                        progress=lambda e: time.sleep(0.25))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "export")])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(cache.glob("*.partial.json")) if cache.is_dir() else []
            if found and json.loads(found[0].read_text())["done"] >= 12:
                state = found[0]
                break
            time.sleep(0.05)
        assert state is not None, "the child never recorded 12 rows"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    on_disk = json.loads(state.read_text())["done"]
    assert 12 <= on_disk < 200

    archive = open_training_archive(SAMPLE_ARCHIVE)
    net, norm, pre = _net()
    whole, _ = pooled_features(net, norm, archive, pre, cache_dir=False, batch_size=4)
    events: list[dict] = []
    resumed, status = pooled_features(net, norm, archive, pre, cache_dir=cache, batch_size=4,
                                      progress=events.append)
    assert status == "computed" and torch.equal(resumed, whole)
    assert events[0]["event"] == "cache_resumed" and events[0]["done"] == on_disk
    first = next(e["done"] for e in events if e["event"] == "cache_progress")
    assert first == on_disk + 4
    assert np.array_equal(np.load(_only_cache(cache)), whole.numpy())


def test_an_unreadable_progress_record_starts_afresh(tmp_path, one_torch_thread, caplog):
    archive = open_training_archive(SAMPLE_ARCHIVE)
    net, norm, pre = _net()
    idx = np.arange(0, 60, 3)
    whole = frozen_features(net, norm, 3, archive, idx, pre, cache_dir=False, batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        frozen_features(net, norm, 3, archive, idx, pre, cache_dir=tmp_path, batch_size=8,
                        progress=_interrupt)
    state = next(tmp_path.glob("*.partial.json"))
    state.write_text("{not json", encoding="utf-8")
    events: list[dict] = []
    again = frozen_features(net, norm, 3, archive, idx, pre, cache_dir=tmp_path, batch_size=8,
                            progress=events.append)
    assert torch.equal(again, whole)
    assert "cache_resumed" not in [e["event"] for e in events]
    assert [e["done"] for e in events if e["event"] == "cache_progress"] == [8, 16, 20]
    assert "starting afresh" in caplog.text


def test_a_second_writer_computes_in_memory_and_leaves_the_partial_file_alone(tmp_path):
    import fcntl

    archive = open_training_archive(SAMPLE_ARCHIVE)
    net, norm, pre = _net()
    whole, _ = pooled_features(net, norm, archive, pre, cache_dir=False)
    first, _ = pooled_features(net, norm, archive, pre, cache_dir=tmp_path)
    cache = _only_cache(tmp_path)
    cache.unlink()
    part, state, lock = partial_paths(cache)
    part.write_bytes(b"the other writer's unfinished rows")
    state.write_text('{"done": 3, "rows": 200}', encoding="utf-8")
    with open(lock, "a") as handle:  # another run is filling this cache
        fcntl.flock(handle, fcntl.LOCK_EX)
        second, status = pooled_features(net, norm, archive, pre, cache_dir=tmp_path)
        fcntl.flock(handle, fcntl.LOCK_UN)
    assert part.read_bytes() == b"the other writer's unfinished rows"
    assert state.read_text(encoding="utf-8") == '{"done": 3, "rows": 200}'
    assert status == "computed" and torch.equal(second, whole) and torch.equal(first, whole)
    assert np.array_equal(np.load(cache), whole.numpy())


def _blocks(width: int, rows: int = 10, per: int = 2, stop_after: int | None = None):
    """``batches(first)`` of rows ``i * 10 + column`` of ``width`` columns, optionally raising
    KeyboardInterrupt once ``stop_after`` rows were handed over."""
    def batches(first):
        for start in range(first, rows, per):
            if stop_after is not None and start >= stop_after:
                raise KeyboardInterrupt
            yield start, (np.arange(start, min(start + per, rows))[:, None] * 10
                          + np.arange(width)[None, :]).astype(np.float32)
    return batches


def test_an_unfinished_file_of_another_row_shape_is_started_afresh(tmp_path, caplog):
    from rsir_train.feature_cache import read_or_fill

    path = tmp_path / "feats.npy"
    with pytest.raises(KeyboardInterrupt):
        read_or_fill(path, 10, _blocks(4, stop_after=4), lambda e: None)
    assert json.loads(partial_paths(path)[1].read_text())["done"] == 4
    feats, status = read_or_fill(path, 10, _blocks(8), lambda e: None)
    assert status == "computed" and feats.shape == (10, 8)
    assert np.array_equal(feats, np.concatenate([b for _, b in _blocks(8)(0)]))
    assert "does not fit" in caplog.text and not list(tmp_path.glob("*.partial.*"))


def test_a_stale_progress_record_never_vouches_for_a_new_file(tmp_path):
    from rsir_train.feature_cache import read_or_fill

    path = tmp_path / "feats.npy"
    part, state, _ = partial_paths(path)
    state.write_text('{"done": 10, "rows": 10}', encoding="utf-8")  # left by an earlier crash
    with pytest.raises(KeyboardInterrupt):  # dies before its first batch is on disk
        read_or_fill(path, 10, _blocks(4, stop_after=0), lambda e: None)
    assert not state.exists()
    feats, _ = read_or_fill(path, 10, _blocks(4), lambda e: None)
    assert np.array_equal(feats, np.concatenate([b for _, b in _blocks(4)(0)]))


def test_a_cache_folder_that_cannot_be_written_is_one_clear_error(tmp_path):
    from rsir_train.errors import TrainingError

    archive = open_training_archive(SAMPLE_ARCHIVE)
    net, norm, pre = _net()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be", encoding="utf-8")
    with pytest.raises(TrainingError) as info:
        pooled_features(net, norm, archive, pre, cache_dir=blocker)
    message = str(info.value)
    assert "\n" not in message and str(blocker) in message and "--cache-dir" in message
