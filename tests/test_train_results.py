"""rsir_train.results: load averages read from a run's log."""

from rsir_train.results import load_averages


def test_load_averages_from_uptime_lines(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(" 21:25:29 up  2:36,  0 user,  load average: 1.84, 2.46, 2.94\n"
                   "training...\n"
                   " 21:39:24 up  2:50,  0 user,  load average: 3.60, 2.97, 2.86\n")
    assert load_averages(log) == "start 1.84 2.46 2.94, end 3.60 2.97 2.86"


def test_load_averages_missing(tmp_path):
    assert load_averages(tmp_path / "none.log") is None
    (tmp_path / "x.log").write_text("no uptime here\n")
    assert load_averages(tmp_path / "x.log") is None
