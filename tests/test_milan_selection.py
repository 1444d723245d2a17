"""MiLAN's head chosen on validation folds of a small train side, then refit (rsir_train.milan.selection)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rsir_train.folds import SMALL_ARCHIVE, fold_mean_curve, validation_folds  # noqa: E402
from rsir_train.milan import MilanParams, train_milan_head  # noqa: E402
from rsir_train.milan.selection import fold_curve, select_on_folds  # noqa: E402
from rsir_train.milan.trainer import _choose_head  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.usefixtures("one_torch_thread")]

FAST = dict(lr=1e-3, hidden=(64,), val_every=20, log_every=20)


def clusters(n_per_class: int, seed: int = 1, classes: int = 5):
    """Gaussian clusters in 32-d, heavily overlapping so the validation curve moves."""
    means = np.random.default_rng(0).normal(0, 1, (classes, 32)) * 0.35
    labels = np.repeat(np.arange(classes), n_per_class)
    noise = np.random.default_rng(seed).normal(0, 1, (len(labels), 32))
    return torch.tensor(means[labels] + noise, dtype=torch.float32), labels


def test_fold_curve_is_the_weighted_mean_of_the_folds_and_patience_watches_it():
    x, y = clusters(24)
    params = MilanParams(**FAST, iterations=400, patience=3)
    folds = validation_folds(y, 3, 0.2, seed=0)
    lines: list[dict] = []
    record = fold_curve(x, y, 16, params, folds, lambda step, total, shown: lines.append(shown))
    # the progress lines carry the fold-mean validation of their own step (every 20 here),
    # the last one the validation where patience stopped the run
    assert [line["val_map"] for line in lines] == [v for _, v in record["val_curve"]]
    assert lines[-1]["best_val_map"] == pytest.approx(record["best_val_map"], abs=1e-4)
    # every image validated exactly once, never in its own fold's fit part
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(len(y)))
    assert record["n_val"] == [len(v) for _, v in folds] and sum(record["n_val"]) == len(y)
    # the mean curve is the folds' curves averaged by their validation images, at every step
    expected = fold_mean_curve(record["fold_curves"], record["n_val"])
    assert [s for s, _ in record["val_curve"]] == [s for s, _ in expected]
    assert [v for _, v in record["val_curve"]] == pytest.approx([v for _, v in expected],
                                                                abs=2e-4)
    assert all(len(c) == len(record["val_curve"]) for c in record["fold_curves"])
    best = max(record["val_curve"], key=lambda p: (p[1], -p[0]))
    assert (record["best_iteration"], record["best_val_map"]) == (best[0], best[1])
    # patience (3 validations without improvement of the mean) ended the run early
    assert record["stopped_at"] == record["best_iteration"] + 3 * params.val_every < 400
    later = [v for s, v in record["val_curve"] if s > record["best_iteration"]]
    assert all(v <= record["best_val_map"] for v in later)


def test_selection_is_deterministic_and_the_refit_trains_on_everything():
    x, y = clusters(24)
    params = MilanParams(**FAST, iterations=300, patience=4, seed=3)
    head, record = select_on_folds(x, y, 16, params, 3)
    again, record2 = select_on_folds(x, y, 16, params, 3)
    assert record == record2
    for (name, a), b in zip(head.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    # the exported head is a fresh head trained on the whole train side for the chosen count
    refit = train_milan_head(x, y, 16, MilanParams(**FAST, iterations=record["best_iteration"],
                                                   patience=4, seed=3))
    for (name, a), b in zip(head.state_dict().items(), refit.state_dict().values()):
        assert torch.equal(a, b), name
    assert record["refit_iterations"] == record["best_iteration"] and record["n_train"] == len(y)
    assert "3-fold" in record["reason"]
    other, _ = select_on_folds(x, y, 16, MilanParams(**FAST, iterations=300, patience=4,
                                                      seed=4), 3)
    assert not all(torch.equal(a, b) for a, b in zip(head.parameters(), other.parameters()))


def test_small_train_sides_use_folds_large_ones_one_split():
    x, y = clusters(210)  # 1,050 images: 1,000 train positions and 50 others
    labels = y.astype(str).astype(object)
    params = MilanParams(**FAST, iterations=40, patience=0, val_metric="database")
    small = np.arange(0, len(y), 4)[:250]  # positions of a 250-image train side
    _, record = _choose_head(x, labels, small, 16, params, "80-20", lambda *a: None)
    assert record["folds"] == 3 and sum(record["n_val"]) == len(small)
    large = np.arange(SMALL_ARCHIVE)
    _, record = _choose_head(x, labels, large, 16, params, "80-20", lambda *a: None)
    assert "folds" not in record and record["n_fit"] + record["n_val"] == SMALL_ARCHIVE
    # val_folds=1: one split at any size; val_fraction=0: the authors' run, nothing chosen
    _, record = _choose_head(x, labels, small, 16, MilanParams(**FAST, iterations=40,
                             val_folds=1), "80-20", lambda *a: None)
    assert "folds" not in record and record["n_val"] < len(small) / 3
    _, record = _choose_head(x, labels, small, 16, MilanParams.authors(iterations=20), "80-20",
                             lambda *a: None)
    assert record == {}
    with pytest.raises(ValueError, match="val_folds must be >= 1"):
        MilanParams(val_folds=0)
    with pytest.raises(ValueError, match="val_every must be >= 1"):
        MilanParams(val_every=0)


def test_validation_period_follows_the_fit_part_on_small_archives():
    def period(params, n_train, n_fit):
        p = params.resolved_validation(n_train, n_fit)
        return p.val_every, p.patience

    p = MilanParams()
    # 1,000 training images or more: every 250 iterations, patience 8, as the full-set rows
    assert period(p, SMALL_ARCHIVE, 800) == (250, 8) == period(p, 1440, 1152)
    # below: about 6.5 passes of 30-image batches over the fit part, multiples of 25, and
    # patience spanning the same 2,000 iterations
    assert period(p, 180, 120) == (25, 80)  # 6.5 x 120 / 30 = 26
    assert period(p, 288, 192) == (50, 40)  # 41.6
    assert period(p, 999, 666) == (150, 14)  # 144.3; 8 x 250 / 150 = 13.3
    assert period(p, 30, 20) == (25, 80)  # never below 25
    assert period(MilanParams(miner="random"), 288, 192) == (25, 80)  # 90-image batches
    assert period(MilanParams(patience=0), 180, 120) == (25, 0)  # never stops early
    assert period(MilanParams(val_every=100), 180, 120) == (100, 8)  # set by hand: kept
    # a fold run without a period set validates at the resolved one and records it
    x, y = clusters(24)
    record = fold_curve(x, y, 16, MilanParams(lr=1e-3, hidden=(64,), iterations=60),
                        validation_folds(y, 3, 0.2, seed=0))
    assert record["val_every"] == 25 and [s for s, _ in record["val_curve"]] == [25, 50, 60]
    assert record["patience"] == 80


def test_results_name_the_fold_selection():
    from rsir_train.results import recipe_of, schedule_of

    manifest = {"method": "milan", "training": {
        "hyperparameters": {"iterations": 10_000},
        "selection": {"folds": 3, "best_iteration": 350, "stopped_at": 550,
                      "refit_iterations": 350, "n_train": 180}}}
    assert recipe_of(manifest) == "validation"
    assert schedule_of(manifest) == (
        "validation-selected head: 3 validation folds, best at iteration 350 of the fold-mean "
        "curve (stopped at 550 of 10000), refit 350 on all 180 training images")
