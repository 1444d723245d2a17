"""``rsir quickstart`` (small_cnn, 2 outer iterations, to stay fast): it runs twice in the same
folder (the second run reuses the bundle), its printed next steps and the README snippet work,
and another encoder (another seed) rebuilds the quickstart's own collection."""

from __future__ import annotations

import re
import shlex

import pytest

pytest.importorskip("torch")
pytest.importorskip("milvus_lite")

from rsir_sdk import Retriever  # noqa: E402
from rsir_train.cli import main  # noqa: E402
from rsir_train.sample import sample_archive  # noqa: E402

pytestmark = pytest.mark.train
ARGS = ["quickstart", "--backbone", "small_cnn", "--outer", "2"]


def _next_steps(printed: str) -> list[list[str]]:
    lines = printed.split("\nNext:\n", 1)[1].splitlines()
    return [shlex.split(line)[1:] for line in lines if line.strip().startswith("rsir ")]


def test_quickstart_reruns_and_its_next_steps_work(tmp_path, monkeypatch, capsys):
    from rsir_sdk.cli import main as rsir

    monkeypatch.chdir(tmp_path)
    assert main(ARGS) == 0
    first = capsys.readouterr().out
    assert "[1/4] training a 32-bit AHCL encoder (small_cnn)" in first
    # Milvus ranks ties as the metrics do (by the fine code): the two figures are one
    via_milvus, in_memory = re.search(r"([0-9.]+) through Milvus, ([0-9.]+) in memory",
                                      first).groups()
    assert via_milvus == in_memory, first.split("[4/4]")[1]
    assert main(ARGS) == 0
    second = capsys.readouterr().out
    assert "[1/4] reusing the bundle quickstart-out/bundle" in second
    # same bundle, same collection, same numbers
    assert first.split("[4/4]")[1].split("Next:")[0] == second.split("[4/4]")[1].split("Next:")[0]

    # the README snippet, word for word but for the image path
    r = Retriever("quickstart-out/bundle", uri="quickstart-out/rsir.db", collection="eurosat_quickstart")
    with r:
        hits = r.search(str(sample_archive() / "Forest" / "Forest_1001.jpg"), k=5)
    assert len(hits) == 5 and all(h.label for h in hits)

    # the printed next steps run: rsir search ..., rsir eval BUNDLE (no --data: it is recorded)
    steps = _next_steps(second)
    assert [s[0] for s in steps] == ["search", "eval"]
    for step in steps:
        assert rsir(step) == 0, step
    capsys.readouterr()

    # another encoder in the same folder: the quickstart's collection is rebuilt for it
    assert main(ARGS + ["--seed", "1"]) == 0
    third = capsys.readouterr().out
    assert "seed 0 instead of 1" in third and "dropped it to rebuild it" in third
    assert "160 items in collection eurosat_quickstart" in third
