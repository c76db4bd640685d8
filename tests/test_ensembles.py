"""Finished runs averaged on validation: the row's arithmetic, and bad groups refused before measuring."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_benchmark_flag_fails

from benchmarks import record
from benchmarks.ensembles import ensemble_row


def test_averaging_fixes_only_the_images_the_runs_disagree_on():
    labels = np.array([0, 1, 2, 0])
    # Image 0: every run right. Image 1: every run wrong. Image 2: one run wrong,
    # outvoted by the other two. Image 3: two runs narrowly wrong, one confidently right.
    runs = [
        np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.1, 0.0, 0.9], [0.4, 0.6, 0.0]]),
        np.array([[0.8, 0.2, 0.0], [0.7, 0.3, 0.0], [0.0, 0.9, 0.1], [0.45, 0.55, 0.0]]),
        np.array([[0.7, 0.3, 0.0], [0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [1.0, 0.0, 0.0]]),
    ]
    row = ensemble_row("toy", runs, labels, seeds=[0, 1, 2], class_names=("a", "b", "c"))
    assert row["seeds"] == "0,1,2" and row["validation images"] == 4
    assert row["errors, each"] == "2, 3, 1"
    assert row["val as served, each (%)"] == "50.00, 25.00, 75.00"
    assert row["val as served, median (%)"] == 50.0
    assert row["errors every run makes"] == 1 and row["errors any run makes"] == 3
    assert row["commonest errors every run makes (label as averaged prediction), top 4"] == "b as a 1"
    assert row["val, runs averaged (%)"] == 75.0  # Images 0, 2 and 3.
    assert row["averaged vs median (points)"] == pytest.approx(25.0)


def test_bad_ensemble_runs_fail_in_one_line_before_measuring(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    for bad, message in (
        (f"--ensemble_runs={tmp_path / 'a'}", "expected NAME=WORKDIR"),
        (f"--ensemble_runs=fast={tmp_path / 'a'}", "fast names one run; name at least two"),
        (f"--ensemble_runs=fast={tmp_path / 'a'},fast={tmp_path / 'missing'}", "holds no config.json"),
    ):
        assert_benchmark_flag_fails(tmp_path, bad, message)


def test_a_new_group_joins_the_recorded_ones_and_a_group_named_again_replaces_its_row():
    averaged = "val, runs averaged (%)"
    recorded = {"rows": [{"runs": "fast", averaged: 95.2}, {"runs": "best", averaged: 96.4}]}
    rows = record.merge_rows(recorded, [{"runs": "best", averaged: 96.5}, {"runs": "wide"}], "runs")
    assert [row["runs"] for row in rows] == ["fast", "best", "wide"]
    assert rows[1][averaged] == 96.5
    assert record.merge_rows(None, rows, "runs") == rows
    assert {"views", "ensembles", "candidates"} <= record.ACCUMULATED
