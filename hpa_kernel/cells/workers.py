"""Worker processes that exit when their parent dies.

A ``kill -9`` of ``hpa-kernel submit`` or ``cells`` gives its spawn workers no chance to be told to
stop; without help they live on (and hold hundreds of MB) as orphans. :func:`exit_with_parent`,
called from a pool's initialiser, makes a worker notice:

* on Linux, ``prctl(PR_SET_PDEATHSIG, SIGUSR2)`` asks the kernel to signal the worker as soon as
  its parent goes; the handler exits if the parent really is gone (the kernel also sends the signal
  when the *thread* that started the worker ends, which is not a reason to exit);
* everywhere, a daemon thread compares ``os.getppid()`` with the parent's pid every
  ``interval_s`` seconds and exits the worker when it changes (the orphan was re-parented).

The worker exits with ``os._exit``: nothing of the dead parent's work is left to finish.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

__all__ = ["exit_with_parent", "PARENT_GONE_EXIT_CODE"]

logger = logging.getLogger(__name__)

#: The exit status of a worker whose parent died.
PARENT_GONE_EXIT_CODE = 70

_PR_SET_PDEATHSIG = 1


def _exit_if_orphaned(parent: int) -> None:
    if os.getppid() != parent:
        os._exit(PARENT_GONE_EXIT_CODE)


def _watch(parent: int, interval_s: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval_s):
        _exit_if_orphaned(parent)


def _set_pdeathsig(parent: int) -> bool:
    """Linux only: have the kernel send SIGUSR2 when the parent dies; False where unavailable."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        signal.signal(signal.SIGUSR2, lambda signum, frame: _exit_if_orphaned(parent))
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGUSR2), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError, ValueError) as exc:
        logger.debug("no parent-death signal (%s); the watch thread alone notices", exc)
        return False
    return True


def exit_with_parent(interval_s: float = 1.0) -> None:
    """Make this (worker) process exit when its parent process dies; call it in a pool initialiser.

    Parameters
    ----------
    interval_s : float
        How often the watch thread checks the parent, in seconds (> 0).

    Raises
    ------
    ValueError
        If ``interval_s`` is not positive.
    """
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    import multiprocessing

    # The pid the parent told us (a spawn child knows it from its start-up data), not os.getppid():
    # the parent may already be gone, and an orphan's getppid() is init's pid.
    parent_process = multiprocessing.parent_process()
    parent = parent_process.pid if parent_process is not None and parent_process.pid else os.getppid()
    _set_pdeathsig(parent)
    # the parent may have died before prctl took effect: the check after it closes that race
    _exit_if_orphaned(parent)
    threading.Thread(target=_watch, args=(parent, interval_s), name="parent-watch", daemon=True).start()
