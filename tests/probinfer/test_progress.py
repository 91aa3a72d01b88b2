"""The progress convention: bars only where they update live, one summary line elsewhere."""

import io
import sys
import types
import warnings

import pytest

from probinfer.progress import progress_bar, use_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(total, file, progress=None, steps=3):
    with progress_bar(total, desc="stage", progress=progress, file=file, unit="step") as bar:
        for _ in range(steps):
            bar.update(1)
        bar.set_postfix(loss="0.5")
    return file.getvalue()


def test_not_a_terminal_gives_one_summary_line():
    out = _run(5, io.StringIO())
    assert out.count("\n") == 1 and "\r" not in out
    assert out.startswith("stage: 3/5 step in ") and out.rstrip().endswith("loss=0.5")


def test_terminal_gives_a_live_bar():
    out = _run(5, _Terminal())
    assert "\r" in out and "60%" in out and "stage" in out


def test_unknown_total_shows_no_percentage():
    assert "%" not in _run(None, _Terminal())
    out = _run(None, io.StringIO())
    assert out.startswith("stage: 3 step in ") and "%" not in out


def test_progress_overrides():
    assert _run(5, io.StringIO(), progress=False) == ""
    assert _run(5, _Terminal(), progress=False) == ""
    assert "\r" in _run(5, io.StringIO(), progress=True)


def test_notebook_without_widgets_never_warns(monkeypatch):
    """A Jupyter kernel without ipywidgets: no tqdm notebook bar (it would warn
    ``IProgress not found``), the summary line instead."""
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not use_bar(None)
        with progress_bar(4, desc="nb") as bar:
            bar.update(4)
    assert err.getvalue().startswith("nb: 4/4 it in ")


def test_notebook_with_widgets_chooses_the_bar(monkeypatch):
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setitem(sys.modules, "ipywidgets", types.ModuleType("ipywidgets"))
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert use_bar(None)
    monkeypatch.setitem(
        sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None)
    )  # IPython imported, but no kernel (a terminal IPython or a script)
    assert not use_bar(None)


def test_bad_arguments():
    with pytest.raises(TypeError, match="progress"):
        progress_bar(3, desc="x", progress="yes")
    with pytest.raises(ValueError, match="total"):
        progress_bar(-1, desc="x")
    with pytest.raises(ValueError, match="total"):
        progress_bar(2.5, desc="x")


def test_close_is_idempotent():
    f = io.StringIO()
    bar = progress_bar(2, desc="s", file=f)
    bar.update(2)
    bar.close()
    bar.close()
    assert f.getvalue().count("\n") == 1
