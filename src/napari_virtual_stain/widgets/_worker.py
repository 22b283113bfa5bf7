"""Running core functions off the UI thread, with progress and a Cancel that works.

Core functions report ``progress(done, total)`` from the worker thread; a Qt signal
carries it to the UI thread (queued connection), so widgets never touch Qt from a
worker. Every run gets its own ``threading.Event`` for Cancel. A dock that is closed,
or whose viewer closes, cancels its run and never touches its deleted widgets or the
viewer afterwards (:class:`JobDockMixin`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Callable, Sequence

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.compat import isalive
from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import QDockWidget, QMainWindow

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
    """One background run: start it, cancel it, get told when it ends.

    ``inputs``: the layers the run reads; if one is removed from the viewer while the run
    goes, the dock drops the run (see :class:`JobDockMixin`). A dropped job is cancelled
    and delivers nothing: its result or error is discarded, and the reason, if any, is
    shown once as an info notification. ``on_done`` still runs while the dock lives, so
    its buttons come back; once the dock is gone (closed, deleted, viewer closed) nothing
    is delivered at all. An exception raised by ``on_result`` is reported like one from
    the run instead of escaping into the event loop.
    """

    def __init__(self, func: Callable, *args, on_result: Callable, on_done: Callable,
                 action: str, relay: ProgressRelay | None = None, on_error: Callable | None = None,
                 inputs: Sequence = (), on_abandoned: Callable | None = None, **kwargs):
        self.cancel_event = threading.Event()
        self.action = action
        self.inputs = tuple(inputs)
        self.dropped = False
        self.drop_reason: str | None = None
        self.settled = False  # its result or error has reached the UI thread
        self.dock_alive: Callable[[], bool] = lambda: True  # set by JobDockMixin.launch
        self._on_result, self._on_done, self._on_error = on_result, on_done, on_error
        # Called with the result of a run nobody will see (dock gone or run dropped), so work
        # worth keeping (a model trained for minutes) is kept. Plain Python: touch no widget.
        self._on_abandoned = on_abandoned
        kwargs = dict(kwargs, cancel=self.cancel_event)
        if relay is not None:
            kwargs["progress"] = relay
        # The worker calls _call, which holds what the run reads: napari keeps finished
        # workers in its task list, and _finished lets go of these (layer data, a trainer's
        # model and optimiser on the device) so they do not live as long as napari.
        self._call: tuple | None = (func, args, kwargs)
        # Handlers go through _connect: an "errored" handler given there stops superqt
        # from re-raising the worker's exception in the event loop.
        self.worker = create_worker(self._run, _start_thread=False, _connect={
            "returned": self._returned,
            "errored": self._errored,
            "finished": self._finished,
        })

    def _run(self):  # the worker thread
        func, args, kwargs = self._call
        return func(*args, **kwargs)

    # The run's state: "ready" -> "running" -> ("cancelling" ->) "done" | "cancelled" | "failed".
    state = "ready"

    def start(self) -> None:
        self.state = "running"
        self.worker.start()

    def cancel(self) -> None:
        if self.state == "running":
            self.state = "cancelling"
        self.cancel_event.set()

    def drop(self, reason: str | None = None) -> None:
        """Cancel and discard whatever the run still delivers; ``reason`` is told once."""
        if not self.dropped:
            self.dropped, self.drop_reason = True, reason
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        return self.worker.is_running

    # -- delivery (UI thread) ----------------------------------------------------------------
    def _tell_dropped(self) -> None:
        if self.drop_reason:
            show_info(self.drop_reason)
            self.drop_reason = None

    def _returned(self, result) -> None:
        self.settled = True
        self.state = "cancelled" if self.dropped else "done"
        if not self.dock_alive() or self.dropped:
            self._abandon(result)
        if not self.dock_alive():
            log.info("%s finished after its dock was closed; result dropped", self.action)
        elif self.dropped:
            self._tell_dropped()
        else:
            try:
                self._on_result(result)
            except Exception as err:  # a bug or a user error while showing the result
                self._report(err)

    def _abandon(self, result) -> None:
        if self._on_abandoned is None:
            return
        try:
            self._on_abandoned(result)
        except Exception:  # keeping work must never crash the event loop
            log.exception("%s: keeping the abandoned result failed", self.action)

    def _errored(self, err: BaseException) -> None:
        self.settled = True
        self.state = "cancelled" if isinstance(err, Cancelled) or self.dropped else "failed"
        if not self.dock_alive():
            log.info("%s ended after its dock was closed (%s)", self.action, type(err).__name__)
        elif self.dropped:
            self._tell_dropped()
        else:
            self._report(err)

    def _report(self, err: BaseException) -> None:
        report_error(err, self.action)
        if self._on_error is not None:
            self._on_error(err)

    def _finished(self) -> None:
        self._call = self._on_abandoned = None  # delivered: keep nothing the run used alive
        if self.dock_alive():
            self._on_done()


class _Lifetime:
    """Plain-Python state of a dock's life: no Qt calls, so it is safe after the dock is deleted."""

    def __init__(self, dock):
        self.dock = weakref.ref(dock)
        self.gone = False  # removed from the viewer, deleted, or its viewer closed
        self.docked = False
        self.job: Job | None = None
        self.layers_watched = False
        self.on_close: list[Callable[[], None]] = []  # plain-Python clean-ups when the dock goes

    def alive(self) -> bool:
        dock = self.dock()
        if self.gone or dock is None or not isalive(dock):
            return False
        window = getattr(getattr(dock, "viewer", None), "window", None)
        if window is not None and getattr(window, "_qt_window", None) is None:  # Viewer.close() ran
            self.gone = True
            return False
        return True

    def end(self, reason: str | None = None, gone: bool = True) -> None:
        """The dock was closed (``gone``) or hidden: cancel its run and drop what it delivers."""
        if gone:
            self.gone = True
            while self.on_close:  # each once, however often the dock is seen to go
                clean_up = self.on_close.pop(0)
                try:
                    clean_up()
                except Exception:  # a clean-up must never break closing
                    log.exception("clean-up after closing a dock failed")
        if self.job is not None and not self.job.settled:
            self.job.drop(reason)

    def layer_removed(self, event) -> None:
        job, layer = self.job, getattr(event, "value", None)
        if job is not None and not job.settled and not job.dropped and any(layer is i for i in job.inputs):
            job.drop(f"{job.action} stopped: its input layer '{layer.name}' was removed from the viewer, "
                     "so nothing was added.")


class _Watcher(QObject):
    """Event filter on the dock, the QDockWidget around it and the main window."""

    def __init__(self, life: _Lifetime):
        super().__init__()
        self.life = life
        self.frame = None  # the QDockWidget we filter, if any

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        kind = event.type()
        dock = self.life.dock()
        if dock is not None and obj is dock and kind == QEvent.Type.ParentChange:
            self._parent_changed(dock)
        elif obj is self.frame and kind == QEvent.Type.Close:  # the panel's "hide" button
            job = self.life.job
            if job is not None and not job.settled:
                self.life.end(f"{job.action} stopped: its panel was closed.", gone=False)
        elif kind == QEvent.Type.Close and isinstance(obj, QMainWindow):
            if not event.spontaneous():  # napari accepts every programmatic close
                self.life.end()
            else:  # the user's close may still be refused ("really close?"): look once it is done
                window = obj
                QTimer.singleShot(0, lambda: self.life.end() if not isalive(window) or not window.isVisible() else None)
        return False

    def _parent_changed(self, dock) -> None:
        if self.frame is not None and isalive(self.frame):
            self.frame.removeEventFilter(self)
        self.frame = None
        parent = dock.parent()
        if parent is None:
            if self.life.docked:  # taken out of the viewer's dock area
                self.life.end()
            return
        self.life.docked, self.life.gone = True, False
        if isinstance(parent, QDockWidget):
            self.frame = parent
            parent.installEventFilter(self)


# What a dock's state line says for each run state (Job.state, JobDockMixin.run_state).
RUN_STATE_TEXT = {"idle": "ready", "ready": "starting", "running": "running", "cancelling": "cancelling",
                  "done": "done", "cancelled": "cancelled", "failed": "failed (see the notification)"}


class JobDockMixin:
    """What every dock with one background Job at a time shares: Cancel, the progress bar and
    a safe end.

    The dock provides ``self.viewer``, ``self.job`` (a :class:`Job` or None) and
    ``self.progress`` (a magicgui ProgressBar), connects its ProgressRelay to
    ``_on_progress`` and starts jobs with :meth:`launch`. Then: closing the dock (taking it
    out of the viewer, deleting it, or closing the viewer) cancels its job and drops what
    the job still delivers, so no deleted widget or layer is touched; closing its panel
    with the hide button cancels the job too; removing one of the job's input layers from
    the viewer stops the job and says why. A dock with a ``run_state_label`` (a magicgui
    Label) shows its run state there, kept up to date through start, Cancel and the end.
    """

    job: Job | None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._life = _Lifetime(self)
        self._watcher = _Watcher(self._life)
        self.installEventFilter(self._watcher)
        life = self._life
        self.destroyed.connect(lambda *_: life.end())

    def launch(self, job: Job) -> None:
        """Start ``job`` as this dock's run (call instead of ``job.start()``)."""
        life = self._life
        life.job, job.dock_alive = job, life.alive
        window = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
        if isinstance(window, QMainWindow):
            window.installEventFilter(self._watcher)  # idempotent: Qt keeps one entry per filter
        if not life.layers_watched:
            self.viewer.layers.events.removed.connect(life.layer_removed)
            life.layers_watched = True
        job.worker.finished.connect(self.show_run_state)  # after the Job's own handlers: its state is final
        job.start()
        self.show_run_state()

    def dock_alive(self) -> bool:
        """False once the dock is closed, deleted or its viewer closed: touch nothing then."""
        return self._life.alive()

    @property
    def run_state(self) -> str:
        """"idle" before any run, else the last run's state (running, cancelling, done, cancelled, failed)."""
        return "idle" if self.job is None else self.job.state

    def show_run_state(self, *_) -> None:
        label = getattr(self, "run_state_label", None)
        if label is not None and self.dock_alive():
            label.value = f"state: {RUN_STATE_TEXT.get(self.run_state, self.run_state)}"

    def cancel(self, *_):
        if self.job is not None:
            self.job.cancel()
            self.show_run_state()

    def _on_progress(self, done: int, total: int):
        if not self.dock_alive():
            return
        self.progress.max = max(total, 1)
        self.progress.value = done


__all__ = ["Job", "JobDockMixin", "ProgressRelay", "report_error", "show_warning", "show_info"]
