"""The one place user-facing progress, messages and tables are printed (through ``rich``).

On a terminal, progress is a live ``rich`` bar (messages printed above it) and tables are
``rich`` tables. Anywhere else (a log file, CI, ``ray job`` logs, a pipe, a test) nothing
but plain lines is written, never an escape sequence: a progress line whenever what is
finished changes, else at most every ``interval`` seconds, and its last line once; tables
as plain columns (the same ``rich`` layout without borders or styles).

    console = Console()                          # messages and progress on stderr
    with console.progress("demo", total=4) as p:  # the sweep's bar
        p.update(done=1, running=2, queued=1)
    console.table(title, ["RUN", "STATUS"], rows)  # stdout
"""

from __future__ import annotations

import io
import sys
import threading
import time
from typing import Sequence

from .errors import plural

__all__ = ["Console", "Progress", "Steps", "DaskProgress", "table_text", "plural"]


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# on a terminal, headers wider than their values give way (the plain text keeps the full names)
SHORT_HEADERS = {"SNAPSHOTS": "SNAPS", "PARAMETERS": "PARAMS", "CONVERGED": "CONV", "BAD_INIT": "BAD",
                 "VAL_ACCURACY": "VAL_ACC", "TRAIN_LOSS": "TRAIN", "VAL_LOSS": "VAL"}


def _table(columns: Sequence[str], rows: Sequence[Sequence], *, justify=None, styled: bool,
           fold: Sequence[str] = (), width: int | None = None):
    """A rich table. ``styled`` (a terminal): columns with no value in any row are left
    out, long headers are shortened (:data:`SHORT_HEADERS`), and when the terminal is too
    narrow only the first column and those in ``fold`` (ids, paths) wrap onto further
    lines; every other column keeps its full width, so no value is cut to "…"."""
    from rich import box
    from rich.table import Table

    cells = [["" if v is None else str(v) for v in r] for r in rows]
    keep = list(range(len(columns)))
    if styled:
        keep = [j for j in keep if any(r[j].strip() for r in cells)] or keep
    t = Table(box=box.SIMPLE_HEAD if styled else None, show_edge=False, pad_edge=False,
              header_style="bold" if styled else None, show_header=True, padding=(0, 2, 0, 0))
    heads = {j: SHORT_HEADERS.get(columns[j], columns[j]) if styled else columns[j] for j in keep}
    natural = {j: max([len(heads[j]), *(len(r[j]) for r in cells)]) for j in keep}
    folding = [j for n, j in enumerate(keep) if styled and (n == 0 or columns[j] in fold)]
    fixed = sum(natural[j] + 2 for j in keep if j not in folding) + (len(keep) - 1)   # + the box's dividers
    share = None
    if width and folding and fixed + sum(natural[j] + 2 for j in folding) > width:
        share = max(6, (width - fixed) // len(folding) - 2)   # what the folded columns get, each
    for j in keep:
        c = columns[j]
        if j in folding:
            w = min(natural[j], share) if share else None
            t.add_column(heads[j], justify=(justify or {}).get(c, "left"), overflow="fold", width=w)
        else:
            t.add_column(heads[j], justify=(justify or {}).get(c, "left"), no_wrap=True,
                         min_width=natural[j] if styled else None)
    for r in cells:
        t.add_row(*(r[j] for j in keep))
    return t


def table_text(columns: Sequence[str], rows: Sequence[Sequence], *, justify: dict | None = None) -> str:
    """``rows`` under the ``columns`` headers as plain text (padded columns, no trailing
    blanks, no escape sequences): what logs, files and pipes get. ``justify`` maps a
    column to ``"right"`` for numbers."""
    from rich.console import Console as RichConsole

    buf = io.StringIO()
    rc = RichConsole(file=buf, width=100_000, force_terminal=False, color_system=None,
                     highlight=False, emoji=False, markup=False, legacy_windows=False)
    rc.print(_table(columns, rows, justify=justify, styled=False))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines() if line.strip())


class Console:
    """Messages and progress on ``stream`` (stderr), tables on stdout.

    ``quiet`` silences progress and ``info`` (not errors). On a terminal ``stream`` gets
    ``rich`` bars; otherwise plain lines only."""

    def __init__(self, stream=None, quiet: bool = False, interval: float = 10.0):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interval = interval
        self.tty = _isatty(self.stream)
        self._rich = None
        self._live = None  # the running rich.progress.Progress, if any
        self.last_line = time.monotonic()  # when a line was last written (plain mode)
        self._lock = threading.RLock()

    @property
    def rich(self):
        """A ``rich`` console on ``stream`` (terminal only)."""
        if self._rich is None:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(file=self.stream, force_terminal=True, highlight=False,
                                     soft_wrap=True, emoji=False, markup=False)
        return self._rich

    # -- messages ---------------------------------------------------------------
    def info(self, msg: str) -> None:
        if not self.quiet:
            self._print(msg)

    def error(self, msg: str) -> None:
        self._print(msg, style="red" if msg.startswith("kma: error") else None)

    def _print(self, msg: str, style=None) -> None:
        from .secrets import mask_url

        msg = mask_url(msg)   # a URL's password, key or token is never shown
        with self._lock:  # a progress ticker may write from its thread
            if self.tty:  # above a live bar, if one runs
                self.rich.print(msg, style=style)
            else:
                print(msg, file=self.stream, flush=True)
            self.last_line = time.monotonic()

    # -- tables (stdout) ---------------------------------------------------------
    def table(self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence], *,
              justify: dict | None = None, file=None, fold: Sequence[str] = ()) -> None:
        """Print a table on ``file`` (stdout): a ``rich`` table on a terminal, else
        :func:`table_text` (with ``title`` as its first line)."""
        out = file or sys.stdout
        if _isatty(out):
            from rich.console import Console as RichConsole

            rc = RichConsole(file=out, highlight=False, emoji=False, markup=False)
            if title:
                rc.print(title, style="bold")
            rc.print(_table(columns, rows, justify=justify, styled=True, fold=fold, width=rc.width))
        else:
            text = table_text(columns, rows, justify=justify)
            print((title + "\n" if title else "") + text, file=out, flush=True)

    # -- progress ---------------------------------------------------------------
    def progress(self, label: str, total: int, interval: float | None = None, tasks: int = 0) -> "Progress":
        """The sweep's progress: runs done / running / queued / failed out of ``total``
        (in ``tasks`` Ray tasks, when packing puts several runs in one)."""
        return Progress(self, label, total, self.interval if interval is None else interval, tasks)

    def steps(self, label: str, total: int, unit: str, interval: float | None = None,
              transient: bool = True) -> "Steps":
        """Progress of ``total`` steps of one phase (``unit``: what a step is)."""
        return Steps(self, label, total, unit, self.interval if interval is None else interval,
                     transient)

    def _start_bar(self, description: str, total: int, transient: bool):
        """A live rich bar (terminal only); one at a time."""
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        if self._live is not None:
            self._live.stop()
        # "M/N" only where there is a count (a phase without one pulses, never "0/0")
        bar = RichProgress(TextColumn("{task.description}"), BarColumn(bar_width=BAR_WIDTH),
                           TextColumn("{task.fields[count]}", style="green"),
                           TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                           console=self.rich, transient=transient, redirect_stdout=False,
                           redirect_stderr=False)
        task = bar.add_task(description, total=total or None, detail="", count="")
        bar.start()
        self._live = bar
        return bar, task

    def _stop_bar(self, bar) -> None:
        bar.stop()
        if self._live is bar:
            self._live = None


BAR_WIDTH = 20


def fit(text: str, width: int, least: int = 16) -> str:
    """``text`` cut in the middle with "…" to at most ``width`` characters (never below
    ``least``): a run id keeps its start and its distinguishing end."""
    width = max(width, least)
    if len(text) <= width:
        return text
    head = (width - 1) * 2 // 3
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


class _Line:
    """Shared by :class:`Progress` and :class:`Steps`: a rich bar on a terminal, else
    plain lines (on a change of ``key``, or every ``interval`` s; the last one once)."""

    transient = False

    def __init__(self, console: Console, interval: float):
        self.console, self.interval = console, interval
        self._t0 = self._last_time = time.monotonic()
        self._last_printed = None
        self._last_key = None
        self._bar = self._task = None
        self._closed = False
        if console.tty and not console.quiet:
            self._bar, self._task = console._start_bar(fit(self.description(), console.rich.width - BAR_WIDTH - 12),
                                                       self.total, self.transient)

    def description(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def plain(self, completed: int, detail: str) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _show(self, completed: int, detail: str, key, force: bool = False) -> None:
        """Show the state: on a terminal update the bar; else print a line if ``force``,
        if ``key`` changed (``key=None``: never by itself), or if the console has been
        silent for ``interval`` s."""
        if self.console.quiet or self._closed:
            return
        if self._bar is not None:
            count = f"{completed}/{self.total}" if self.total else ""
            detail = detail if self.total else ""
            # one line whatever the terminal's width: the description gives way (middle cut)
            room = self.console.rich.width - BAR_WIDTH - len(count) - len(detail) - 12
            self._bar.update(self._task, completed=completed, total=self.total or None, detail=detail,
                             count=count, description=fit(self.description(), room))
            return
        with self.console._lock:  # the ticker thread shows too
            if self._closed:
                return
            now = time.monotonic()
            changed = key is not None and key != self._last_key
            if force or changed or now - max(self._last_time, self.console.last_line) >= self.interval:
                self._print(f"{self.plain(completed, detail)} ({now - self._t0:.0f}s)")
                self._last_key, self._last_time = key, now

    def _print(self, text: str) -> None:
        self.console._print(text)
        self._last_printed = text

    def close(self) -> None:
        with self.console._lock:
            if self._closed:
                return
            self._final()
            self._closed = True
        if self._bar is not None:
            self.console._stop_bar(self._bar)

    def _final(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Progress(_Line):
    """The sweep's runs: ``done`` / ``running`` (started by Ray) / ``queued`` (submitted,
    waiting for resources) / ``failed`` out of ``total``; ``skipped`` already complete."""

    def __init__(self, console: Console, label: str, total: int, interval: float = 10.0, tasks: int = 0):
        self.label, self.total = label, total
        self.done = self.running = self.queued = self.failed = self.skipped = 0
        self.tasks, self.tasks_done = tasks, 0   # tasks (a packed one trains several runs) when fewer than runs
        super().__init__(console, interval)

    def description(self) -> str:
        return f"[{self.label}]"

    def text(self) -> str:
        return (f"{self.done} done, {self.running} running, {self.queued} queued, {self.failed} failed"
                + (f", {self.skipped} already complete" if self.skipped else "")
                + (f"; tasks {self.tasks_done}/{self.tasks}" if 0 < self.tasks < self.total else ""))

    def update(self, *, done=None, running=None, queued=None, failed=None, skipped=None,
               tasks_done=None, force=False) -> None:
        for name, val in (("done", done), ("running", running), ("queued", queued),
                          ("failed", failed), ("skipped", skipped), ("tasks_done", tasks_done)):
            if val is not None:
                setattr(self, name, val)
        # without a terminal a line is written when a task finishes (or every interval s)
        self._show(self.done + self.failed, self.text(), (self.done, self.failed, self.tasks_done), force)

    def plain(self, completed: int, detail: str) -> str:
        return f"{self.description()} {completed}/{self.total} finished: {detail}"

    def _final(self) -> None:
        """The final counts: on a terminal the bar's last state; in a log the last line
        only if the line already printed does not say it (never twice)."""
        key = (self.done, self.failed, self.tasks_done)
        self._show(self.done + self.failed, self.text(), key,
                   force=self._bar is None and self._last_printed is None)


class Steps(_Line):
    """``total`` steps of one phase (``unit`` names a step: ``"window"``, ``"task"``):
    ``advance()`` after each; ``label`` may change with :meth:`relabel` (``total=0``: a
    phase without counts). Without a terminal a background ticker writes the state
    whenever the console has been silent for ``interval`` s, so a long step (an MLflow
    upload, one big task) never leaves a log silent for longer."""

    def __init__(self, console: Console, label: str, total: int, unit: str, interval: float = 10.0,
                 transient: bool = True):
        self.label, self.total, self.unit, self.transient = label, int(total), unit, transient
        self.completed = 0
        super().__init__(console, interval)
        self._stop = None
        if self._bar is None and not console.quiet and interval > 0:
            self._stop = threading.Event()
            threading.Thread(target=self._tick, name="kma-progress", daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(min(1.0, self.interval)):
            self._show(self.completed, plural(self.total, self.unit, count=False), None)

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        super().close()

    def description(self) -> str:
        return self.label

    def relabel(self, label: str, total: int | None = None, unit: str | None = None) -> None:
        self.label = label
        if total is not None:
            self.total, self.completed = int(total), 0
        if unit is not None:
            self.unit = unit
        self._show(self.completed, plural(self.total, self.unit, count=False), None)

    def plain(self, completed: int, detail: str) -> str:
        return f"{self.label}: {completed}/{self.total} {detail}" if self.total else self.label

    def advance(self, n: int = 1) -> None:
        self.completed += n
        # without a terminal: a line only after interval s of silence
        self._show(self.completed, plural(self.total, self.unit, count=False), None)

    def _final(self) -> None:
        pass  # the caller prints the phase's result


class DaskProgress:
    """Progress of a local Dask computation (threads/processes schedulers) as
    :class:`Steps` of ``label``: ``[2/4] run: pass 42/310 tasks``."""

    def __init__(self, steps: Steps, label: str):
        from dask.callbacks import Callback

        outer = self

        class _CB(Callback):
            def _start_state(self, dsk, state):
                total = sum(len(state[k]) for k in ("ready", "waiting", "running") if k in state)
                steps.relabel(outer.label, total=total, unit="task")

            def _posttask(self, key, result, dsk, state, worker_id):
                steps.advance()

        self.label = label
        self._cb = _CB()

    def __enter__(self):
        self._cb.__enter__()
        return self

    def __exit__(self, *exc):
        self._cb.__exit__(*exc)
