"""The one way the project stops on a signal: commit what is buffered, say one line, exit 128+N.

Used by ``run.py`` (the local command line), the local launcher's worker processes and the cluster
helpers. The first SIGINT, SIGTERM or SIGUSR2 (SLURM's preemption / time-limit warning) *requests*
a stop; code that holds buffered work polls :func:`check` at safe points and unwinds with
:class:`StopRequested`, committing on the way out (``with ShardWriter(...)`` does). Any later signal
is ignored while that commit runs, so it cannot be cut in half.

API (for a cluster helper):

``install(signals=STOP_SIGNALS)``
    In the main thread of a process: take over those signals. Idempotent. A Python handler that
    was there before (submitit's SIGUSR2 requeue, say) is kept and called by :func:`exit_stopped`
    once the commit is done, so it still runs, just after our commit.
``deferred()``
    A context manager around work with buffers to commit: inside it a signal only sets the flag
    and the work calls :func:`check` (the extraction pipeline does between batches). Outside it,
    with nothing buffered, a signal raises :class:`StopRequested` at once in the main thread.
``check()``
    Raise :class:`StopRequested` if a stop was requested (a no-op when nothing was).
``StopRequested``
    A ``BaseException`` (never swallowed by ``except Exception``, so a stop is never recorded as
    a video failure). ``signum``, ``frames`` (committed before stopping; add yours as the
    exception passes), ``exit_status`` (130 for SIGINT, 143 for SIGTERM, 128+N otherwise).
``exit_stopped(stop)``
    Print the one line, run a previous Python handler if any, and exit with ``exit_status``.
``worker_init(parent_pid)``
    Initializer for worker processes: :func:`install`, plus the Linux parent-death signal
    (SIGTERM), so a worker whose driver dies stops, commits and exits instead of being orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
_PR_SET_PDEATHSIG = 1


class StopRequested(BaseException):
    """A signal asked this process to stop (see the module docstring)."""

    def __init__(self, signum: int, frames: int = 0) -> None:
        super().__init__(signum, frames)
        self.signum = signum
        self.frames = frames

    def __reduce__(self) -> tuple[Any, ...]:  # keeps ``frames`` across processes
        return (StopRequested, (self.signum, self.frames))

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


class _State:
    def __init__(self) -> None:
        self.requested: int | None = None
        self.deferring = 0
        self.previous: dict[int, Any] = {}


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.requested is not None:
        return  # already stopping: the commit under way must finish
    _state.requested = signum
    if not _state.deferring:
        raise StopRequested(signum)


def install(signals: Sequence[int] = STOP_SIGNALS) -> None:
    """Handle ``signals`` as stop requests in this process (main thread only; idempotent)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in signals:
        current = signal.getsignal(s)
        if current is _handler:
            continue
        if callable(current) and current is not signal.default_int_handler:
            _state.previous[s] = current  # e.g. submitit's: called after our commit
        signal.signal(s, _handler)


def uninstall() -> None:
    """Restore the default handlers and forget any request (tests, long-lived hosts)."""
    for s in STOP_SIGNALS:
        if signal.getsignal(s) is _handler:
            prev = _state.previous.pop(s, None)
            default = signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL
            signal.signal(s, prev or default)
    _state.requested = None


def requested() -> int | None:
    """The signal that requested a stop, if one did."""
    return _state.requested


def check() -> None:
    """Raise :class:`StopRequested` if a stop was requested."""
    if _state.requested is not None:
        raise StopRequested(_state.requested)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: a signal only requests the stop; the code inside calls :func:`check`."""
    _state.deferring += 1
    try:
        check()
        yield
    finally:
        _state.deferring -= 1


def stop_message(stop: StopRequested) -> str:
    return f"interrupted: committed {stop.frames} frames; rerun the same command to resume"


def exit_stopped(stop: StopRequested) -> NoReturn:
    """Print the one line for ``stop``, chain a previous handler, exit ``stop.exit_status``."""
    print(stop_message(stop), file=sys.stderr, flush=True)
    prev = _state.previous.get(stop.signum)
    if prev is not None:
        prev(stop.signum, None)  # e.g. submitit requeues the job, then exits itself
    raise SystemExit(stop.exit_status)


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (False where unsupported)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0


def worker_init(parent_pid: int) -> None:
    """Initializer of a worker process: stop on signals, and when ``parent_pid`` dies."""
    install()
    set_parent_death_signal(signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    # A pool worker whose driver died would wait for work for ever: once its commit is done
    # (it has left the deferred region) it exits.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    if _state.requested is None:
        os.kill(os.getpid(), signal.SIGTERM)  # where prctl is unavailable
        time.sleep(0.2)
    while _state.deferring:
        time.sleep(0.05)
    os._exit(128 + signal.SIGTERM)


__all__ = [
    "STOP_SIGNALS",
    "StopRequested",
    "check",
    "deferred",
    "exit_stopped",
    "install",
    "requested",
    "set_parent_death_signal",
    "stop_message",
    "uninstall",
    "worker_init",
]
