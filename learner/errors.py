"""Error types that the CLI turns into one clear line and an exit code.

Exit codes of the command line: 0 ok, 1 unexpected failure, 2 usage or config error,
3 data error. Library code raises these; only the CLI prints and exits.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LearnerError(Exception):
    """Base class for errors a user can fix. ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        message = _worker_message(message)
        super().__init__(message)
        # Several independent problems (e.g. manifest rows) are reported one per line.
        self.problems: list[str] = list(problems) if problems else [message]


def _worker_message(message: str) -> str:
    """The original one-line message of an error re-raised by a DataLoader worker.

    torch re-raises a worker's exception as ``type(exc)(text)`` where ``text`` holds the
    worker's whole traceback; the user must see only the line the library wrote.
    """
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    last = message.rstrip().splitlines()[-1]
    _, sep, original = last.partition("Error: ")
    return original.strip() if sep and original.strip() else message


class ConfigError(LearnerError):
    """A bad option, config key or value (exit 2)."""

    exit_code = 2


class DataError(LearnerError):
    """A bad manifest, scan file or data set (exit 3)."""

    exit_code = 3


def closest(name: str, candidates: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The candidate that ``name`` most likely meant, for a "did you mean" hint.

    The candidate equal to ``name`` but for case comes first (``mmse`` -> ``MMSE``); otherwise
    the closest by :func:`difflib.get_close_matches`, ignoring case, with a similarity of at
    least ``cutoff`` (0-1); ``None`` when nothing is that close.

    Example:
        >>> closest("mmse", ["Subject ID", "MMSE", "Visit"])
        'MMSE'
        >>> closest("train.epoch", ["train.epochs", "train.lr"])
        'train.epochs'
        >>> closest("zzz", ["train.epochs"]) is None
        True
    """
    by_folded: dict[str, str] = {}
    for candidate in candidates:
        by_folded.setdefault(str(candidate).casefold(), str(candidate))
    folded = name.casefold()
    if folded in by_folded:
        return by_folded[folded]
    close = difflib.get_close_matches(folded, list(by_folded), n=1, cutoff=cutoff)
    return by_folded[close[0]] if close else None
