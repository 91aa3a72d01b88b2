import subprocess
import sys

import numpy as np

from probinfer import __version__
from probinfer.cli import main
from probinfer.inference_data import import_arviz


def test_version_and_help(capsys):
    for argv in (["--version"], ["--help"]):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0
    out = capsys.readouterr().out
    assert f"probinfer {__version__}" in out and "demo" in out


def test_console_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "probinfer", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in out.stdout


def test_demo_prints_kalman_comparison_and_writes_netcdf(tmp_path, capsys):
    path = tmp_path / "pf.nc"
    code = main(
        [
            "demo",
            "--num-particles",
            "500",
            "--num-steps",
            "30",
            "--chains",
            "2",
            "--output",
            str(path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "log Z (Kalman)" in out and "wrote ArviZ InferenceData" in out
    idata = import_arviz().from_netcdf(str(path))
    assert idata.posterior["x_T"].shape == (2, 500)
    log_z = np.asarray(idata.posterior.attrs["log_evidence"])
    # Each run's estimate is close to the exact value (N=500, T=30: sd of log Z ~ 0.1).
    assert np.all(np.abs(log_z - idata.posterior.attrs["kalman_log_evidence"]) < 1.0)


def test_demo_rejects_bad_arguments(capsys):
    try:
        main(["demo", "--num-particles", "0"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "positive integer" in capsys.readouterr().err
