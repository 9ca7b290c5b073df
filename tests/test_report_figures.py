"""The report is rewritten after every stage: a figure is drawn again only when its data changed."""

from __future__ import annotations

from pathlib import Path

from homerank.jobs import report, report_plots
from homerank.jobs.rundir import RunDir


def test_a_figure_is_drawn_once_per_distinct_data(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_plot(data):
        calls.append(data)
        return b"\x89PNG" + repr(data).encode()

    monkeypatch.setattr(report_plots, "training_curve", fake_plot)
    run = RunDir(tmp_path)
    data = {"history": [{"epoch": 1, "loss": 0.5}]}
    first = report._figure(run, "training_curve", "Training curve", "training_curve", data)
    again = report._figure(run, "training_curve", "Training curve", "training_curve", dict(data))
    assert first == again == ["", "![Training curve](report/training_curve.png)"]
    assert len(calls) == 1  # the same data: the saved figure is kept
    changed = {"history": [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}]}
    report._figure(run, "training_curve", "Training curve", "training_curve", changed)
    assert len(calls) == 2
    assert (tmp_path / "report" / "training_curve.png").read_bytes() == b"\x89PNG" + repr(changed).encode()
    (tmp_path / "report" / "training_curve.png").unlink()  # a figure removed by hand is drawn again
    report._figure(run, "training_curve", "Training curve", "training_curve", changed)
    assert len(calls) == 3


def test_no_data_no_figure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(report_plots, "training_curve", lambda data: None)
    assert report._figure(RunDir(tmp_path), "training_curve", "Training curve", "training_curve", {}) == []
    assert not (tmp_path / "report" / "training_curve.png").exists()
