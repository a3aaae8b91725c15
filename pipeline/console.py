"""The one place user-facing progress and messages are printed.

On a terminal, progress rewrites one status line; elsewhere (CI, ``ray job`` logs) it
prints a line whenever the counts change, and at most every ``interval`` seconds for
long phases, so logs stay readable.
"""

from __future__ import annotations

import sys
import time


class Console:
    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._open_line = False

    def info(self, msg: str) -> None:
        if self.quiet:
            return
        self._end_line()
        print(msg, file=self.stream, flush=True)

    def error(self, msg: str) -> None:
        self._end_line()
        print(msg, file=self.stream, flush=True)

    def status(self, msg: str) -> None:
        """A transient status line (rewritten in place on a terminal)."""
        if self.quiet:
            return
        if self.tty:
            print("\r\033[K" + msg, end="", file=self.stream, flush=True)
            self._open_line = True
        else:
            print(msg, file=self.stream, flush=True)

    def _end_line(self):
        if self._open_line:
            print(file=self.stream, flush=True)
            self._open_line = False

    def progress(self, label: str, total: int, interval: float = 10.0) -> "Progress":
        return Progress(self, label, total, interval)


class Progress:
    """Counts of done / running / failed out of a total."""

    def __init__(self, console: Console, label: str, total: int, interval: float):
        self.console, self.label, self.total, self.interval = console, label, total, interval
        self.done = self.running = self.failed = self.skipped = 0
        self._last_text = None
        self._last_time = 0.0
        self._t0 = time.monotonic()

    def update(self, *, done=None, running=None, failed=None, skipped=None, force=False) -> None:
        for name, val in (("done", done), ("running", running), ("failed", failed), ("skipped", skipped)):
            if val is not None:
                setattr(self, name, val)
        text = (
            f"[{self.label}] {self.done + self.failed}/{self.total} finished: "
            f"{self.done} done, {self.running} running, {self.failed} failed"
            + (f", {self.skipped} already complete" if self.skipped else "")
        )
        now = time.monotonic()
        if force or text != self._last_text or now - self._last_time >= self.interval:
            elapsed = now - self._t0
            self.console.status(f"{text} ({elapsed:.0f}s)")
            self._last_text, self._last_time = text, now

    def close(self) -> None:
        self.update(force=True)
        self.console._end_line()


class DaskProgress:
    """Periodic progress of a local Dask computation (threads/processes schedulers):
    ``label: 42% of 310 tasks``, on a terminal in place, elsewhere every ``interval`` s."""

    def __init__(self, console: Console, label: str, interval: float = 10.0):
        from dask.callbacks import Callback

        outer = self

        class _CB(Callback):
            def _start_state(self, dsk, state):
                outer.total = sum(len(state[k]) for k in ("ready", "waiting", "running") if k in state)
                outer.done = 0

            def _posttask(self, key, result, dsk, state, worker_id):
                outer.done += 1
                outer._maybe_print()

        self.console, self.label, self.interval = console, label, interval
        self.total = self.done = 0
        self._last = time.monotonic()
        self._cb = _CB()

    def _maybe_print(self):
        now = time.monotonic()
        if self.total and now - self._last >= (0.5 if self.console.tty else self.interval):
            self._last = now
            self.console.status(f"{self.label}: {100 * self.done / self.total:.0f}% of {self.total} tasks")

    def __enter__(self):
        self._cb.__enter__()
        return self

    def __exit__(self, *exc):
        self._cb.__exit__(*exc)
        self.console._end_line()
