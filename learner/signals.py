"""Ending a command promptly on SIGTERM / SIGINT, with training stopped at a safe point.

A cluster scheduler sends SIGTERM and, some seconds later, SIGKILL; a user presses Ctrl-C.
Either way the process must end within :data:`GRACE_S` seconds and leave a resumable
``last.ckpt``. :func:`install` (called by the CLI, never on import: a notebook keeps Python's
own Ctrl-C) sets up three parts:

- The signal handler records the first signal. While a training loop runs (between
  :func:`training_started` and :func:`training_ended`) it only sets a flag, which
  ``learner.train.pretrain.StopOnSignal`` turns into ``KeyboardInterrupt`` at the next
  batch boundary: the
  exception is never raised inside a logger's writer with its lock held, the cause of the
  TensorBoard writer hang (its ``close`` then waited forever on that lock). Elsewhere it
  raises ``KeyboardInterrupt`` at once, as Python does for Ctrl-C.
- A watchdog thread woken through ``signal.set_wakeup_fd``, i.e. by the C-level handler: it
  counts even when the main thread is stuck in a long native call (a niced process under
  load), and ends the process hard after :data:`GRACE_S` seconds. Every file the package
  writes is atomic (temp file + rename), so ending hard loses nothing that was complete.
- An interrupt that Python drops (raised inside ``__del__``: "Exception ignored") is
  delivered again 50 ms later through ``sys.unraisablehook``.
- :func:`exit_code`: ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM), the shell's
  convention, used for the clean and the hard exit alike. After a clean interrupt the CLI
  ends with :func:`exit_now`, skipping interpreter shutdown: freeing torch's state took a
  niced process under CPU load 50 s (measured), and the watchdog's daemon thread is
  stopped by then.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

# Seconds between the signal and the hard exit: within a scheduler's usual 10 s+ kill delay.
GRACE_S = 8.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_state: dict[str, Any] = {"signum": None, "training": 0, "installed": False, "deferred": False}


def received() -> int | None:
    """The first SIGINT / SIGTERM received by this process, or None."""
    signum: int | None = _state["signum"]
    return signum


def exit_code() -> int:
    """``128 + signal`` for the signal received (130 when none was recorded: a plain Ctrl-C)."""
    return 128 + (received() or signal.SIGINT)


def exit_now(code: int) -> None:
    """Flush stdout and stderr and end the process with ``code``, skipping interpreter
    shutdown (only once every output is complete)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _handler(signum: int, frame: FrameType | None) -> None:
    """Record the signal; interrupt now unless a training loop will stop at its next batch."""
    if _state["signum"] is None:
        _state["signum"] = signum
    if _state["training"] and not _state["deferred"]:
        _state["deferred"] = True  # a second signal interrupts at once
        return
    raise KeyboardInterrupt


def _watchdog(read_fd: int, grace: float) -> None:
    """Wait for a SIGINT / SIGTERM byte on the wakeup pipe, then end the process after ``grace``."""
    while True:
        data = os.read(read_fd, 1)
        if data and data[0] in SIGNALS:
            break
    threading.Event().wait(grace)
    sys.stderr.write("interrupted\n")
    exit_now(128 + (received() or data[0]))


def install(grace: float = GRACE_S) -> None:
    """Handle SIGINT and SIGTERM as described in the module docstring (main thread only)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watchdog, args=(read_fd, grace), daemon=True, name="stop").start()
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    previous_hook = sys.unraisablehook

    def redeliver(unraisable: Any) -> None:
        # An interrupt raised inside __del__ (or another place Python cannot raise from) is
        # printed as "Exception ignored" and dropped: deliver it again a moment later, from
        # another thread, once the main thread has left that place.
        signum = received()
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and signum is not None:
            main = threading.main_thread().ident
            # A real signal (not _thread.interrupt_main): it also ends a sleeping system call.
            timer = threading.Timer(0.05, signal.pthread_kill, args=(main, signum))
            timer.daemon = True
            timer.start()
            return
        previous_hook(unraisable)

    sys.unraisablehook = redeliver
    _state["installed"] = True


def training_started() -> None:
    """From now on a signal only sets the flag (the training loop checks :func:`received`)."""
    _state["training"] += 1
    # Lightning installs its own SIGTERM handler for the fit, whose DDP broadcast inside the
    # handler can deadlock against the training step's collectives: ours replaces it.
    if _state["installed"] and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)


def training_ended() -> None:
    """Back to interrupting at once."""
    _state["training"] = max(0, _state["training"] - 1)
