"""Running core functions off the UI thread, with progress and a Cancel that works.

Core functions report ``progress(done, total)`` from the worker thread; a Qt signal
carries it to the UI thread (queued connection), so widgets never touch Qt from a
worker. Every run gets its own ``threading.Event`` for Cancel.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal

from ..errors import Cancelled, VirtualStainError

log = logging.getLogger(__name__)


class ProgressRelay(QObject):
    progressed = Signal(int, int)

    def __call__(self, done: int, total: int) -> None:  # called from the worker thread
        self.progressed.emit(int(done), int(total))


def report_error(err: BaseException, action: str) -> None:
    """User errors as their sentence; cancellations as info; anything else as a bug report."""
    if isinstance(err, Cancelled):
        show_info(f"{action} cancelled.")
    elif isinstance(err, VirtualStainError):
        show_error(str(err))
    else:
        log.exception("%s failed", action, exc_info=err)
        show_error(f"{action} failed unexpectedly ({type(err).__name__}: {err}). Please report this.")


class Job:
    """One background run: start it, cancel it, get told when it ends."""

    def __init__(self, func: Callable, *args, on_result: Callable, on_done: Callable,
                 action: str, relay: ProgressRelay | None = None, **kwargs):
        self.cancel_event = threading.Event()
        self.action = action
        kwargs = dict(kwargs, cancel=self.cancel_event)
        if relay is not None:
            kwargs["progress"] = relay
        # Handlers go through _connect: an "errored" handler given there stops superqt
        # from re-raising the worker's exception in the event loop.
        self.worker = create_worker(func, *args, _start_thread=False, _connect={
            "returned": on_result,
            "errored": lambda err: report_error(err, action),
            "finished": on_done,
        }, **kwargs)

    def start(self) -> None:
        self.worker.start()

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        return self.worker.is_running


class JobDockMixin:
    """What every dock with one background Job at a time shares: Cancel and the progress bar.

    The dock provides ``self.job`` (a :class:`Job` or None) and ``self.progress`` (a magicgui
    ProgressBar) and connects its ProgressRelay to ``_on_progress``.
    """

    job: Job | None

    def cancel(self, *_):
        if self.job is not None:
            self.job.cancel()

    def _on_progress(self, done: int, total: int):
        self.progress.max = max(total, 1)
        self.progress.value = done


__all__ = ["Job", "JobDockMixin", "ProgressRelay", "report_error", "show_warning", "show_info"]
