"""A plain-text progress bar for the shell (no extra dependency)."""

from __future__ import annotations

import sys
import time

# Streams on which a bar is drawn but its line not yet ended: an error that stops the run
# starts on a line of its own (end_open_lines) instead of after the half-drawn bar.
_unfinished: set = set()


def end_open_lines() -> None:
    """End the line of every bar left half-drawn (called before an error is printed)."""
    for stream in list(_unfinished):
        stream.write("\n")
        stream.flush()
    _unfinished.clear()


class TextProgress:
    """Callable ``progress(done, total)`` that draws a bar on stderr, at most ~10 times a second."""

    def __init__(self, label: str, stream=None, width: int = 30):
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        frac = done / total if total else 1.0
        filled = int(round(self.width * frac))
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        line = (f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{done}/{total} {elapsed:5.1f}s elapsed, {eta:5.1f}s left")
        self.stream.write(line)
        if done >= total:
            self.stream.write("\n")
            _unfinished.discard(self.stream)
        else:
            _unfinished.add(self.stream)
        self.stream.flush()
