"""One progress convention for every long loop of the package.

A tqdm bar is shown only where someone watches it update: when the stream it writes to
(stderr by default) is a terminal, or in a Jupyter kernel where ``ipywidgets`` is
importable (a widget bar; without widgets tqdm's notebook bar would only warn
``IProgress not found``). Everywhere else (scripts piped to a file, CI logs, a notebook
without widgets) there is no bar: each stage writes one summary line when it completes,
so a log holds one line per stage instead of thousands of carriage-return updates.
``progress=True`` forces the bar, ``progress=False`` silences both, ``None`` chooses as
above. A stage whose length is unknown (``total=None``) shows counts and rates, never a
percentage.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["ProgressBar", "progress_bar", "use_bar"]


def _in_widget_notebook() -> bool:
    """Whether this process is a Jupyter kernel that can show ipywidgets."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except AttributeError:  # a partial or unusual IPython install
        return False
    if shell is None or not hasattr(shell, "kernel"):
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _is_terminal(file: IO[str]) -> bool:
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def use_bar(progress: bool | None, file: IO[str] | None = None) -> bool:
    """Whether a live bar is shown for the ``progress`` setting (``None``: auto).

    ``None`` shows one when ``file`` (default ``sys.stderr``) is a terminal or in a
    Jupyter kernel with ``ipywidgets``.
    """
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    if progress is not None:
        return progress
    return _is_terminal(sys.stderr if file is None else file) or (
        file is None and _in_widget_notebook()
    )


def _format_count(n: float) -> str:
    return f"{int(n)}" if float(n).is_integer() else f"{n:.3g}"


class ProgressBar:
    """The progress display of one stage of work, by the package's one convention: a live
    tqdm bar, a one-line summary at :meth:`close`, or nothing (see the module docstring).
    Use as a context manager or call :meth:`close`. The interface is the part of tqdm's
    that loops use: :meth:`update`, :meth:`set_postfix`, :meth:`close`, and :attr:`n`.

    Parameters
    ----------
    total
        Number of units in the stage, or ``None`` when unknown (an adaptive run's number of
        steps): the bar then shows counts and rates, never a percentage.
    desc
        The stage's label (``"tempered SMC"``, ``"training"``).
    progress
        ``None`` (auto): a live bar when ``file`` (default stderr) is a terminal or in a
        Jupyter kernel with ``ipywidgets``, otherwise one summary line when the stage
        closes. ``True``: always the bar. ``False``: no output at all.
    file
        Stream for the bar and the summary line (default ``sys.stderr``).
    unit
        Name of a unit (``"step"``, ``"run"``).
    initial
        Units already done (a resumed run).
    delay
        Seconds before a live bar first appears (short stages stay silent).
    mininterval
        Least seconds between two redraws of a live bar.

    Raises
    ------
    ValueError
        If ``total`` is not a non-negative integer or ``None``.
    TypeError
        If ``progress`` is not ``True``, ``False`` or ``None``.
    """

    def __init__(
        self,
        total: int | None,
        *,
        desc: str,
        progress: bool | None = None,
        file: IO[str] | None = None,
        unit: str = "it",
        initial: int = 0,
        delay: float = 0.0,
        mininterval: float = 0.1,
    ):
        if total is not None and (isinstance(total, bool) or int(total) != total or total < 0):
            raise ValueError(f"total must be a non-negative integer or None, got {total!r}")
        if not isinstance(desc, str):
            raise TypeError(f"desc must be a string, got {type(desc).__name__}")
        self.total = None if total is None else int(total)
        self.desc = desc
        self.unit = unit
        self.n = int(initial)
        self._initial = int(initial)
        self._file = file
        self._postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._closed = False
        self._summary = progress is not False
        self._bar = None
        if use_bar(progress, file):
            self._summary = False
            if file is None and _in_widget_notebook() and not _is_terminal(sys.stderr):
                from tqdm.notebook import tqdm
            else:
                from tqdm.std import tqdm
            self._bar = tqdm(
                total=self.total,
                desc=desc,
                unit=unit,
                initial=self.n,
                file=file,
                delay=delay,
                mininterval=mininterval,
                dynamic_ncols=True,
            )

    @property
    def live(self) -> bool:
        """Whether a live bar is shown."""
        return self._bar is not None

    def update(self, n: float = 1) -> None:
        """Advance by ``n`` units."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the bar (and in the summary line), e.g. ``loss=...``."""
        self._postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(values)

    def summary_line(self) -> str:
        """The one-line summary written at :meth:`close` when there is no live bar."""
        elapsed = time.perf_counter() - self._start
        done = _format_count(self.n)
        count = f"{done}/{self.total}" if self.total is not None else done
        line = f"{self.desc}: {count} {self.unit} in {elapsed:.1f} s"
        steps = self.n - self._initial
        if steps > 0 and elapsed > 0:
            line += f" ({steps / elapsed:.3g} {self.unit}/s)"
        if self._postfix:
            line += ", " + ", ".join(f"{k}={v}" for k, v in self._postfix.items())
        return line

    def close(self) -> None:
        """End the stage: close the bar, or write the summary line (once)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._summary:
            file = sys.stderr if self._file is None else self._file
            print(self.summary_line(), file=file, flush=True)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: The constructor every loop calls (a function name, as ``tqdm`` is).
progress_bar = ProgressBar
