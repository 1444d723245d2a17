"""``rsir eval --plot``: the precision-recall curve and per-class AP of a real (tiny) bundle,
computed on the codes ``rsir eval`` ranks, drawn to a PNG."""

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("torch")
pytestmark = pytest.mark.train

from rsir_sdk.cli import main  # noqa: E402
from rsir_sdk.evaluate import EvalOptions  # noqa: E402
from rsir_sdk.plots import PlotError, evaluation_curves, plot_curves  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE  # noqa: E402


def test_eval_plot_writes_a_png_with_the_evaluated_map(tiny_ahcl, tmp_path, capsys):
    path, _, _ = tiny_ahcl
    out = tmp_path / "pr.png"
    rc = main(["eval", str(path), "--data", str(SAMPLE_ARCHIVE), "--json", "--no-progress",
               "--plot", str(out)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    curves = evaluation_curves(path, SAMPLE_ARCHIVE)
    # the same split, database and codes as rsir eval: the same mAP (exact in-memory ranking)
    assert curves.mean_ap == pytest.approx(result["reference"]["mAP"], abs=1e-9)
    assert curves.database == "learned" and len(curves.class_ap) == 10
    r, p = curves.pr.recall, curves.pr.precision
    assert np.all(np.diff(r) >= -1e-12) and r[-1] == pytest.approx(1.0) and 0 <= p.min() <= p.max() <= 1


def test_several_bundles_side_by_side_and_leave_one_out(tiny_ahcl, tmp_path):
    path, _, _ = tiny_ahcl
    learned = evaluation_curves(path, SAMPLE_ARCHIVE, label="learned V")
    loo = evaluation_curves(path, SAMPLE_ARCHIVE, options=EvalOptions(database="query"),
                            label="query side, LOO")
    assert loo.leave_one_out and loo.n_queries == loo.n_database == 40
    out = plot_curves([learned, loo], tmp_path / "two.png", title="sample")
    assert out.is_file()
    with pytest.raises(PlotError):
        plot_curves([], tmp_path / "none.png")


def test_curves_rank_ties_as_the_store_does(tiny_ahcl):
    """The curves come from the evaluation's codes with the database ids: the mAP is the one of
    the database put in the store's tie order by hand, and the per-class APs average to it."""
    from rsir_sdk import metrics
    from rsir_sdk.evaluate import evaluation_codes
    from rsir_sdk.plots import curves_of
    from rsir_sdk.store import tie_order

    path, _, _ = tiny_ahcl
    codes = evaluation_codes(path, SAMPLE_ARCHIVE)
    curves = curves_of(codes)
    order = tie_order(codes.db_ids)
    # the store ranks ties by the fine code first (issue 20), then by the digests of the ids;
    # the bundle's same-scene tests (the default layout code has two) pick near-duplicates
    test = codes.bundle.scene_test
    fine = None if codes.db_fine is None else (
        (codes.q_fine, codes.db_fine[order]) + (() if test is None else (test,)))
    by_hand = metrics.mean_average_precision(codes.q_codes, codes.q_labels, codes.db_codes[order],
                                             [codes.db_labels[i] for i in order], fine=fine)
    assert curves.mean_ap == pytest.approx(by_hand, abs=1e-12)
    per_class = [curves.class_ap[str(c)] * sum(str(q) == str(c) for q in codes.q_labels)
                 for c in set(codes.q_labels)]
    assert sum(per_class) / len(codes.q_labels) == pytest.approx(curves.mean_ap, abs=1e-12)


def test_class_names_the_font_cannot_draw_are_one_warning_not_matplotlibs(tiny_ahcl, tmp_path,
                                                                          caplog, recwarn):
    """A class named 港口 made matplotlib print one UserWarning (with its source line) per
    missing glyph; now one warning line of the SDK's log, and the plot is written."""
    import dataclasses

    path, _, _ = tiny_ahcl
    curves = evaluation_curves(path, SAMPLE_ARCHIVE)
    renamed = dataclasses.replace(
        curves, class_ap={f"港口 {c}": v for c, v in curves.class_ap.items()})
    with caplog.at_level("WARNING", logger="rsir_sdk.plots"):
        out = plot_curves([renamed], tmp_path / "cjk.png")
    assert out.is_file()
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
    assert "no glyphs for some class names" in caplog.text
