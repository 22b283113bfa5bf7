"""The project's error classes.

Every error a user can cause (a wrong layer, a bad file, a checkpoint from elsewhere)
raises a subclass of :class:`VirtualStainError` whose message is one sentence a
microscopist understands. Widgets show it as a napari notification; the CLI prints it
on one line and exits non-zero. Anything else that escapes is a bug.
"""

import re

# Terminal colour codes and other control characters that libraries (torch's unpickler, for
# one) put in their messages: a sentence for a microscopist has none of them.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def plain_text(message: object, limit: int = 300) -> str:
    """The first line of ``message`` without terminal codes, at most ``limit`` characters."""
    lines = [line.strip() for line in _CONTROL.sub("", str(message)).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class VirtualStainError(Exception):
    """An error the user can fix; ``str(err)`` is the sentence to show them."""


class InputError(VirtualStainError):
    """An image, layer or array cannot be used as given (shape, dtype, NaNs, empty...)."""


class CheckpointError(VirtualStainError):
    """A model file is missing, corrupt, foreign or does not fit the data."""


class ReaderError(VirtualStainError):
    """A file cannot be read as an image."""


class Cancelled(Exception):
    """Raised by long-running core functions when their cancel event is set.

    Not a :class:`VirtualStainError`: cancelling is a request, not a mistake.
    """


def check_cancel(cancel) -> None:
    """Raise :class:`Cancelled` if ``cancel`` (a ``threading.Event`` or None) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")
