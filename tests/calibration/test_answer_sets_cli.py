"""``probinfer scale --calibrate N_CAL --alpha A`` on the bundled task (tiny run) and the
section's arithmetic on cached runs."""

from __future__ import annotations

import json

import pytest

from calibration.answer_sets import RunSummary
from calibration.llm_adaptive import AdaptiveBudget
from calibration.llm_scale import (
    calibration_rows,
    check_scale_calibration,
    format_calibration,
    min_calibration_problems,
    plot_calibration,
)


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
    # 2 problems certify nothing at alpha 0.5 (Learn-then-Test needs 4 and 8): reported so
    assert cal["adaptive"] is None and cal["per_budget"][0]["abstention_rate"] is None
    captured = capsys.readouterr()
    text = captured.out
    assert "calibrated (alpha 0.5" in text
    assert "adaptive budget: not enough calibration problems" in text
    assert "warning: not enough calibration problems" in captured.err  # said before the runs
    assert out.with_suffix(".png").stat().st_size > 0


def test_scale_cli_calibrate_bad_input_fails_before_running(capsys, monkeypatch):
    import probinfer.llm.cli
    from probinfer.cli import main

    def no_model(args):
        raise AssertionError("a model was built before the arguments were checked")

    monkeypatch.setattr(probinfer.llm.cli, "_build_model", no_model)
    args = ["scale", "--num-problems", "4", "--no-progress"]
    for extra, what in (
        (["--budgets", "1,2", "--calibrate", "4"], "--calibrate N_CAL must be smaller"),
        (["--budgets", "1,2", "--calibrate", "0"], "--calibrate: must be a positive integer"),
        (["--budgets", "1,2", "--calibrate", "3", "--alpha", "1.5"], "--alpha"),
        # the user trial's crash ("argmax of an empty sequence" after all the runs)
        (["--budgets", "4", "--calibrate", "2"], "--calibrate needs at least two --budgets"),
        (["--budgets", "4,4", "--calibrate", "2"], "--calibrate needs at least two --budgets"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([*args, *extra])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert what in err and len(err.strip().splitlines()) == 1


def test_adaptive_budget_with_one_budget_stops_there():
    answers = ["1", "2"] * 15
    runs = [[RunSummary((a,), [0.0], [0.9], tokens_generated=7)] for a in answers]
    ad = AdaptiveBudget((4,), alpha=0.2).calibrate(runs, answers)
    ev = ad.evaluate(runs, answers)
    assert ev["adaptive"]["stop_fraction"] == [1.0] and ev["adaptive"]["accuracy"] == 1.0
    assert ev["adaptive"]["tokens_generated"] == 7.0
    assert ad.predict(runs)[0] == answers


def test_min_calibration_problems_match_the_estimators():
    need = min_calibration_problems(0.1)
    # conformal: k = ceil((n + 1) 0.9) <= n from n = 9; LTT zero losses: 0.9^n <= level
    assert need == {"answer_sets": 9, "abstention": 51, "adaptive": 22}
    assert min_calibration_problems(0.5) == {"answer_sets": 1, "abstention": 8, "adaptive": 4}


def test_too_few_calibration_problems_are_reported_not_100_percent(tmp_path):
    # the user trial: --calibrate 5 printed 100% coverage, 100% abstention, "compute saved
    # -50.2%": with 5 calibration problems at alpha 0.1 every part is trivial
    def run(a, tokens):
        return RunSummary((a, "0"), [0.0, -1.0], [0.9, 0.2], tokens_generated=tokens)

    answers = ["1", "2"] * 10
    runs = {1: [run(a, 10) for a in answers], 2: [run(a, 20) for a in answers]}
    c = calibration_rows(runs, answers, [1, 2], 5, 0.1)
    assert c["adaptive"] is None
    for row in c["per_budget"]:
        assert row["accuracy"] == 1.0
        assert row["coverage"] is None and row["mean_set_size"] is None
        assert row["abstention_rate"] is None and row["error_among_answered"] is None
    text = format_calibration({"calibrated": c})
    assert "100.0%" in text  # the accuracy column only
    assert text.count("not enough calibration problems") == 3
    assert "answer sets: not enough calibration problems (5; alpha 0.1 needs at least 9" in text
    assert "adaptive budget: not enough calibration problems" in text
    assert "compute saved" not in text
    report = {"results": {"particle_filter": c["per_budget"]}, "calibrated": c}
    assert plot_calibration(report, tmp_path / "cal.png").stat().st_size > 0
    # 10 calibration problems suffice for the sets, not for Learn-then-Test
    c = calibration_rows(runs, answers, [1, 2], 10, 0.1)
    assert c["per_budget"][0]["coverage"] == 1.0 and c["per_budget"][0]["mean_set_size"] < 2
    assert c["adaptive"] is None


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
    assert "compute saved 50.0% of its tokens" in format_calibration({"calibrated": c})
    with pytest.raises(ValueError, match="n_cal"):
        check_scale_calibration(0, 0.1, 10)
    with pytest.raises(ValueError, match="two --budgets"):
        calibration_rows({1: runs[1]}, answers, [1], 20, 0.2)
