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


def test_probinfer_never_imports_calibration():
    """Layering: no module of the probinfer package imports the calibration package (the
    command line loads its ``--calibrate`` part by name, only when the flag is given), and
    building the parser and parsing ``scale`` arguments load none of it."""
    import ast
    from pathlib import Path

    import probinfer

    root = Path(probinfer.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n == "calibration" or n.startswith("calibration.") for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
    code = (
        "import sys, probinfer.cli; p = probinfer.cli.build_parser(); "
        "a = p.parse_args(['scale', '--calibrate', '3', '--budgets', '1,2']); "
        "assert a.calibrate == 3 and a.alpha == 0.1; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'calibration'], 'loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
