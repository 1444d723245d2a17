"""AHCL model selection (issue 21): the validation split is drawn from the train side only, the
selection is deterministic for a seed and does not depend on the query side, a resumed run
selects the same model, and the bundle's manifest says what was chosen and why."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rsir_sdk.splits import Split, make_split  # noqa: E402
from rsir_train.ahcl import config as ahcl_config  # noqa: E402
from rsir_train.ahcl import train_ahcl  # noqa: E402
from rsir_train.ahcl.bundle import train_ahcl_bundle  # noqa: E402
from rsir_train.ahcl.config import AUTO_LR, AHCLConfig, candidate_configs  # noqa: E402
from rsir_train.dataset import open_training_archive  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE, tiny_config  # noqa: E402
from rsir_train.trainer import validation_indices  # noqa: E402

pytestmark = pytest.mark.train

EPOCHS = 4


@pytest.fixture(scope="module")
def sample():
    arch = open_training_archive(SAMPLE_ARCHIVE)
    return arch, make_split(arch, "80-20", 0)


def _selecting(**overrides):
    """The tiny small_cnn run with the auto schedule, choosing between two short schedules."""
    cfg = dict(schedule="auto", lr=None, momentum=None, outer=EPOCHS, inner=None, lr_steps=None,
               candidates=("auto", "lr16"), val_every=2, patience=2, select="on")
    cfg.update(overrides)
    return tiny_config(bits=32, **cfg)


@pytest.fixture(scope="module")
def selected(sample, tmp_path_factory):
    """One selecting run written as a bundle: ``(result, manifest, split)``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ahcl_config, "SHORT_EPOCHS", EPOCHS)
        tmp = tmp_path_factory.mktemp("selected")
        result, manifest = train_ahcl_bundle(SAMPLE_ARCHIVE, tmp / "a", _selecting(),
                                             split_file=tmp / "split.json")
    return result, manifest, tmp


@pytest.fixture
def short_epochs(monkeypatch):
    monkeypatch.setattr(ahcl_config, "SHORT_EPOCHS", EPOCHS)


def test_validation_split_is_drawn_from_the_train_side_only(sample):
    arch, split = sample
    train_idx, query_idx = split.indices(arch)
    labels = arch.labels()
    fit, val = validation_indices(labels[train_idx], 0.2, seed=0)
    val_ids = {arch.items[int(train_idx[i])].id for i in val}
    fit_ids = {arch.items[int(train_idx[i])].id for i in fit}
    assert not val_ids & set(split.query_ids)
    assert val_ids | fit_ids == set(split.train_ids) and not val_ids & fit_ids
    # per class: 20 % of the class's 16 training images, rounded
    assert sorted(np.unique(labels[train_idx][val], return_counts=True)[1]) == [3] * 10
    again = validation_indices(labels[train_idx], 0.2, seed=0)[1]
    other = validation_indices(labels[train_idx], 0.2, seed=1)[1]
    assert np.array_equal(val, again) and not np.array_equal(val, other)


def test_candidates_by_archive_size_and_length():
    small = [n for n, _ in candidate_configs(AHCLConfig(bits=64), 230, 288, cached=True)]
    assert small == ["auto", "authors", "short", "lr16"]
    assert [n for n, _ in candidate_configs(AHCLConfig(bits=16), 230, 288, True)] == \
        ["auto", "authors", "short"]
    large = candidate_configs(AHCLConfig(bits=64), 1536, 1920, cached=True)
    assert [n for n, _ in large] == ["auto"] and large[0][1].outer == 38
    by_name = dict(candidate_configs(AHCLConfig(bits=64), 230, 288, cached=True))
    assert by_name["lr16"].lr == AUTO_LR and by_name["short"].lr == AUTO_LR / 4
    assert by_name["authors"].momentum == 0.0 and by_name["auto"].outer == 100
    # a schedule field set by hand: trained as given, unless select="on" (then that schedule
    # only, its best epoch validated)
    assert not AHCLConfig(bits=64, lr=1e-3).selects and AHCLConfig(lr=1e-3, select="on").selects
    assert [n for n, _ in candidate_configs(AHCLConfig(bits=64, lr=1e-3), 230, 288, True)] == \
        ["auto"]
    assert not AHCLConfig(schedule="authors", select="on").selects and AHCLConfig().selects
    assert not AHCLConfig(select="off").selects


def test_selection_is_deterministic_and_blind_to_the_queries(sample, selected, tmp_path,
                                                             short_epochs):
    arch, split = sample
    result, manifest, folder = selected
    sel = manifest["training"]["selection"]
    assert sel["chosen"] in ("auto", "lr16") and sel["reason"].startswith(sel["chosen"] + ":")
    assert [c["name"] for c in sel["candidates"]] == ["auto", "lr16"]
    assert sel["n_fit"] + sel["n_val"] == len(split.train_ids) and sel["n_val"] == 30
    best = max(c["best_val_map"] for c in sel["candidates"])
    assert sel["best_val_map"] == best
    assert result.metrics["val_map"] == pytest.approx(best, abs=1e-4)
    hyper = manifest["training"]["hyperparameters"]
    assert hyper["schedule"] == "auto" and hyper["candidate"] == sel["chosen"]
    assert result.V.shape == (len(split.train_ids), 32) and set(np.unique(result.V)) <= {-1, 1}
    # the bundle's database codes are the selected model's learned V, for the whole train side
    assert json.loads((folder / "a" / "manifest.json").read_text())["database"]["count"] == \
        len(split.train_ids)
    # the same train side with half the queries: the same choice, curves and codes
    half = Split(split.protocol, split.seed, split.train_ids, split.query_ids[::2],
                 split.archive_fingerprint, split.dataset)
    again = train_ahcl(arch, half, _selecting(), work_dir=tmp_path / "b")
    assert again.selection["chosen"] == sel["chosen"]
    assert [c["val_curve"] for c in again.selection["candidates"]] == \
        [c["val_curve"] for c in sel["candidates"]]
    assert np.array_equal(again.V, result.V)


class _Stop(Exception):
    pass


def test_resumed_selection_chooses_the_same_model(sample, selected, tmp_path, short_epochs):
    arch, split = sample
    full = selected[0]

    def stop_in_second(event):
        if event.get("event") == "outer" and event.get("candidate") == "lr16" \
                and event["outer"] == 3:
            raise _Stop

    with pytest.raises(_Stop):
        train_ahcl(arch, split, _selecting(), work_dir=tmp_path / "cut", progress=stop_in_second)
    events = []
    resumed = train_ahcl(arch, split, _selecting(), work_dir=tmp_path / "cut", resume=True,
                         progress=events.append)
    resumes = [e for e in events if e["event"] == "resumed"]
    assert [(e["candidate"], e["outer_done"]) for e in resumes] == [("auto", EPOCHS), ("lr16", 3)]
    assert resumed.selection["chosen"] == full.selection["chosen"]
    assert resumed.selection["candidates"][0]["val_curve"] == \
        full.selection["candidates"][0]["val_curve"]
    assert np.array_equal(resumed.V, full.V)
    assert resumed.metrics["map_query_vs_learned_db"] == pytest.approx(
        full.metrics["map_query_vs_learned_db"], abs=1e-9)
