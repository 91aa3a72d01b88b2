"""``probinfer scale --calibrate N_CAL --alpha A`` on the bundled task (tiny run) and the
section's arithmetic on cached runs."""

from __future__ import annotations

import json

import pytest

from calibration.answer_sets import RunSummary
from calibration.llm_scale import calibration_rows, check_scale_calibration


def test_scale_cli_calibrate_adds_section(tmp_path, capsys):
    pytest.importorskip("transformers")
    from probinfer.cli import main

    out = tmp_path / "scale.json"
    args = [
        "scale",
        "--num-problems",
        "4",
        "--budgets",
        "1,2",
        "--algorithms",
        "particle_filter",
        "--prm",
        "verifier",
        "--output",
        str(out),
        "--no-progress",
    ]
    assert main([*args, "--calibrate", "2", "--alpha", "0.5"]) == 0
    report = json.loads(out.read_text())
    cal = report["calibrated"]
    assert cal["num_calibration"] == 2 and cal["num_test"] == 2 and cal["alpha"] == 0.5
    assert [r["budget"] for r in cal["per_budget"]] == [1, 2]
    # the calibrated runs are the scaling table's particle-filter runs (same keys)
    acc = [r["accuracy"] for r in report["results"]["particle_filter"]]
    assert all(0 <= r["coverage"] <= 1 for r in cal["per_budget"]) and len(acc) == 2
    assert "compute_saved" in cal["adaptive"]
    text = capsys.readouterr().out
    assert "calibrated (alpha 0.5" in text and "adaptive budget" in text
    assert out.with_suffix(".png").stat().st_size > 0


def test_scale_cli_calibrate_bad_input_fails_before_running(capsys):
    from probinfer.cli import main

    args = ["scale", "--num-problems", "4", "--budgets", "1,2", "--no-progress"]
    for extra, what in (
        (["--calibrate", "4"], "--calibrate"),
        (["--calibrate", "0"], "n_cal"),
        (["--calibrate", "3", "--alpha", "1.5"], "alpha"),
    ):
        with pytest.raises(SystemExit):
            main([*args, *extra])
        assert what in capsys.readouterr().err


def test_calibration_rows_on_cached_runs():
    def run(a, s, tokens):
        return RunSummary((a,), [0.0], [s], budget=1, tokens_generated=tokens)

    answers = ["1", "2"] * 15
    runs = {
        1: [run(a, 0.9, 10) for a in answers],  # always right, confident: stops at budget 1
        2: [run(a, 0.9, 20) for a in answers],
    }
    c = calibration_rows(runs, answers, [1, 2], 20, 0.2)
    assert c["per_budget"][0]["accuracy"] == 1.0 and c["per_budget"][0]["coverage"] == 1.0
    a = c["adaptive"]
    assert a["stop_fraction"] == [1.0, 0.0] and a["compute_saved"] == pytest.approx(1 - 10 / 20)
    with pytest.raises(ValueError, match="n_cal"):
        check_scale_calibration(0, 0.1, 10)
