"""Test seams: the points where a test acts on a running sweep, and the one module that
reads their switches (environment variables, so they reach the Ray nodes and a ``kma``
subprocess alike). Unset, as in normal use, every seam does nothing.

- ``KMA_TEST_INTERRUPT_AFTER=N`` (the sweep driver, :func:`after_recorded`): the sweep
  sends itself a real SIGINT once N results are recorded and the next task has been
  submitted, so a test interrupts it at a known point (no race with polling the store).
- ``KMA_TEST_TASK_HOOK=DIR`` (a sweep's Ray task, :func:`task_callbacks`; set in the
  environment ``ray start`` runs in): after its third snapshot a task writes
  ``DIR/<run_id>.<pid>`` (its node id) and waits while ``DIR/<run_id>.hold`` or
  ``DIR/all.hold`` exists, so a test can find a task's worker mid-training and kill it,
  or keep a sweep live.

A new seam is one switch here, read by one function the production code calls at that
point (see the development page of the docs).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

INTERRUPT_ENV = "KMA_TEST_INTERRUPT_AFTER"
TASK_HOOK_ENV = "KMA_TEST_TASK_HOOK"
TASK_HOOK_AFTER = 3  # snapshots before the task hook reports and holds


def after_recorded(recorded: int) -> None:
    """The sweep driver has recorded ``recorded`` results and submitted the next task."""
    after = os.environ.get(INTERRUPT_ENV)
    if after and recorded >= int(after):
        # raise_signal sends it to this (the main) thread, so the handler runs at once;
        # os.kill let any of Ray's threads take it, and the main thread then slept on while
        # the next task finished (a flaky test). The raise below is only a backstop.
        signal.raise_signal(signal.SIGINT)
        raise KeyboardInterrupt


def task_callbacks(run_id: str) -> tuple:
    """Training callbacks a sweep's Ray task adds for the run ``run_id``: none unless set."""
    folder = os.environ.get(TASK_HOOK_ENV)
    return (TaskHook(folder, run_id),) if folder else ()


class TaskHook:
    """``$KMA_TEST_TASK_HOOK`` (see the module docstring)."""

    def __init__(self, folder: str, run_id: str):
        self.folder, self.run_id, self.seen = Path(folder), run_id, 0

    def on_snapshot(self, flat, epoch: int, step: int) -> None:
        from .runtime.ray_connect import node_of_task

        self.seen += 1
        if self.seen != TASK_HOOK_AFTER:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{self.run_id}.{os.getpid()}").write_text(str(node_of_task().get("node_id")))
        while (self.folder / f"{self.run_id}.hold").exists() or (self.folder / "all.hold").exists():
            time.sleep(0.2)
