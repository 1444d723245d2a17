"""AHCL model selection (issue 21): the validation folds are drawn from the train side only,
the selection is deterministic for a seed and does not depend on the query side, a resumed run
selects the same model, the chosen schedule is refit on the whole train side, and the bundle's
manifest says what was chosen and why."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rsir_sdk.splits import Split, make_split  # noqa: E402
from rsir_train.ahcl import config as ahcl_config  # noqa: E402
from rsir_train.ahcl import train_ahcl  # noqa: E402
from rsir_train.ahcl.bundle import train_ahcl_bundle  # noqa: E402
from rsir_train.ahcl.config import AUTO_LR, AHCLConfig, candidate_configs, epoch_lr  # noqa: E402
from rsir_train.ahcl.selection import fold_mean_curve, smoothed, validation_folds  # noqa: E402
from rsir_train.ahcl.trainer import _Part, _prepare, run_schedule  # noqa: E402
from rsir_train.dataset import open_training_archive  # noqa: E402
from rsir_train.results import schedule_of  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE, tiny_config  # noqa: E402
from rsir_train.trainer import no_progress, validation_indices  # noqa: E402

pytestmark = pytest.mark.train

EPOCHS = 4


@pytest.fixture(scope="module")
def sample():
    arch = open_training_archive(SAMPLE_ARCHIVE)
    return arch, make_split(arch, "80-20", 0)


def _selecting(**overrides):
    """The tiny small_cnn run with the auto schedule, choosing between two 4-epoch schedules
    on 2 validation folds (then refit)."""
    cfg = dict(schedule="auto", lr=None, momentum=None, outer=EPOCHS, inner=None, lr_steps=None,
               candidates=("auto", "short"), val_every=1, patience=0, select="on", val_folds=2)
    cfg.update(overrides)
    return tiny_config(bits=32, **cfg)


@pytest.fixture(scope="module")
def selected(sample, tmp_path_factory):
    """One selecting run written as a bundle: ``(result, manifest, folder)``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ahcl_config, "SHORT_EPOCHS", EPOCHS)
        tmp = tmp_path_factory.mktemp("selected")
        result, manifest = train_ahcl_bundle(SAMPLE_ARCHIVE, tmp / "a", _selecting(),
                                             split_file=tmp / "split.json")
    return result, manifest, tmp


@pytest.fixture
def short_epochs(monkeypatch):
    monkeypatch.setattr(ahcl_config, "SHORT_EPOCHS", EPOCHS)


def test_validation_folds_are_drawn_from_the_train_side_only(sample):
    arch, split = sample
    train_idx, _ = split.indices(arch)
    labels = arch.labels()[train_idx]
    ids = np.array([arch.items[int(i)].id for i in train_idx])
    folds = validation_folds(labels, 3, 0.2, seed=0)
    vals = [v for _, v in folds]
    assert len(folds) == 3
    # every train image is validated exactly once; no query image is ever drawn
    assert sorted(np.concatenate(vals).tolist()) == list(range(len(train_idx)))
    assert not set(ids[np.concatenate(vals)]) & set(split.query_ids)
    for fit, val in folds:
        assert not set(fit) & set(val) and len(fit) + len(val) == len(train_idx)
        # each fold's fit part keeps every class; its validation part holds 5 or 6 of each 16
        assert set(labels[fit]) == set(labels)
        assert set(np.unique(labels[val], return_counts=True)[1]) <= {5, 6}
    again = validation_folds(labels, 3, 0.2, seed=0)
    other = validation_folds(labels, 3, 0.2, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    assert not np.array_equal(folds[0][1], other[0][1])
    # one fold: the per-class fraction split MiLAN uses too
    single = validation_folds(labels, 1, 0.2, seed=0)
    assert len(single) == 1 and np.array_equal(single[0][1],
                                               validation_indices(labels, 0.2, 0)[1])
    assert sorted(np.unique(labels[single[0][1]], return_counts=True)[1]) == [3] * 10
    # a class of one image is never held out
    y = np.array(["a", "a", "a", "b"])
    assert all(3 not in v.tolist() and 3 in f.tolist() for f, v in validation_folds(y, 3, .2, 0))


def test_fold_mean_curve_and_smoothed_figure():
    curves = [[[1, 0.5], [2, 0.7], [3, 0.9]], [[1, 0.8], [2, 0.4]]]  # fold 2 stopped at 2
    assert fold_mean_curve(curves, [1, 3]) == [[1, 0.725], [2, 0.475]]
    assert smoothed([[1, 0.2], [2, 0.9], [3, 0.6], [4, 0.7]]) == pytest.approx(0.7333, abs=1e-4)
    assert smoothed([[1, 0.4]]) == 0.4 and smoothed([]) == -1.0


def test_the_reason_says_when_an_early_stopped_fold_cut_the_curve_at_the_choice():
    """The fold-mean curve holds only iterations every fold validated: a fold stopped by
    patience at 80 while two ran to 100 ends it at 80, and a choice at 80 is where it was cut,
    not a peak. The reason says so (a probe read "best at outer iteration 80" as a peak)."""
    from rsir_train.ahcl.selection import _curve_cut, _reason

    def fold(k, stopped_at, early):
        curve = [[o, 0.9 + o / 1000] for o in range(5, stopped_at + 1, 5)]
        return {"fold": k, "stopped_at": stopped_at, "stopped_early": early, "val_curve": curve}

    folds = [fold(0, 100, False), fold(1, 100, False), fold(2, 80, True)]
    curve = fold_mean_curve([f["val_curve"] for f in folds], [1, 1, 1])
    cut = _curve_cut(curve, folds)
    assert curve[-1][0] == 80 and cut == {"at": 80, "fold": 3, "others_ran_to": 100}
    chosen = {"name": "auto", "val_map": 0.97, "best_val_map": 0.98, "best_outer": 80,
              "inner": 1, "curve_cut": cut}
    text = _reason(chosen, [chosen, {"name": "authors", "val_map": 0.95}], 3, 300)
    assert "fold 3 stopped early there (patience) while another ran to 100" in text
    assert "authors 0.9500" in text and text.endswith("lambda 300)")
    # a choice before the cut, or folds that all ran to the end: nothing to say
    assert "stopped early" not in _reason({**chosen, "best_outer": 50}, [chosen], 3, 300)
    full = [fold(0, 100, False), fold(1, 100, True)]
    assert _curve_cut(fold_mean_curve([f["val_curve"] for f in full], [1, 1]), full) is None


def test_candidates_by_archive_size_and_length():
    small = [n for n, _ in candidate_configs(AHCLConfig(bits=64), 230, 288, cached=True)]
    assert small == ["auto", "authors"]
    every = AHCLConfig(bits=64, candidates=("auto", "authors", "short", "lr16"))
    assert [n for n, _ in candidate_configs(every, 230, 288, True)] == \
        ["auto", "authors", "short", "lr16"]
    assert [n for n, _ in candidate_configs(AHCLConfig(bits=16, candidates=every.candidates),
                                            230, 288, True)] == ["auto", "authors", "short"]
    large = candidate_configs(AHCLConfig(bits=64), 1536, 1920, cached=True)
    assert [n for n, _ in large] == ["auto"] and large[0][1].outer == 38
    by_name = dict(candidate_configs(every, 230, 288, cached=True))
    assert by_name["lr16"].lr == AUTO_LR and by_name["short"].lr == AUTO_LR / 4
    assert by_name["authors"].momentum == 0.0 and by_name["auto"].outer == 100
    # a schedule field set by hand: trained as given, unless select="on" (then that schedule
    # only, its epoch count validated)
    assert not AHCLConfig(bits=64, lr=1e-3).selects and AHCLConfig(lr=1e-3, select="on").selects
    assert [n for n, _ in candidate_configs(AHCLConfig(bits=64, lr=1e-3), 230, 288, True)] == \
        ["auto"]
    assert not AHCLConfig(schedule="authors", select="on").selects and AHCLConfig().selects
    assert not AHCLConfig(select="off").selects


def test_candidates_flag_reaches_the_configuration(capsys):
    from rsir_train.cli import build_parser
    from rsir_train.commands import ahcl_config as config_of

    base = ["train", "ahcl", "--data", str(SAMPLE_ARCHIVE), "--out", "x", "--device", "cpu"]
    args = build_parser().parse_args(base + ["--candidates", "auto, short"])
    assert config_of(args).candidates == ("auto", "short")
    assert config_of(build_parser().parse_args(base)).candidates is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--candidates", "auto,fast"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "auto, authors, short, lr16" in err and "'auto,fast'" in err


def test_selection_is_deterministic_and_blind_to_the_queries(sample, selected, tmp_path,
                                                             short_epochs):
    arch, split = sample
    result, manifest, folder = selected
    sel = manifest["training"]["selection"]
    assert sel["chosen"] in ("auto", "short") and sel["reason"].startswith(sel["chosen"] + ":")
    assert [c["name"] for c in sel["candidates"]] == ["auto", "short"]
    assert sel["folds"] == 2 and sel["n_val"] == [80, 80]
    assert all(f + v == len(split.train_ids) for f, v in zip(sel["n_fit"], sel["n_val"]))
    for c in sel["candidates"]:
        assert len(c["folds"]) == 2
        assert c["val_curve"] == fold_mean_curve([f["val_curve"] for f in c["folds"]], [1, 1])
        assert c["val_map"] == pytest.approx(smoothed(c["val_curve"]), abs=1e-4)
    best = max(c["val_map"] for c in sel["candidates"])
    assert sel["val_map"] == best and result.metrics["val_map"] == pytest.approx(best, abs=1e-4)
    hyper = manifest["training"]["hyperparameters"]
    assert hyper["schedule"] == "auto" and hyper["candidate"] == sel["chosen"]
    assert result.V.shape == (len(split.train_ids), 32) and set(np.unique(result.V)) <= {-1, 1}
    assert "refit" in schedule_of(manifest) and sel["chosen"] in schedule_of(manifest)
    # the bundle's database codes are the refit's learned V, for the whole train side
    assert json.loads((folder / "a" / "manifest.json").read_text())["database"]["count"] == \
        len(split.train_ids)
    # the same train side with half the queries: the same choice, curves and codes
    half = Split(split.protocol, split.seed, split.train_ids, split.query_ids[::2],
                 split.archive_fingerprint, split.dataset)
    events: list[dict] = []
    again = train_ahcl(arch, half, _selecting(), work_dir=tmp_path / "b", progress=events.append)
    assert again.selection["chosen"] == sel["chosen"]
    # the user is told the plan, then each of the 2 x 2 fold runs as it ends (the refit is the 5th)
    said = [e for e in events if e["event"].startswith("selection_")]
    assert [e["event"] for e in said] == ["selection_plan"] + ["selection_progress"] * 4
    assert said[0]["runs"] == 5 and "auto, short on 2 validation folds of the train side" in said[0]["text"]
    assert [e["run"] for e in said[1:]] == [1, 2, 3, 4]
    assert "(short, fold 2/2)" in said[-1]["text"] and "best validation mAP" in said[-1]["text"]
    assert [c["val_curve"] for c in again.selection["candidates"]] == \
        [c["val_curve"] for c in sel["candidates"]]
    assert np.array_equal(again.V, result.V)


def test_refit_trains_the_choice_on_the_whole_train_side(sample, selected, short_epochs):
    arch, split = sample
    result = selected[0]
    sel = result.selection
    chosen = next(c for c in sel["candidates"] if c["name"] == sel["chosen"])
    outer = chosen["best_outer"]
    assert sel["refit"] == {**sel["refit"], "outer": outer, "n_train": len(split.train_ids)}
    # lambda scaled to the folds' per-image weight (2 folds: n_fit = n_train / 2), recorded
    lam = _selecting().lam * len(split.train_ids) / np.mean(sel["n_fit"])
    assert result.config.lam == pytest.approx(lam, abs=1e-3) == sel["refit"]["lam"]
    assert sel["refit"]["fold_lam"] == _selecting().lam  # the folds' (the user's), for reruns
    assert f"lambda {result.config.lam:g}" in sel["reason"] and "n_train / n_fit" in sel["final"]
    refit = [h for h in result.history if h.get("candidate") == f"{sel['chosen']}/refit"]
    assert [h["outer"] for h in refit] == list(range(1, outer + 1))
    # the lr follows the validated schedule (its full length), cut at the chosen iteration
    cfg = result.config
    assert [h["lr"] for h in refit] == pytest.approx(
        [epoch_lr(cfg, i * cfg.inner, cfg.outer * cfg.inner) for i in range(outer)])
    # the same schedule trained on every train image, stopped there: the exported codes
    ctx, _ = _prepare(arch, split, _selecting(), no_progress)
    st = run_schedule(ctx, cfg, _Part(ctx.db_in, ctx.y_db, ctx.train_ids), None, False,
                      no_progress, stop_at=outer)
    assert st.V.shape[0] == len(split.train_ids) and np.array_equal(st.V, result.V)


class _Stop(Exception):
    pass


def test_resumed_selection_chooses_the_same_model(sample, selected, tmp_path, short_epochs):
    arch, split = sample
    full = selected[0]

    def stop_in_second(event):
        if event.get("event") == "outer" and event.get("candidate") == "short/f1" \
                and event["outer"] == 3:
            raise _Stop

    with pytest.raises(_Stop):
        train_ahcl(arch, split, _selecting(), work_dir=tmp_path / "cut", progress=stop_in_second)
    events = []
    resumed = train_ahcl(arch, split, _selecting(), work_dir=tmp_path / "cut", resume=True,
                         progress=events.append)
    resumes = [(e["candidate"], e["outer_done"]) for e in events if e["event"] == "resumed"]
    assert resumes[:3] == [("auto/f0", EPOCHS), ("auto/f1", EPOCHS), ("short/f0", EPOCHS)]
    assert resumes[3] == ("short/f1", 3) and len(resumes) == 4  # the refit had not started
    assert resumed.selection["chosen"] == full.selection["chosen"]
    assert [c["val_curve"] for c in resumed.selection["candidates"]] == \
        [c["val_curve"] for c in full.selection["candidates"]]
    assert np.array_equal(resumed.V, full.V)
    assert resumed.metrics["map_query_vs_learned_db"] == pytest.approx(
        full.metrics["map_query_vs_learned_db"], abs=1e-9)


def test_candidates_without_selection_are_named_in_one_warning(sample, caplog):
    """--candidates on a run that does not select (here a hand-set schedule) trains as given
    and says, in one line, that the candidates were not used and why."""
    arch, split = sample
    cfg = tiny_config(bits=16, outer=1, inner=1, lr_steps=(), candidates=("auto", "short"))
    assert not cfg.selects
    with caplog.at_level("WARNING", logger="rsir_train.ahcl.trainer"):
        result = train_ahcl(arch, split, cfg)
    lines = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert lines == ["candidates auto,short not used: this run does not select (a schedule or "
                     "its values were set by hand, or --select off)"]
    assert not result.selection and len(result.history) == 1
