"""CLI conventions (issue 15, point 7): defaults in every help text, bare ``probinfer`` -> help and
exit 2, one-line errors with exit 2 checked before any weights load, ``--quiet``."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from probinfer.cli import build_parser, main


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_bare_command_prints_help_and_exits_2(capsys):
    assert _exit_code([]) == 2
    assert "usage: probinfer" in capsys.readouterr().err
    out = subprocess.run([sys.executable, "-m", "probinfer"], capture_output=True, text=True)
    assert out.returncode == 2 and "COMMAND" in out.stderr


def test_demo_flags_are_all_described_with_defaults():
    parser = build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]
    for action in demo._actions:
        if action.dest in ("help",):
            continue
        assert action.help, f"--{action.dest} has no help text"
    text = demo.format_help()
    for default in ("10000", "100", "systematic", "0.5", "out/lgssm_pf.nc"):
        assert f"(default: {default})" in text
    assert "(default: False)" in parser.format_help()  # --quiet


def _parsers():
    parser = build_parser()
    return [parser, *parser._subparsers._group_actions[0].choices.values()]


def test_every_option_of_every_command_shows_its_default():
    for parser in _parsers():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if not action.option_strings:
                continue  # the subcommand
            name = f"{parser.prog} {action.option_strings[-1]}"
            assert action.help, f"{name} has no help text"
            text = formatter._expand_help(action)
            assert text.count("(default: ") == 1, f"{name}: {text!r} shows no or two defaults"
    scale = " ".join(_parsers()[-1].format_help().split())  # unwrapped
    for default in ("1,2,4,8,16,32", "100", "learned", "the bundled tiny LM", "0.1", "10", "6"):
        assert f"(default: {default})" in scale


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--ess-threshold", "1.5"], "must be a number in [0, 1]"),
        (["demo", "--chains", "0"], "positive integer"),
        (["scale", "--problems", "/no/such/file.jsonl"], "--problems: no such file"),
        (["scale", "--answer-regex", "(unclosed"], "--answer-regex: invalid regular expression"),
        (["scale", "--model", "/no/such/model"], "--model: no such local model directory"),
        (["scale", "--threads", "0"], "argument --threads: must be a positive integer"),
        (["scale", "--num-problems", "x"], "argument --num-problems: must be a positive integer"),
        (["scale", "--alpha", "1.5"], "argument --alpha: must be a number strictly between 0 and"),
        (["scale", "--alpha", "0"], "argument --alpha: must be a number strictly between 0 and"),
        (["scale", "--prm", "nonsense"], "--prm must be one of learned, likelihood, verifier or"),
        (["scale", "--output", "/"], "--output: '/' is a directory"),
        (["demo", "--output", __file__ + "/x.nc"], "is a file, not a directory"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv, message, capsys):
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["scale", "--answer-regex", "("],
        ["scale", "--prm", "nonsense"],  # failed only after the LM weights loaded
        ["scale", "--alpha", "1.5"],  # was accepted without --calibrate
        ["scale", "--calibrate", "5", "--budgets", "4"],  # crashed after all the runs
        ["scale", "--calibrate", "100"],
    ],
)
def test_errors_come_before_any_weights_load(argv):
    # a subprocess: the check must fire before torch/transformers are even imported
    code = (
        "import sys; from probinfer.cli import main\n"
        f"try: main({argv!r})\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False", "False"], out.stderr


def test_quiet_is_accepted_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--quiet", "demo"]).quiet
    assert parser.parse_args(["demo", "-q"]).quiet
    assert not parser.parse_args(["demo"]).quiet


def test_a_failed_server_is_one_line_not_a_traceback(monkeypatch, capsys):
    from probinfer.llm import cli as llm_cli
    from probinfer.llm.server import ServerError

    def fail(args):
        raise ServerError("POST http://127.0.0.1:9/v1/completions failed: connection refused")

    monkeypatch.setattr(llm_cli, "_run_scale", fail)
    assert _exit_code(["scale", "--server", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "error: POST http://127.0.0.1:9/v1/completions failed" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_bug_still_shows_its_traceback(monkeypatch):
    from probinfer.llm import cli as llm_cli

    monkeypatch.setattr(llm_cli, "_run_scale", lambda args: [][0])
    with pytest.raises(IndexError):
        main(["scale"])
